/**
 * Incremental generation: the prompt (with its images fused in) fills a decoding cache a few
 * attention segments at a time, then each new token costs one step over one attention window and the
 * memory state, whatever the length already generated.
 */
import * as tf from '@tensorflow/tfjs-core';
import { SEGMENTS_PER_PASS, type DecodingCache } from './mac.ts';
import { imagePlaceholderProblem, type MultimodalMACNetwork } from './multimodal.ts';
import { Random } from './random.ts';
import { sampleToken, validateSampling, type SamplingOptions } from './sampling.ts';

export interface GenerateOptions extends SamplingOptions {
  /** The prompt's images, each [C, H, W] (or all as [N, C, H, W]). */
  images?: tf.Tensor3D[] | tf.Tensor4D;
  /** Position in the prompt of each image's (first) placeholder. */
  imagePositions?: number[];
  /** New tokens at most (the prompt is not counted); default 100. */
  maxLength?: number;
  /** Seeds sampling; the same seed and inputs give the same text. */
  seed?: number;
  /** Generation stops before the first occurrence of any of these strings. */
  stop?: string | string[];
  /** Stops generation, also while the prompt is being read; it then finishes with 'aborted'. */
  signal?: AbortSignal;
  /**
   * Called after each piece of the prompt is read (PREFILL_SEGMENTS attention segments), with the
   * tokens read so far and the prompt's length; the last call has both equal.
   */
  onPrefillProgress?: (tokensRead: number, promptTokens: number) => void;
  /** Called with each sampled token (EOS included) and the logits it was drawn from, in order. */
  onSample?: (tokenId: number, logits: Float32Array) => void;
}

/**
 * Attention segments of the prompt read per piece: one pass of the model's step. Between pieces
 * generation yields to the event loop, so that an abort arrives and progress can be sent while a
 * long prompt is read. Pieces of whole passes give the logits of reading the prompt in one call.
 */
export const PREFILL_SEGMENTS = SEGMENTS_PER_PASS;

export interface GeneratedToken {
  tokenId: number;
  /** The text this token completes: empty while a multi-byte character or a possible stop string is pending. */
  text: string;
}

export type FinishReason = 'eos' | 'stop' | 'length' | 'aborted';

export interface GenerationResult {
  finishReason: FinishReason;
  /** New tokens generated, EOS excluded. */
  tokens: number;
}

export class GenerationError extends Error {
  override name = 'GenerationError';
}

/**
 * The model's numbers overflowed (NaN or infinite logits): nothing sampled from here on would mean
 * anything. A neural memory that stores far more chunks than its training examples had can grow
 * without bound (docs/long-context.md).
 */
export class NumericOverflowError extends Error {
  override name = 'NumericOverflowError';
}

export async function* generate(
  model: MultimodalMACNetwork,
  prompt: number[],
  options: GenerateOptions = {},
): AsyncGenerator<GeneratedToken, GenerationResult> {
  const maxLength = options.maxLength ?? 100;
  validateRequest(model, prompt, options, maxLength);
  const stops = [options.stop ?? []].flat().filter((s) => s.length > 0);
  const random = new Random(options.seed ?? Math.floor(Math.random() * 2 ** 32));
  const decoder = model.tokenizer.streamDecoder();
  const cache = model.text.createCache(1, model.memoryResets([options.imagePositions ?? []]));
  let pendingText = '';
  // The newest token, held back while text after it is still pending (part of a possible stop
  // string, or of an unfinished character): if EOS comes next, that text is released with the token
  // it belongs to, and every yielded token is a generated one.
  let waiting: GeneratedToken | undefined;
  let tokens = 0;
  try {
    let logits = await prefill(model, prompt, options, cache);
    if (!logits) return { finishReason: 'aborted', tokens };
    for (;;) {
      if (options.signal?.aborted) return { finishReason: 'aborted', tokens };
      const tokenId = sampleToken(logits, options, random);
      options.onSample?.(tokenId, logits);
      if (tokenId === model.eosTokenId) {
        if (waiting) yield { tokenId: waiting.tokenId, text: waiting.text + pendingText + decoder.flush() };
        return { finishReason: 'eos', tokens };
      }
      if (waiting) yield waiting;
      waiting = undefined;
      tokens++;
      pendingText += decoder.push(tokenId);
      const stopAt = firstStop(pendingText, stops);
      if (stopAt >= 0) {
        yield { tokenId, text: pendingText.slice(0, stopAt) };
        return { finishReason: 'stop', tokens };
      }
      if (tokens === maxLength) {
        yield { tokenId, text: pendingText + decoder.flush() };
        return { finishReason: 'length', tokens };
      }
      const hold = heldForStops(pendingText, stops);
      const token = { tokenId, text: pendingText.slice(0, pendingText.length - hold) };
      pendingText = pendingText.slice(pendingText.length - hold);
      // Only a byte past ASCII can leave a character unfinished in the decoder.
      if (hold > 0 || tokenId >= 0x80) waiting = token;
      else yield token;
      // A macrotask turn per token lets an abort (a closed connection, a worker message) arrive.
      await new Promise((resolve) => setImmediate(resolve));
      logits = await decodeStep(model, tokenId, cache);
    }
  } finally {
    cache.dispose();
  }
}

