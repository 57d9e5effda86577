/**
 * Training examples and their batches, as plain arrays (no tensors) so that they can cross to a
 * worker thread. An image example is [prompt bytes..., image token, caption bytes..., EOS]; a text
 * example is a window of bytes. Rows are padded to the batch's longest; `lengths` marks the padding,
 * which the loss ignores.
 */
import type { MultimodalMACConfig } from '../../model/config.ts';
import { alignImagesToSegments, widenImagePlaceholders } from '../../model/multimodal.ts';
import { ByteTokenizer } from '../../model/tokenizer.ts';

const tokenizer = new ByteTokenizer();

export interface Example {
  tokens: number[];
  /** Index of the image token, with the image's normalized pixels [3, S, S]. */
  image?: { position: number; pixels: Float32Array };
  /** Leading tokens read as context and not learned: a long prompt before the image, a passkey's haystack and question. */
  contextLength?: number;
}

export interface Batch {
  /** int32 [rows, length], row-major. */
  ids: Int32Array;
  rows: number;
  length: number;
  lengths: number[];
  /** float32 [rows, 1, 3, S, S] when the batch has images (every row then has one). */
  images?: Float32Array;
  imagePositions?: number[][];
  /** Leading tokens of each row read as context and not learned; absent when every row learns all of it. */
  contextLengths?: number[];
}

/**
 * Prompt, image token, caption, EOS. A caption too long for maxTokens is cut, at a character's
 * boundary, and has no EOS: the model must not learn to stop where the caption does not.
 */
export function captionExample(prompt: string, caption: string, pixels: Float32Array, maxTokens: number, captionOnly = false): Example {
  const head = tokenizer.encode(prompt);
  const text = tokenizer.encode(caption);
  const room = Math.max(0, maxTokens - head.length - 1);
  let ending: number[] = [tokenizer.eosTokenId];
  if (text.length >= room) {
    ending = [];
    // Back to the first byte of the character that does not fit whole (UTF-8 continuation bytes are 10xxxxxx).
    let cut = room;
    while (cut > 0 && (text[cut]! & 0xc0) === 0x80) cut--;
    text.length = cut;
  }
  const tokens = [...head, tokenizer.imageTokenId, ...text, ...ending];
  return { tokens, image: { position: head.length, pixels }, ...(captionOnly && { contextLength: head.length }) };
}

export function collate(examples: Example[]): Batch {
  const rows = examples.length;
  const length = Math.max(...examples.map((e) => e.tokens.length));
  const ids = new Int32Array(rows * length);
  examples.forEach((e, r) => ids.set(e.tokens, r * length));
  const contextLengths = examples.some((e) => e.contextLength) ? examples.map((e) => e.contextLength ?? 0) : undefined;
  const batch: Batch = { ids, rows, length, lengths: examples.map((e) => e.tokens.length), ...(contextLengths && { contextLengths }) };
  const withImages = examples.filter((e) => e.image).length;
  if (withImages === 0) return batch;
  if (withImages !== rows) throw new Error('a batch mixes rows with and without images');
  const plane = examples[0]!.image!.pixels.length;
  const images = new Float32Array(rows * plane);
  examples.forEach((e, r) => images.set(e.image!.pixels, r * plane));
  const imagePositions = examples.map((e) => [e.image!.position]);
  return { ...batch, images, imagePositions };
}

/**
 * The batch for a model whose images fill numImageTokens placeholders each, every image placed in its
 * segment as at inference (MultimodalMACNetwork.withImageSlots).
 */
export function widenImageSlots(batch: Batch, config: Pick<MultimodalMACConfig, 'numImageTokens' | 'segmentLen' | 'maxImageOffset'>): Batch {
  if (!batch.imagePositions) return batch;
  const examples = batch.imagePositions.map((positions, r) => {
    const row = Array.from(batch.ids.subarray(r * batch.length, r * batch.length + batch.lengths[r]!));
    return alignImagesToSegments(widenImagePlaceholders(row, positions, config.numImageTokens, tokenizer.imageTokenId), config);
  });
  const widened = collate(examples.map(({ tokens }) => ({ tokens })));
  const imagePositions = examples.map((e) => e.imagePositions);
  // A row's context is what comes before its image, which has moved.
  const contextLengths = batch.contextLengths?.map((context, r) => (context === 0 ? 0 : imagePositions[r]![0]!));
  return { ...widened, images: batch.images, imagePositions, ...(contextLengths && { contextLengths }) };
}
