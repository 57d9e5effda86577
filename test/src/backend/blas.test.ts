/**
 * The OpenBLAS BatchMatMul (src/backend/blas.ts), where the system has OpenBLAS: against the WASM
 * backend's own kernel (XNNPACK), on every layout a product may take.
 */
import { afterEach, describe, expect, test } from 'bun:test';
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend } from '../../../src/backend/select.ts';
import { BLAS_FROM_FLOPS, openBlas } from '../../../src/backend/blas.ts';

const info = await selectBackend();
const threshold = BLAS_FROM_FLOPS.value;
afterEach(() => {
  BLAS_FROM_FLOPS.value = threshold;
});

/** The product on BLAS and on XNNPACK (BLAS_FROM_FLOPS past any product). */
function bothWays(a: tf.Tensor, b: tf.Tensor, transposeA = false, transposeB = false): [Float32Array, Float32Array, number[]] {
  BLAS_FROM_FLOPS.value = 0;
  const blas = tf.matMul(a, b, transposeA, transposeB);
  BLAS_FROM_FLOPS.value = Infinity;
  const xnnpack = tf.matMul(a, b, transposeA, transposeB);
  const result: [Float32Array, Float32Array, number[]] = [blas.dataSync() as Float32Array, xnnpack.dataSync() as Float32Array, blas.shape];
  expect(blas.shape).toEqual(xnnpack.shape);
  tf.dispose([blas, xnnpack]);
  return result;
}

describe.if(info.name === 'wasm' && info.blas !== undefined)('BLAS BatchMatMul', () => {
  const cases: [string, number[], number[], boolean, boolean][] = [
    ['plain', [37, 64], [64, 23], false, false],
    ['a transposed', [64, 37], [64, 23], true, false],
    ['b transposed', [37, 64], [23, 64], false, true],
    ['both transposed', [64, 37], [23, 64], true, true],
    ['batched', [2, 3, 17, 32], [2, 3, 32, 9], false, false],
    ['one b for every batch', [4, 17, 32], [32, 9], false, false],
    ['one a for every batch, b transposed', [1, 17, 32], [5, 9, 32], false, true],
  ];
  for (const [name, shapeA, shapeB, transposeA, transposeB] of cases) {
    test(`${name}: the values of XNNPACK's product (within 1e-5 relative)`, () => {
      const before = tf.memory().numTensors;
      const a = tf.randomNormal(shapeA, 0, 1, 'float32', 1);
      const b = tf.randomNormal(shapeB, 0, 1, 'float32', 2);
      const [blas, xnnpack] = bothWays(a, b, transposeA, transposeB);
      const scale = Math.max(...xnnpack.map(Math.abs));
      const largest = Math.max(...blas.map((value, i) => Math.abs(value - xnnpack[i]!)));
      expect(largest / scale).toBeLessThan(1e-5);
      expect(blas.some((value) => value !== 0)).toBe(true);
      tf.dispose([a, b]);
      expect(tf.memory().numTensors).toBe(before);
    });
  }

  test('a broadcast neither side covers, and mismatched shapes, are left to XNNPACK as they were', () => {
    BLAS_FROM_FLOPS.value = 0;
    tf.tidy(() => {
      expect(tf.matMul(tf.ones([2, 1, 3, 4]), tf.ones([1, 3, 4, 5])).shape).toEqual([2, 3, 3, 5]);
      expect(() => tf.matMul(tf.ones([3, 4]), tf.ones([5, 6]))).toThrow();
    });
  });

  test('a path in MAC_BLAS that is no library stops the start with the reason; off leaves XNNPACK', () => {
    expect(() => openBlas('/nonexistent/libblas.so')).toThrow('MAC_BLAS=/nonexistent/libblas.so: cannot load OpenBLAS from it');
    expect(openBlas('off')).toEqual({ reason: 'MAC_BLAS=off' });
  });
});
