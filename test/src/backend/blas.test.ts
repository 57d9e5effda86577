/**
 * The native BLAS kernels (src/backend/blas.ts), where the system has oneDNN or OpenBLAS: each
 * library's product, and the BatchMatMul, x W + b and x W kernels on the one the suite's backend runs,
 * against the product by its definition, on every layout a product may take.
 */
import { describe, expect, test } from 'bun:test';
import { ptr } from 'bun:ffi';
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend } from '../../../src/backend/select.ts';
import { AFFINE_KERNEL, PRODUCT_KERNEL, affine, product } from '../../../model/layers.ts';
import { availableBlas, openBlas } from '../../../src/backend/blas.ts';

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

/** The largest difference from the product by its definition, relative to its largest value. */
function relativeError(actual: ArrayLike<number>, expected: number[]): number {
  expect(actual.length).toBe(expected.length);
  const scale = Math.max(...expected.map(Math.abs));
  return Math.max(...expected.map((value, i) => Math.abs(value - actual[i]!))) / scale;
}

describe.each(availableBlas().map((blas) => [blas.library, blas] as const))('%s', (_, blas) => {
  test('a product, each operand transposed or not, is the product by its definition (within 1e-5 relative)', () => {
    for (const [transposeA, transposeB] of [[false, false], [true, false], [false, true], [true, true]] as const) {
      const [m, k, n] = [37, 64, 23];
      const [a, b] = [tf.randomNormal(transposeA ? [k, m] : [m, k], 0, 1, 'float32', 3), tf.randomNormal(transposeB ? [n, k] : [k, n], 0, 1, 'float32', 4)];
      const [va, vb, c] = [a.dataSync() as Float32Array, b.dataSync() as Float32Array, new Float32Array(m * n)];
      blas.sgemm(transposeA, transposeB, m, n, k, ptr(va), transposeA ? m : k, ptr(vb), transposeB ? k : n, ptr(c), n);
      expect(relativeError(c, productByDefinition(a, b, transposeA, transposeB))).toBeLessThan(1e-5);
      tf.dispose([a, b]);
    }
  });
});

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
      expect(relativeError(product.dataSync(), productByDefinition(a, b, transposeA, transposeB))).toBeLessThan(1e-5);
      tf.dispose([a, b, product]);
      expect(tf.memory().numTensors).toBe(before);
    });
  }

  test('x W + b is one kernel onto the bias, a row or one a row, and through a sigmoid for a gate: the values by definition', async () => {
    const before = tf.memory().numTensors;
    const [x, weight] = [tf.randomNormal([5, 32], 0, 1, 'float32', 5), tf.randomNormal([32, 7], 0, 1, 'float32', 6)];
    const [bias, rowBias] = [tf.randomNormal([7], 0, 1, 'float32', 7), tf.randomNormal([5, 7], 0, 1, 'float32', 8)];
    const product = productByDefinition(x, weight, false, false);
    const cases = [[bias, 'linear'], [rowBias, 'linear'], [bias, 'sigmoid']] as const;
    for (const [b, activation] of cases) {
      const { result, kernels } = await tf.profile(() => affine(x, weight, b, activation));
      expect(kernels.map((kernel) => kernel.name)).toEqual([AFFINE_KERNEL]);
      const biasValues = b.dataSync();
      const expected = product.map((value, i) => {
        const sum = value + biasValues[b.rank === 1 ? i % 7 : i]!;
        return activation === 'sigmoid' ? 1 / (1 + Math.exp(-sum)) : sum;
      });
      expect(relativeError((result as tf.Tensor).dataSync(), expected)).toBeLessThan(1e-5);
      (result as tf.Tensor).dispose();
    }
    tf.dispose([x, weight, bias, rowBias]);
    expect(tf.memory().numTensors).toBe(before);
  });

  test("x W, a weight's product without a bias, is one kernel, and it and its gradient are the product by its definition", async () => {
    const before = tf.memory().numTensors;
    const [x, weight] = [tf.randomNormal([5, 32], 0, 1, 'float32', 9), tf.randomNormal([32, 7], 0, 1, 'float32', 10)];
    const { result, kernels } = await tf.profile(() => product(x, weight));
    expect(kernels.map((kernel) => kernel.name)).toEqual([PRODUCT_KERNEL]);
    expect(relativeError((result as tf.Tensor).dataSync(), productByDefinition(x, weight, false, false))).toBeLessThan(1e-5);
    // d sum(x W) / dx = 1 W^T, / dW = x^T 1.
    const [dx, dw] = tf.grads((a: tf.Tensor, b: tf.Tensor) => product(a, b).sum())([x, weight]);
    const ones = tf.ones([5, 7]);
    expect(relativeError(dx!.dataSync(), productByDefinition(ones, weight, false, true))).toBeLessThan(1e-5);
    expect(relativeError(dw!.dataSync(), productByDefinition(x, ones, true, false))).toBeLessThan(1e-5);
    tf.dispose([x, weight, result as tf.Tensor, dx!, dw!, ones]);
    expect(tf.memory().numTensors).toBe(before);
  });

  test('an x with no columns sums nothing: x W + b is the bias, x W and a matMul zeros', () => {
    const [x, weight, bias] = [tf.zeros([3, 0]), tf.zeros([0, 4]), tf.tensor1d([1, 2, 3, 4])];
    expect([...affine(x, weight, bias).dataSync()]).toEqual([1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4]);
    expect([...product(x, weight).dataSync()]).toEqual(Array(12).fill(0));
    tf.dispose([x, weight, bias]);
    // A matMul with no inner terms too, batched or not, as attention over no keys would be.
    const before = tf.memory().numTensors;
    expect(tf.tidy(() => [...tf.matMul(tf.ones([2, 0]), tf.ones([0, 3])).dataSync()])).toEqual(Array(6).fill(0));
    expect(tf.tidy(() => [...tf.matMul(tf.ones([2, 1, 0]), tf.ones([2, 4, 0]), false, true).dataSync()])).toEqual(Array(8).fill(0));
    expect(tf.memory().numTensors).toBe(before);
  });

  test('a broadcast neither side covers, and mismatched shapes, are left to XNNPACK as they were', () => {
    tf.tidy(() => {
      expect(tf.matMul(tf.ones([2, 1, 3, 4]), tf.ones([1, 3, 4, 5])).shape).toEqual([2, 3, 3, 5]);
      expect(() => tf.matMul(tf.ones([3, 4]), tf.ones([5, 6]))).toThrow();
    });
  });

  test("a product's gradient takes its transposes in the products, launching no Transpose, and is the product by its definition", async () => {
    const [a, b] = [tf.tensor([[1, 2, 3], [4, 5, 6]]), tf.tensor([[1, 0, 2], [0, 1, 3], [1, 1, 1], [2, 0, 0]])];
    const gradients = () => tf.grads((x: tf.Tensor, y: tf.Tensor) => tf.matMul(x, y, false, true).square().sum())([a, b]);
    const { kernels } = await tf.profile(() => tf.tidy(gradients));
    expect(kernels.map((kernel) => kernel.name).filter((name) => name === tf.Transpose)).toEqual([]);
    // d sum((a b^T)^2) / da = 2 (a b^T) b, / db = 2 (a b^T)^T a.
    const [da, db] = tf.tidy(gradients);
    const product = tf.tensor(productByDefinition(a, b, false, true), [2, 4]);
    expect(da!.arraySync()).toEqual(tf.tidy(() => tf.tensor(productByDefinition(product, b, false, false), [2, 3]).mul(2).arraySync()));
    expect(db!.arraySync()).toEqual(tf.tidy(() => tf.tensor(productByDefinition(product, a, true, false), [4, 3]).mul(2).arraySync()));
    tf.dispose([a, b, da!, db!, product]);
  });

  test('a path in MAC_BLAS that is no library stops the start with the reason; off leaves XNNPACK', () => {
    expect(() => openBlas('/nonexistent/libblas.so')).toThrow('MAC_BLAS=/nonexistent/libblas.so: cannot load oneDNN or OpenBLAS from it');
    expect(openBlas('off')).toEqual({ reason: 'MAC_BLAS=off' });
  });
});
