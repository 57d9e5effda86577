/**
 * The OpenBLAS BatchMatMul (src/backend/blas.ts), where the system has OpenBLAS: against the product
 * by its definition, on every layout a product may take.
 */
import { describe, expect, test } from 'bun:test';
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend } from '../../../src/backend/select.ts';
import { openBlas } from '../../../src/backend/blas.ts';

const info = await selectBackend();

/** a (or its transpose) times b (or its transpose), each matrix of a batch summed in float64; an operand with one matrix serves every batch. */
function productByDefinition(a: tf.Tensor, b: tf.Tensor, transposeA: boolean, transposeB: boolean): number[] {
  const [va, vb] = [a.dataSync(), b.dataSync()];
  const [ra, ca] = a.shape.slice(-2) as [number, number];
  const [rb, cb] = b.shape.slice(-2) as [number, number];
  const [m, k, n] = [transposeA ? ca : ra, transposeA ? ra : ca, transposeB ? rb : cb];
  const [batchA, batchB] = [va.length / (ra * ca), vb.length / (rb * cb)];
  const out: number[] = [];
  for (let batch = 0; batch < Math.max(batchA, batchB); batch++) {
    const [offsetA, offsetB] = [batchA === 1 ? 0 : batch * ra * ca, batchB === 1 ? 0 : batch * rb * cb];
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        let sum = 0;
        for (let l = 0; l < k; l++) sum += va[offsetA + (transposeA ? l * ca + i : i * ca + l)]! * vb[offsetB + (transposeB ? j * cb + l : l * cb + j)]!;
        out.push(sum);
      }
    }
  }
  return out;
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
    test(`${name}: the product by its definition (within 1e-5 relative)`, () => {
      const before = tf.memory().numTensors;
      const a = tf.randomNormal(shapeA, 0, 1, 'float32', 1);
      const b = tf.randomNormal(shapeB, 0, 1, 'float32', 2);
      const product = tf.matMul(a, b, transposeA, transposeB);
      const blas = product.dataSync();
      const expected = productByDefinition(a, b, transposeA, transposeB);
      expect(blas.length).toBe(expected.length);
      const scale = Math.max(...expected.map(Math.abs));
      const largest = Math.max(...expected.map((value, i) => Math.abs(value - blas[i]!)));
      expect(largest / scale).toBeLessThan(1e-5);
      tf.dispose([a, b, product]);
      expect(tf.memory().numTensors).toBe(before);
    });
  }

  test('a broadcast neither side covers, and mismatched shapes, are left to XNNPACK as they were', () => {
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
