import { describe, expect, test } from 'bun:test';
import * as tf from '@tensorflow/tfjs-core';
import type { MultimodalMACOptions } from '../../model/config.ts';
import { PREFILL_SEGMENTS, prefill } from '../../model/generate.ts';
import { MultimodalMACNetwork } from '../../model/multimodal.ts';
import { TINY, ids, solidImage } from './helpers.ts';

const RED: [number, number, number] = [220, 30, 30];
/** TINY reads its prompt in pieces of PREFILL_SEGMENTS segments of 4 tokens. */
const PIECE = PREFILL_SEGMENTS * TINY.segmentLen!;

/** A prompt of `length` bytes with `slots` image placeholders at `at`. */
function promptWithImage(model: MultimodalMACNetwork, length: number, at: number, slots: number): number[] {
  const prompt = Array.from({ length }, (_, i) => (i * 37 + 11) % 250);
  prompt.fill(model.imageTokenId, at, at + slots);
  return prompt;
}

/** The last row of logits of reading the whole prompt in one step, as prefill reports it. */
function oneCallLogits(model: MultimodalMACNetwork, prompt: number[], image: tf.Tensor3D, at: number): Float32Array {
  const cache = model.text.createCache(1);
  const values = tf.tidy(() => {
    const embeddings = model.embed(ids([prompt]), { images: image.expandDims(0).expandDims(0) as tf.Tensor5D, imagePositions: [[at]] });
    const logits = model.text.step(embeddings, cache);
    return logits.slice([0, prompt.length - 1, 0], [1, 1, -1]).dataSync() as Float32Array;
  });
  cache.dispose();
  const out = Float32Array.from(values);
  out[model.imageTokenId] = -Infinity;
  return out;
}

function maxDifference(a: Float32Array, b: Float32Array): number {
  let max = 0;
  for (let i = 0; i < a.length; i++) if (Number.isFinite(a[i]!)) max = Math.max(max, Math.abs(a[i]! - b[i]!));
  return max;
}

describe('prefill reads a long prompt in pieces of whole segments', () => {
  const cases: [string, MultimodalMACOptions, number][] = [
    ['an image inside a piece', {}, 21],
    // Four placeholders from 14 to 17: the image's features straddle the first and second pieces.
    // An image never crosses a piece: pieces are whole segments, and no image straddles a segment boundary.
    ['an image of four tokens ending a piece', { numImageTokens: 4 }, PIECE - 4],
    ['convolved memory in batches of two chunks', { neuralMemorySegmentLen: 3, neuralMemoryBatchSize: 6, neuralMemoryKwargs: { convKernel: 3 } }, 40],
  ];
  for (const [name, options, at] of cases) {
    test(`${name}: the logits of reading the prompt in one call (max abs difference < 1e-5)`, async () => {
      const model = new MultimodalMACNetwork({ ...TINY, ...options });
      const image = solidImage(16, RED);
      const prompt = promptWithImage(model, 4 * PIECE + 6, at, model.config.numImageTokens);
      const expected = oneCallLogits(model, prompt, image, at);
      const baseline = tf.memory().numTensors;
      const cache = model.text.createCache(1);
      const progress: number[] = [];
      const logits = await prefill(model, prompt, {
        images: [image],
        imagePositions: [at],
        onPrefillProgress: (read, total) => progress.push(read, total),
      }, cache);
      cache.dispose();
      expect(tf.memory().numTensors).toBe(baseline);
      expect(maxDifference(logits!, expected)).toBeLessThan(1e-5);
      expect(progress).toEqual([PIECE, prompt.length, 2 * PIECE, prompt.length, 3 * PIECE, prompt.length, 4 * PIECE, prompt.length, prompt.length, prompt.length]);
      image.dispose();
      model.dispose();
    });
  }

  test('an abort while the prompt is read ends generation at once and frees every tensor', async () => {
    const model = new MultimodalMACNetwork(TINY);
    const image = solidImage(16, RED);
    const prompt = promptWithImage(model, 20 * PIECE, 5, 1);
    const baseline = tf.memory().numTensors;
    const controller = new AbortController();
    const read: number[] = [];
    const stream = model.generate(prompt, {
      images: [image],
      imagePositions: [5],
      signal: controller.signal,
      onPrefillProgress: (tokens) => {
        read.push(tokens);
        if (tokens === 2 * PIECE) controller.abort();
      },
    });
    const first = await stream.next();
    expect(first).toEqual({ done: true, value: { finishReason: 'aborted', tokens: 0 } });
    // The piece during which the abort came was the last one read.
    expect(read).toEqual([PIECE, 2 * PIECE]);
    expect(tf.memory().numTensors).toBe(baseline);
    image.dispose();
    model.dispose();
  });
});
