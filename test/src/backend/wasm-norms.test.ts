/**
 * The row norms on WASM (src/backend/wasm-norms.ts): one kernel each, as are the input gradients
 * their gradients take, and their values and gradients are those of the ops written out, which the
 * cpu backend runs.
 */
import { describe, expect, test } from 'bun:test';
import * as tf from '@tensorflow/tfjs-core';
import {
  L2_NORM_KERNEL, LAYER_NORM_INPUT_GRADIENT_KERNEL, LAYER_NORM_KERNEL, RMS_NORM_KERNEL, SCALED_ROWS_GRADIENT_KERNEL, l2Normalize, layerNorm, rmsNorm,
} from '../../../model/layers.ts';
import { RESIDUAL_NORM_KERNEL, RESIDUAL_NORM_SURPRISE_KERNEL, memoryNetwork, residualNorm } from '../../../model/memory-networks.ts';
import { differencesFromCpu, sines } from './helpers.ts';

const suiteBackend = tf.getBackend();

/** Each norm of x (its last axis the row), and the gradients of a weighted sum of it for its inputs, as numbers. */
async function normsAndGradients(shape: number[]): Promise<Float32Array[]> {
  const cols = shape.at(-1)!;
  const [x, gain, bias] = tf.tidy(() => [sines(shape, 3, 0.37), sines([cols], 0.5, 0.9).add(1), sines([cols], 0.5, 0.7)]);
  const weighted = (y: tf.Tensor) => y.mul(sines(y.shape, 1, 0.11)).sum();
  const outputs = [
    layerNorm(x, gain, bias, 1e-5), rmsNorm(x, gain, 1e-6), l2Normalize(x, 1e-6),
    ...tf.grads((a: tf.Tensor, g: tf.Tensor, b: tf.Tensor) => weighted(layerNorm(a, g, b, 1e-5)))([x, gain, bias]),
    ...tf.grads((a: tf.Tensor, g: tf.Tensor) => weighted(rmsNorm(a, g, 1e-6)))([x, gain]),
    ...tf.grads((a: tf.Tensor) => weighted(l2Normalize(a, 1e-6)))([x]),
  ];
  const read = await Promise.all(outputs.map(async (t) => (await t.data()) as Float32Array));
  tf.dispose([x, gain, bias, ...outputs]);
  return read;
}

describe.if(suiteBackend === 'wasm')('LayerNorm, RMSNorm and L2 normalisation on WASM', () => {
  test('are one kernel each', async () => {
    const { kernels } = await tf.profile(() => tf.tidy(() => {
      const [x, gain] = [tf.ones([2, 8]), tf.ones([8])];
      return [layerNorm(x, gain, gain, 1e-5), rmsNorm(x, gain, 1e-6), l2Normalize(x, 1e-6)];
    }));
    expect(kernels.map((kernel) => kernel.name)).toEqual([LAYER_NORM_KERNEL, RMS_NORM_KERNEL, L2_NORM_KERNEL]);
  });

  test("and their input gradients are one kernel each in the norms' gradients", async () => {
    const names = async (norm: (x: tf.Tensor) => tf.Tensor) => {
      const { kernels } = await tf.profile(() => tf.tidy(() => tf.grad((x: tf.Tensor) => norm(x).sum())(tf.ones([2, 8]))));
      return kernels.map((kernel) => kernel.name);
    };
    const gain = tf.ones([8]);
    expect(await names((x) => layerNorm(x, gain, gain, 1e-5))).toContain(LAYER_NORM_INPUT_GRADIENT_KERNEL);
    expect(await names((x) => rmsNorm(x, gain, 1e-6))).toContain(SCALED_ROWS_GRADIENT_KERNEL);
    expect(await names((x) => l2Normalize(x, 1e-6))).toContain(SCALED_ROWS_GRADIENT_KERNEL);
    gain.dispose();
  });

  // A decoded token's row; a few ragged rows; rows of a batch, a ViT's width.
  test.each([[[1, 384]], [[5, 7]], [[2, 3, 768]]])('of %p give the values and gradients of the ops written out (relative difference < 1e-5)', async (shape) => {
    const relative = await differencesFromCpu(() => normsAndGradients(shape));
    expect(relative.filter((difference) => !(difference < 1e-5))).toEqual([]);
  });
});

