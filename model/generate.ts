/**
 * Incremental generation: the prompt (with its images fused in) fills a decoding cache once, then
 * each new token costs one step over one attention window and the memory state, whatever the length
 * already generated.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { MultimodalMACNetwork } from './multimodal.ts';
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
  signal?: AbortSignal;
  /** Called with each sampled token (EOS included) and the logits it was drawn from, in order. */
  onSample?: (tokenId: number, logits: Float32Array) => void;
}

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
 * without bound (README, "Long inputs").
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
  const cache = model.text.createCache(1);
  let pendingText = '';
  // The newest token, held back while text after it is still pending (part of a possible stop
  // string, or of an unfinished character): if EOS comes next, that text is released with the token
  // it belongs to, and every yielded token is a generated one.
  let waiting: GeneratedToken | undefined;
  let tokens = 0;
  try {
    let logits = prefill(model, prompt, options, cache);
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
      logits = decodeStep(model, tokenId, cache);
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
  const k = model.config.numImageTokens;
  for (const p of positions) {
    if (!Number.isInteger(p) || p < 0 || p + k > prompt.length || prompt.slice(p, p + k).some((id) => id !== model.imageTokenId)) {
      throw new GenerationError(`image position ${p} must point at ${k} image placeholder(s) inside the prompt of ${prompt.length} tokens (see withImageSlots)`);
    }
  }
}

function imageCount(images: GenerateOptions['images']): number {
  if (!images) return 0;
  return Array.isArray(images) ? images.length : images.shape[0];
}

/** Runs the prompt through the cache; returns the logits for the first new token. */
function prefill(model: MultimodalMACNetwork, prompt: number[], options: GenerateOptions, cache: ReturnType<MultimodalMACNetwork['text']['createCache']>): Float32Array {
  const embeddings = tf.tidy(() => {
    const ids = tf.tensor2d([prompt], [1, prompt.length], 'int32');
    if (!options.images || imageCount(options.images) === 0) return model.embed(ids);
    const stacked = Array.isArray(options.images) ? tf.stack(options.images) : options.images;
    return model.embed(ids, { images: stacked.expandDims(0) as tf.Tensor5D, imagePositions: [options.imagePositions ?? []] });
  });
  try {
    return lastLogits(model, model.text.step(embeddings, cache), cache.length);
  } finally {
    embeddings.dispose();
  }
}

function decodeStep(model: MultimodalMACNetwork, tokenId: number, cache: ReturnType<MultimodalMACNetwork['text']['createCache']>): Float32Array {
  const embeddings = tf.tidy(() => model.text.embed(tf.tensor2d([[tokenId]], [1, 1], 'int32')));
  try {
    return lastLogits(model, model.text.step(embeddings, cache), cache.length);
  } finally {
    embeddings.dispose();
  }
}

/**
 * The last row of logits [1, n, V], with the image placeholder ruled out: the model writes text.
 * `length`: the tokens read so far, for the overflow's message.
 */
function lastLogits(model: MultimodalMACNetwork, logits: tf.Tensor3D, length: number): Float32Array {
  const [, rows, vocab] = logits.shape;
  const last = logits.slice([0, rows - 1, 0], [1, 1, vocab]);
  const values = last.dataSync() as Float32Array;
  tf.dispose([logits, last]);
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
