/**
 * A convolution's input gradient on WASM with a native BLAS (src/backend/wasm-convolution.ts): the
 * values of the cpu backend's kernel, for strides, paddings and windows that do and do not tile the input.
 */
import { describe, expect, test } from 'bun:test';
import * as tf from '@tensorflow/tfjs-core';
import { availableBlas } from '../../../src/backend/blas.ts';

const suiteBackend = tf.getBackend();

/** A tensor of scale * sin(step * i + 0.5): varied values, the same on every backend. */
function sines(shape: number[], scale: number, step: number): tf.Tensor {
  return tf.tensor(Array.from({ length: tf.util.sizeFromShape(shape) }, (_, i) => scale * Math.sin(step * i + 0.5)), shape);
}

type Case = { input: [number, number, number, number]; kernel: number; out: number; stride: number; pad: 'valid' | 'same' | number };

/** dx of a convolution of an input of `input`'s shape, for a dy of its output's shape, as numbers. */
async function inputGradient({ input, kernel, out, stride, pad }: Case): Promise<Float32Array> {
  const filter = sines([kernel, kernel, input[3], out], 0.3, 0.23) as tf.Tensor4D;
  const outShape = tf.tidy(() => tf.conv2d(tf.zeros(input) as tf.Tensor4D, filter, stride, pad).shape);
  const dy = sines(outShape, 1, 0.11) as tf.Tensor4D;
  const dx = tf.conv2dTranspose(dy, filter, input, stride, pad);
  const values = (await dx.data()) as Float32Array;
  tf.dispose([filter, dy, dx]);
  return values;
}

describe.if(suiteBackend === 'wasm' && availableBlas().length > 0)('Conv2DBackpropInput on WASM with a native BLAS', () => {
  test.each<[string, Case]>([
    ['3x3, stride 2, valid, odd sizes (the stem)', { input: [2, 9, 11, 3], kernel: 3, out: 5, stride: 2, pad: 'valid' }],
    ['3x3, stride 1, same', { input: [1, 6, 5, 4], kernel: 3, out: 7, stride: 1, pad: 'same' }],
    ['2x2, stride 3: windows that skip input rows', { input: [1, 8, 8, 2], kernel: 2, out: 3, stride: 3, pad: 'valid' }],
    ['5x5, stride 2, explicit padding 1', { input: [2, 7, 7, 3], kernel: 5, out: 2, stride: 2, pad: 1 }],
  ])('%s gives the cpu backend\'s values (relative difference < 1e-5)', async (_, geometry) => {
    const before = tf.memory().numTensors;
    const wasm = await inputGradient(geometry);
    expect(tf.memory().numTensors).toBe(before);
    await tf.setBackend('cpu');
    const cpu = await inputGradient(geometry).finally(() => tf.setBackend(suiteBackend));
    const scale = cpu.reduce((max, value) => Math.max(max, Math.abs(value)), 1e-3);
    expect(wasm.length).toBe(cpu.length);
    expect(wasm.reduce((max, value, i) => Math.max(max, Math.abs(value - cpu[i]!)), 0) / scale).toBeLessThan(1e-5);
  });
});
