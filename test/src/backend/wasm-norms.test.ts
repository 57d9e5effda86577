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
