/**
 * Training examples and their batches, as plain arrays (no tensors) so that they can cross to a
 * worker thread. An image example is [prompt bytes..., image token, caption bytes..., EOS]; a text
 * example is a window of bytes. Rows are padded to the batch's longest; `lengths` marks the padding,
 * which the loss ignores.
 */
import { widenImagePlaceholders } from '../../model/multimodal.ts';
import { ByteTokenizer } from '../../model/tokenizer.ts';

const tokenizer = new ByteTokenizer();

export interface Example {
  tokens: number[];
  /** Index of the image token, with the image's normalized pixels [3, S, S]. */
  image?: { position: number; pixels: Float32Array };
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
}

/** Prompt, image token, caption, EOS; the caption is cut so that the whole fits maxTokens. */
export function captionExample(prompt: string, caption: string, pixels: Float32Array, maxTokens: number): Example {
  const head = tokenizer.encode(prompt);
  const room = Math.max(0, maxTokens - head.length - 2);
  const tokens = [...head, tokenizer.imageTokenId, ...tokenizer.encode(caption).slice(0, room), tokenizer.eosTokenId];
  return { tokens, image: { position: head.length, pixels } };
}

export function collate(examples: Example[]): Batch {
  const rows = examples.length;
  const length = Math.max(...examples.map((e) => e.tokens.length));
  const ids = new Int32Array(rows * length);
  examples.forEach((e, r) => ids.set(e.tokens, r * length));
  const batch: Batch = { ids, rows, length, lengths: examples.map((e) => e.tokens.length) };
  const withImages = examples.filter((e) => e.image).length;
  if (withImages === 0) return batch;
  if (withImages !== rows) throw new Error('a batch mixes rows with and without images');
  const plane = examples[0]!.image!.pixels.length;
  const images = new Float32Array(rows * plane);
  examples.forEach((e, r) => images.set(e.image!.pixels, r * plane));
  return { ...batch, images, imagePositions: examples.map((e) => [e.image!.position]) };
}

/** The batch for a model whose images fill `slots` placeholders each (numImageTokens). */
export function widenImageSlots(batch: Batch, slots: number): Batch {
  if (slots === 1 || !batch.imagePositions) return batch;
  const examples = batch.imagePositions.map((positions, r) => {
    const row = Array.from(batch.ids.subarray(r * batch.length, r * batch.length + batch.lengths[r]!));
    return widenImagePlaceholders(row, positions, slots, tokenizer.imageTokenId);
  });
  const widened = collate(examples.map(({ tokens }) => ({ tokens })));
  return { ...widened, images: batch.images, imagePositions: examples.map((e) => e.imagePositions) };
}
