/**
 * A convolution and its gradients on WASM with a native BLAS (src/backend/wasm-convolution.ts): the
 * values of the cpu backend's kernels, for strides, paddings and windows that do and do not tile the
 * input; where oneDNN's primitives run, that the three kernels are theirs, and that a dilated
 * convolution still runs (on XNNPACK).
 */
import { describe, expect, test } from 'bun:test';
import * as tf from '@tensorflow/tfjs-core';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';
import { ptr } from 'bun:ffi';
import { availableBlas } from '../../../src/backend/blas.ts';
import { openOneDnnPrimitives } from '../../../src/backend/onednn-primitives.ts';
import { selectBackend } from '../../../src/backend/select.ts';
import { differencesFromCpu, sines } from './helpers.ts';

const info = await selectBackend();
const oneDnn = availableBlas().find((blas) => blas.name === 'oneDNN');
const opened = oneDnn ? openOneDnnPrimitives(oneDnn.library) : { reason: 'no oneDNN on this system' };
const primitives = info.blas === oneDnn?.library && 'gelu' in opened ? opened : undefined;

type Case = { input: [number, number, number, number]; kernel: number; out: number; stride: number; pad: 'valid' | 'same' | number };

/** A convolution's output, and the gradients for its input and its filter of a weighted sum of it, as numbers. */
async function convolution({ input, kernel, out, stride, pad }: Case): Promise<Float32Array[]> {
  const [x, filter] = [sines(input, 1, 0.37), sines([kernel, kernel, input[3], out], 0.3, 0.23)] as tf.Tensor4D[];
  const y = tf.conv2d(x!, filter!, stride, pad);
  const weights = sines(y.shape, 1, 0.11);
  const grads = tf.grads((a: tf.Tensor, w: tf.Tensor) => tf.conv2d(a as tf.Tensor4D, w as tf.Tensor4D, stride, pad).mul(weights).sum())([x!, filter!]);
  const values = await Promise.all([y, ...grads].map(async (t) => (await t.data()) as Float32Array));
  tf.dispose([x!, filter!, y, weights, ...grads]);
  return values;
}

describe.if(tf.getBackend() === 'wasm' && availableBlas().length > 0)('A convolution and its gradients on WASM with a native BLAS', () => {
  test.each<[string, Case]>([
    ['3x3, stride 2, valid, odd sizes (the stem)', { input: [2, 9, 11, 3], kernel: 3, out: 5, stride: 2, pad: 'valid' }],
    ['3x3, stride 1, same', { input: [1, 6, 5, 4], kernel: 3, out: 7, stride: 1, pad: 'same' }],
    ['2x2, stride 3: windows that skip input rows', { input: [1, 8, 8, 2], kernel: 2, out: 3, stride: 3, pad: 'valid' }],
    ['5x5, stride 2, explicit padding 1', { input: [2, 7, 7, 3], kernel: 5, out: 2, stride: 2, pad: 1 }],
  ])("%s gives the cpu backend's output, input gradient and filter gradient (relative difference < 1e-5)", async (_, geometry) => {
    const relative = await differencesFromCpu(() => convolution(geometry));
    expect(relative).toHaveLength(3);
    expect(relative.filter((difference) => !(difference < 1e-5))).toEqual([]);
  });

  test("a dilated convolution, which oneDNN's kernel leaves to the one before, gives the cpu backend's output", async () => {
    const relative = await differencesFromCpu(async () => {
      const [x, filter] = [sines([1, 9, 9, 2], 1, 0.37), sines([3, 3, 2, 3], 0.3, 0.23)] as tf.Tensor4D[];
      const y = tf.conv2d(x!, filter!, 1, 'valid', 'NHWC', 2);
      const values = (await y.data()) as Float32Array;
      tf.dispose([x!, filter!, y]);
      return [values];
    });
    expect(relative.filter((difference) => !(difference < 1e-5))).toEqual([]);
  });

  test.if(primitives !== undefined)("where oneDNN's primitives run, the output and both gradients are theirs, bit for bit", async () => {
    const geometry: Case = { input: [2, 17, 19, 64], kernel: 3, out: 16, stride: 2, pad: 'same' };
    const [y, dx, dFilter] = await convolution(geometry);
    // The same three straight from the primitives, on the same operands.
    const backend = tf.backend() as BackendWasm;
    const conv = tf.backend_util.computeConv2DInfo(geometry.input, [3, 3, 64, 16], 2, 1, 'same');
    const [x, filter] = [sines(geometry.input, 1, 0.37), sines([3, 3, 64, 16], 0.3, 0.23)];
    const weights = sines(conv.outShape, 1, 0.11);
    const at = (t: tf.Tensor) => ptr(backend.typedArrayFromHeap({ dataId: t.dataId, shape: t.shape, dtype: 'float32' }) as Float32Array);
    const direct = [new Float32Array(y!.length), new Float32Array(dx!.length), new Float32Array(dFilter!.length)];
    primitives!.convolve(conv, at(x), at(filter), ptr(direct[0]!));
    primitives!.convolutionInputGradient(conv, at(weights), at(filter), ptr(direct[1]!));
    primitives!.convolutionFilterGradient(conv, at(x), at(weights), ptr(direct[2]!));
    tf.dispose([x, filter, weights]);
    expect([y, dx, dFilter]).toEqual(direct);
    // and not the cpu backend's, whose sums differ in their last bits
    await tf.setBackend('cpu');
    const cpu = await convolution(geometry).finally(() => tf.setBackend('wasm'));
    expect(cpu.every((values, k) => values.some((value, i) => value !== direct[k]![i]))).toBe(true);
  });

  test('the filter gradient is one kernel of its own', async () => {
    const { kernels } = await tf.profile(() => tf.tidy(() => tf.grad((w: tf.Tensor) => tf.conv2d(tf.ones([1, 5, 5, 2]) as tf.Tensor4D, w as tf.Tensor4D, 2, 'valid').sum())(tf.ones([3, 3, 2, 4]))));
    expect(kernels.map((kernel) => kernel.name)).toContain(tf.Conv2DBackpropFilter);
  });
});
