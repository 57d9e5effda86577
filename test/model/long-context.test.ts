import { describe, expect, test } from 'bun:test';
import * as tf from '@tensorflow/tfjs-core';
import type { MultimodalMACOptions } from '../../model/config.ts';
import { MultimodalMACNetwork } from '../../model/multimodal.ts';
import { TINY } from './helpers.ts';

const LENGTH = 16_384;
const PIECE = 4_096;
// Seconds on one WASM thread; the machines that run the suite are shared.
const TIMEOUT = 120_000;
// Repeated text is the hard case: its chunks store nearly the same keys again and again, so a memory
// whose updates feed on each other grows at every store.
const FILLER = 'The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ';

/** The largest |logit| over a prefill of LENGTH tokens, read in pieces as a long prompt is. */
function largestLogit(options: MultimodalMACOptions): number {
  const model = new MultimodalMACNetwork({ ...TINY, textDim: 32, heads: 2, dimHead: 16, depth: 2, segmentLen: 64, ...options });
  const baseline = tf.memory().numTensors;
  const cache = model.text.createCache(1);
  let largest = 0;
  for (let at = 0; at < LENGTH; at += PIECE) {
    const tokens = Array.from({ length: PIECE }, (_, i) => FILLER.charCodeAt((at + i) % FILLER.length));
    const embeddings = tf.tidy(() => model.text.embed(tf.tensor2d([tokens], [1, PIECE], 'int32')));
    const logits = model.text.step(embeddings, cache);
    const value = tf.tidy(() => logits.abs().max().dataSync()[0]!);
    largest = Math.max(largest, Number.isFinite(value) ? value : Infinity);
    tf.dispose([embeddings, logits]);
  }
  cache.dispose();
  expect(tf.memory().numTensors).toBe(baseline);
  model.dispose();
  return largest;
}

describe(`a freshly initialised model keeps finite logits over ${LENGTH} tokens`, () => {
  // A step size 100 times the default: finiteness must come from the memory's construction (the
  // residual norm around the memory network, the per-head surprise clip), not from a gentle step.
  const stress = { maxLr: 10 };
  for (const memoryModel of ['mlp', 'linear', 'swiglu'] as const) {
    for (const momentum of [true, false]) {
      test(`${memoryModel} memory, momentum ${momentum ? 'on' : 'off'}`, () => {
        expect(largestLogit({ neuralMemoryModel: memoryModel, neuralMemoryKwargs: { ...stress, momentum } })).toBeLessThan(1e3);
      }, TIMEOUT);
    }
    test(`${memoryModel} memory, batches of 4 chunks of 32 tokens`, () => {
      const batched = { neuralMemorySegmentLen: 32, neuralMemoryBatchSize: 128 };
      expect(largestLogit({ neuralMemoryModel: memoryModel, ...batched, neuralMemoryKwargs: stress })).toBeLessThan(1e3);
    }, TIMEOUT);
  }

  test('with the reference options on: spectral-norm surprises and the weight residual', () => {
    const options = { neuralMemWeightResidual: true, neuralMemoryKwargs: { ...stress, spectralNormSurprises: true } };
    expect(largestLogit(options)).toBeLessThan(1e3);
  }, TIMEOUT);

  test('without those safeguards the same step size overflows, which is what they are for', () => {
    expect(largestLogit({ neuralMemoryKwargs: { ...stress, memModelNormAddResidual: false, maxGradNorm: 0 } })).toBe(Infinity);
  }, TIMEOUT);
});
