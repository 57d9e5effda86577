/**
 * Self-attention from a packed projection on WASM with a native BLAS (src/backend/wasm-attention.ts):
 * one kernel, and its values and gradient are those of the ops written out, which the cpu backend
 * runs, each way it may run. In bfloat16: bfloat16.test.ts.
 */
import { describe, expect, test } from 'bun:test';
import * as tf from '@tensorflow/tfjs-core';
import { SELF_ATTENTION_KERNEL, selfAttention } from '../../../model/layers.ts';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';
import { openBlas, type OpenedBlas } from '../../../src/backend/blas.ts';
import { openOneDnnPrimitives } from '../../../src/backend/onednn-primitives.ts';
import { blasSelfAttention, oneDnnSelfAttention, registerWasmSelfAttention, type PackedSelfAttention } from '../../../src/backend/wasm-attention.ts';
import { loadSimdKernels } from '../../../src/backend/wasm-simd.ts';
import { differencesFromCpu, sines } from './helpers.ts';

const registered = tf.getKernel(SELF_ATTENTION_KERNEL, 'wasm') !== undefined;

/** Self-attention of a packed projection of `shape`, and its gradient through a weighted sum, as numbers. */
async function attentionAndGradient(shape: [number, number, number], heads: number): Promise<Float32Array[]> {
  const qkv = sines(shape, 2, 0.37) as tf.Tensor3D;
  const weights = sines([shape[0], shape[1], shape[2] / 3], 1, 0.11);
  const outputs = [selfAttention(qkv, heads), tf.grad((x: tf.Tensor) => selfAttention(x as tf.Tensor3D, heads).mul(weights).sum())(qkv)];
  const read = await Promise.all(outputs.map(async (t) => (await t.data()) as Float32Array));
  tf.dispose([qkv, weights, ...outputs]);
  return read;
}

describe.if(registered)('Self-attention on WASM with a native BLAS', () => {
  test('is one kernel', async () => {
    const { kernels } = await tf.profile(() => tf.tidy(() => selfAttention(tf.ones([2, 5, 12]) as tf.Tensor3D, 2)));
    expect(kernels.map((kernel) => kernel.name)).toEqual([SELF_ATTENTION_KERNEL]);
  });

  // Two images of five positions and two heads of 3; one position; a ViT's rows, odd in number, 4 heads
  // of 16; two images whose scores (12 heads of 300 x 300) oneDNN takes one at a time.
  test.each([[[2, 5, 18], 2], [[1, 1, 12], 2], [[1, 67, 192], 4], [[2, 300, 144], 12]] as [[number, number, number], number][])(
    'of %p with %p heads gives the values and gradient of the ops written out (relative difference < 1e-5)',
    async (shape, heads) => {
      const relative = await differencesFromCpu(() => attentionAndGradient(shape, heads));
      expect(relative.filter((difference) => !(difference < 1e-5))).toEqual([]);
    },
  );
});

// Each way the kernel can run, registered in turn: a BLAS's products a head at a time with the SIMD
// module's softmax, and oneDNN's primitives where it has oneDNN 2.
const blas = openBlas();
const ways: [string, PackedSelfAttention][] = [];
if (registered && 'sgemm' in blas) {
  const simd = await loadSimdKernels(tf.backend() as BackendWasm);
  ways.push([`${blas.name}'s products a head at a time`, blasSelfAttention(blas, (scores, rows, n) => simd.softmaxRows(scores.byteOffset, rows, n, 1))]);
  const primitives = blas.name === 'oneDNN' ? openOneDnnPrimitives(blas.library) : undefined;
  if (primitives && 'selfAttention' in primitives) ways.push(["oneDNN's primitives", oneDnnSelfAttention(primitives, 'float32')]);
}

/** Runs `body` with self-attention registered as `attention`, then gives the kernel back. */
async function withAttention(attention: PackedSelfAttention, body: () => Promise<void>): Promise<void> {
  const kernel = tf.getKernel(SELF_ATTENTION_KERNEL, 'wasm')!;
  tf.unregisterKernel(SELF_ATTENTION_KERNEL, 'wasm');
  registerWasmSelfAttention(attention);
  try {
    await body();
  } finally {
    tf.unregisterKernel(SELF_ATTENTION_KERNEL, 'wasm');
    tf.registerKernel(kernel);
  }
}

describe.each(ways)('Self-attention on %s', (_, attention) => {
  test('gives the values and gradient of the ops written out (relative difference < 1e-5)', async () => {
    await withAttention(attention, async () => {
      for (const [shape, heads] of [[[2, 5, 18], 2], [[1, 67, 192], 4]] as [[number, number, number], number][]) {
        const relative = await differencesFromCpu(() => attentionAndGradient(shape, heads));
        expect(relative.filter((difference) => !(difference < 1e-5))).toEqual([]);
      }
    });
  });
});

describe('Self-attention from a packed projection', () => {
  test('refuses a width that is not three parts of whole heads, naming both, on every backend', () => {
    const qkv = tf.ones([1, 2, 20]) as tf.Tensor3D;
    expect(() => selfAttention(qkv, 3)).toThrow('a packed projection of width 20 does not hold queries, keys and values of 3 heads');
    qkv.dispose();
  });
});
