/**
 * A memory store's update on WASM (src/backend/wasm-memory-update.ts): the clip factor, the
 * momentum step and the forgetting step are one SIMD kernel each; their values and gradients are
 * those of the ops written out, and the two steps' values are those ops' bit for bit.
 */
import { describe, expect, test } from 'bun:test';
import * as tf from '@tensorflow/tfjs-core';
import { CLIP_FACTOR_KERNEL, FORGET_STEP_KERNEL, MOMENTUM_STEP_KERNEL, forgetStep, momentumStep } from '../../../model/memory-update.ts';
import { differencesFromCpu, memoryUpdateKernels, memoryUpdateOutputs, withoutKernels } from './helpers.ts';

const KERNELS = [CLIP_FACTOR_KERNEL, MOMENTUM_STEP_KERNEL, FORGET_STEP_KERNEL];
const registered = KERNELS.every((name) => tf.getKernel(name, tf.getBackend()) !== undefined);

describe.if(tf.getBackend() === 'wasm' && registered)("a memory store's update on WASM", () => {
  test('is one kernel a step', async () => {
    expect(await memoryUpdateKernels()).toEqual([CLIP_FACTOR_KERNEL, MOMENTUM_STEP_KERNEL, MOMENTUM_STEP_KERNEL, FORGET_STEP_KERNEL]);
  });

  test('gives the values and gradients of the ops written out, on the cpu (relative difference < 1e-5), leaving no tensor behind', async () => {
    for (const maxNorm of [0.05, 100]) {
      expect((await differencesFromCpu(() => memoryUpdateOutputs(maxNorm))).filter((difference) => !(difference < 1e-5))).toEqual([]);
    }
  });

  test("gives the momentum and forgetting steps of this backend's ops written out, bit for bit", async () => {
    // Unclipped (maxNorm 100) the clip factor is exactly 1 either way, so every output, gradients
    // included, must be the same; clipped, the factor's sums of squares run in another order.
    const [kernels, ops] = [await memoryUpdateOutputs(100), await withoutKernels(KERNELS, () => memoryUpdateOutputs(100))];
    expect(kernels).toEqual(ops);
  });

  test('refuses operands of other shapes than its contract, which it would read past, rather than broadcast them', () => {
    const before = tf.memory().numTensors;
    tf.tidy(() => {
      const surprise = tf.ones([2, 3, 4, 5]);
      expect(() => forgetStep(tf.ones([1, 3, 4, 5]), tf.zeros([2, 3, 1, 1]), surprise)).toThrow(`${FORGET_STEP_KERNEL}: forgetting must be [1, 3, 1, 1], got [2, 3, 1, 1]`);
      expect(() => momentumStep(surprise, { eta: tf.ones([1, 3, 1, 1]), momentum: surprise })).toThrow(`${MOMENTUM_STEP_KERNEL}: eta must be [2, 3, 1, 1], got [1, 3, 1, 1]`);
    });
    expect(tf.memory().numTensors).toBe(before);
  });
});
