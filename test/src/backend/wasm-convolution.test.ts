/**
 * A convolution's gradients on WASM with a native BLAS (src/backend/wasm-convolution.ts): the values
 * of the cpu backend's kernels, for strides, paddings and windows that do and do not tile the input.
 */
import { describe, expect, test } from 'bun:test';
import * as tf from '@tensorflow/tfjs-core';
import { availableBlas } from '../../../src/backend/blas.ts';
import { differencesFromCpu, sines } from './helpers.ts';

type Case = { input: [number, number, number, number]; kernel: number; out: number; stride: number; pad: 'valid' | 'same' | number };

/** The gradients for the input and the filter of a weighted sum of a convolution, as numbers. */
async function gradients({ input, kernel, out, stride, pad }: Case): Promise<Float32Array[]> {
  const [x, filter] = [sines(input, 1, 0.37), sines([kernel, kernel, input[3], out], 0.3, 0.23)] as tf.Tensor4D[];
  const weights = tf.tidy(() => sines(tf.conv2d(x!, filter!, stride, pad).shape, 1, 0.11));
  const grads = tf.grads((a: tf.Tensor, w: tf.Tensor) => tf.conv2d(a as tf.Tensor4D, w as tf.Tensor4D, stride, pad).mul(weights).sum())([x!, filter!]);
  const values = await Promise.all(grads.map(async (t) => (await t.data()) as Float32Array));
  tf.dispose([x!, filter!, weights, ...grads]);
  return values;
}

describe.if(tf.getBackend() === 'wasm' && availableBlas().length > 0)("A convolution's gradients on WASM with a native BLAS", () => {
  test.each<[string, Case]>([
    ['3x3, stride 2, valid, odd sizes (the stem)', { input: [2, 9, 11, 3], kernel: 3, out: 5, stride: 2, pad: 'valid' }],
    ['3x3, stride 1, same', { input: [1, 6, 5, 4], kernel: 3, out: 7, stride: 1, pad: 'same' }],
    ['2x2, stride 3: windows that skip input rows', { input: [1, 8, 8, 2], kernel: 2, out: 3, stride: 3, pad: 'valid' }],
    ['5x5, stride 2, explicit padding 1', { input: [2, 7, 7, 3], kernel: 5, out: 2, stride: 2, pad: 1 }],
  ])("%s gives the cpu backend's input and filter gradients (relative difference < 1e-5)", async (_, geometry) => {
    const relative = await differencesFromCpu(() => gradients(geometry));
    expect(relative.filter((difference) => !(difference < 1e-5))).toEqual([]);
  });

  test('the filter gradient is one kernel of its own', async () => {
    const { kernels } = await tf.profile(() => tf.tidy(() => tf.grad((w: tf.Tensor) => tf.conv2d(tf.ones([1, 5, 5, 2]) as tf.Tensor4D, w as tf.Tensor4D, 2, 'valid').sum())(tf.ones([3, 3, 2, 4]))));
    expect(kernels.map((kernel) => kernel.name)).toContain(tf.Conv2DBackpropFilter);
  });
});