/**
 * The memory's residual norm over y [2, 3, 5, cols] with a gamma a head, the gradients of a weighted
 * sum of it for y, gamma and x, and a decoding store's surprise through a residual-norm MLP memory
 * (which takes RESIDUAL_NORM_SURPRISE_KERNEL where the backend has it), as numbers.
 */
async function residualNormOutputs(cols: number): Promise<Float32Array[]> {
  const outputs = tf.tidy(() => {
    const [y, gamma, x] = [sines([2, 3, 5, cols], 2, 0.37), sines([2, 3, 1, cols], 0.3, 0.9), sines([2, 3, 5, cols], 1, 0.7)];
    const weighted = (t: tf.Tensor) => t.mul(sines(t.shape, 1, 0.11)).sum();
    const network = memoryNetwork('mlp', 2, 2, true);
    const weights = network.weightSpecs(cols).map(({ shape }, i) => sines([2, 3, ...shape], 0.5, 0.3 + 0.2 * i));
    const [keys, values, rowWeights] = [sines([2, 3, 5, cols], 1, 0.53), sines([2, 3, 5, cols], 1, 0.29), sines([2, 3, 5, 1], 0.05, 0.8).abs()];
    return [
      residualNorm(y, gamma, x, 1e-5),
      ...tf.grads((a: tf.Tensor, g: tf.Tensor, b: tf.Tensor) => weighted(residualNorm(a, g, b, 1e-5)))([y, gamma, x]),
      ...network.surprise(weights, keys, values, rowWeights, true),
    ];
  });
  const read = await Promise.all(outputs.map(async (t) => (await t.data()) as Float32Array));
  tf.dispose(outputs);
  return read;
}

describe.if(suiteBackend === 'wasm' && tf.getKernel(RESIDUAL_NORM_KERNEL, 'wasm') !== undefined)("The neural memory's residual norm on WASM", () => {
  test("is one kernel, and a decoding store's surprise through it two", async () => {
    const network = memoryNetwork('mlp', 2, 2, true);
    const { kernels } = await tf.profile(() => tf.tidy(() => {
      const rows = tf.ones([1, 2, 3, 4]);
      const weights = network.weightSpecs(4).map(({ shape }) => tf.ones([1, 2, ...shape]));
      return [residualNorm(rows, tf.ones([1, 2, 1, 4]), rows, 1e-5), ...network.surprise(weights, rows, rows, tf.ones([1, 2, 3, 1]), true)];
    }));
    const names = kernels.map((kernel) => kernel.name);
    expect(names.filter((name) => name === RESIDUAL_NORM_KERNEL).length).toBe(1);
    expect(names.filter((name) => name === RESIDUAL_NORM_SURPRISE_KERNEL).length).toBe(2);
  });

  test('gives the values and gradients of the ops written out, on the cpu (relative difference < 1e-5), for rows of 4, 5 and 64', async () => {
    for (const cols of [4, 5, 64]) {
      expect((await differencesFromCpu(() => residualNormOutputs(cols))).filter((difference) => !(difference < 1e-5))).toEqual([]);
    }
  });

  test('refuses operands of other shapes than its contract, which it would read past, rather than broadcast them', () => {
    const before = tf.memory().numTensors;
    tf.tidy(() => {
      const [y, gamma] = [tf.ones([2, 3, 4, 5]), tf.zeros([2, 3, 1, 5])];
      expect(() => residualNorm(y, gamma, tf.ones([1, 1, 1, 5]), 1e-5)).toThrow(`${RESIDUAL_NORM_KERNEL}: x must be [2, 3, 4, 5], got [1, 1, 1, 5]`);
      expect(() => residualNorm(y, tf.zeros([1, 3, 1, 5]), y, 1e-5)).toThrow(`${RESIDUAL_NORM_KERNEL}: gamma must be [2, 3, 1, 5], got [1, 3, 1, 5]`);
    });
    expect(tf.memory().numTensors).toBe(before);
  });
});