function validateRequest(model: MultimodalMACNetwork, prompt: number[], options: GenerateOptions, maxLength: number): void {
  validateSampling(options);
  if (!Number.isInteger(maxLength) || maxLength < 1) throw new GenerationError(`maxLength must be a whole number >= 1, got ${maxLength}`);
  if (prompt.length === 0) throw new GenerationError('prompt must hold at least one token');
  if (prompt.some((id) => !Number.isInteger(id) || id < 0 || id >= model.config.numTokens)) {
    throw new GenerationError(`prompt tokens must be whole numbers in [0, ${model.config.numTokens})`);
  }
  const count = imageCount(options.images);
  const positions = options.imagePositions ?? [];
  if (positions.length !== count) throw new GenerationError(`${count} image(s) but ${positions.length} imagePositions`);
  if (positions.some((p) => p < 0)) throw new GenerationError(`image positions must be >= 0, got ${positions.join(', ')}`);
  const problem = imagePlaceholderProblem(prompt, positions, model.config.numImageTokens, model.config.segmentLen, model.imageTokenId);
  if (problem) throw new GenerationError(problem);
}

function imageCount(images: GenerateOptions['images']): number {
  if (!images) return 0;
  return Array.isArray(images) ? images.length : images.shape[0];
}

/**
 * Reads the prompt into the cache piece by piece, yielding to the event loop between pieces; returns
 * the logits for the first new token (the image placeholder ruled out), or undefined when the signal
 * aborted the reading. The images are encoded once, before the first piece. Throws
 * NumericOverflowError at the first piece whose logits are not finite.
 */
export async function prefill(model: MultimodalMACNetwork, prompt: number[], options: GenerateOptions, cache: DecodingCache): Promise<Float32Array | undefined> {
  const features = encodePromptImages(model, options);
  const positions = options.imagePositions ?? [];
  const pieceLength = PREFILL_SEGMENTS * model.config.segmentLen;
  try {
    for (let start = 0; ; start += pieceLength) {
      const end = Math.min(start + pieceLength, prompt.length);
      const embeddings = model.embedRows(prompt.slice(start, end), start, features, positions);
      let logits: Float32Array;
      try {
        // Every piece's last row is checked: an overflow ends a long prompt where it happens.
        logits = await lastLogits(model, model.text.step(embeddings, cache), cache.length);
      } finally {
        embeddings.dispose();
      }
      options.onPrefillProgress?.(end, prompt.length);
      if (end === prompt.length) return logits;
      await new Promise((resolve) => setImmediate(resolve));
      if (options.signal?.aborted) return undefined;
    }
  } finally {
    features?.dispose();
  }
}

/** What fills the prompt's image placeholders (MultimodalMACNetwork.encodeImages), or null without images. */
function encodePromptImages(model: MultimodalMACNetwork, options: GenerateOptions): tf.Tensor | null {
  if (!options.images || imageCount(options.images) === 0) return null;
  const images = options.images;
  return tf.tidy(() => model.encodeImages(Array.isArray(images) ? tf.stack(images) as tf.Tensor4D : images));
}

async function decodeStep(model: MultimodalMACNetwork, tokenId: number, cache: DecodingCache): Promise<Float32Array> {
  const embeddings = tf.tidy(() => model.text.embed(tf.tensor2d([[tokenId]], [1, 1], 'int32')));
  try {
    return await lastLogits(model, model.text.step(embeddings, cache), cache.length);
  } finally {
    embeddings.dispose();
  }
}

/**
 * The last row of logits [1, n, V], with the image placeholder ruled out: the model writes text.
 * `length`: the tokens read so far, for the overflow's message. Read asynchronously, as a GPU must be.
 */
async function lastLogits(model: MultimodalMACNetwork, logits: tf.Tensor3D, length: number): Promise<Float32Array> {
  const [, rows, vocab] = logits.shape;
  const last = logits.slice([0, rows - 1, 0], [1, 1, vocab]);
  tf.dispose(logits);
  let values: Float32Array;
  try {
    values = (await last.data()) as Float32Array;
  } finally {
    last.dispose();
  }
  if (!values.every(Number.isFinite)) {
    throw new NumericOverflowError(`the model's state overflowed after ${length} tokens (its logits are not finite); this model cannot read text this long`);
  }
  const out = Float32Array.from(values);
  out[model.imageTokenId] = -Infinity;
  return out;
}

function firstStop(text: string, stops: string[]): number {
  let first = -1;
  for (const stop of stops) {
    const at = text.indexOf(stop);
    if (at >= 0 && (first < 0 || at < first)) first = at;
  }
  return first;
}

/** How many trailing characters could still begin a stop string, and so must wait. */
function heldForStops(text: string, stops: string[]): number {
  let hold = 0;
  for (const stop of stops) {
    for (let n = Math.min(stop.length - 1, text.length); n > hold; n--) {
      if (text.endsWith(stop.slice(0, n))) {
        hold = n;
        break;
      }
    }
  }
  return hold;
}
