import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import * as tf from '@tensorflow/tfjs-core';
import { registerGroupedAddN } from '../../../src/backend/webgpu-kernels.ts';

describe('registerGroupedAddN (here on the cpu backend, as the webgpu tier registers it on its own)', () => {
  const stock = tf.getKernel(tf.AddN, 'cpu')!;
  let suiteBackend: string;
  beforeAll(async () => {
    suiteBackend = tf.getBackend();
    await tf.setBackend('cpu');
    registerGroupedAddN('cpu', 3);
  });
  afterAll(async () => {
    tf.unregisterKernel(tf.AddN, 'cpu');
    tf.registerKernel(stock);
    await tf.setBackend(suiteBackend);
  });

  test('adds more tensors than one launch may take, in groups, to the same sum', async () => {
    for (const count of [1, 2, 3, 4, 7, 10, 40]) {
      const terms = Array.from({ length: count }, (_, i) => tf.tensor1d([i, 2 * i + 0.5]));
      const sum = tf.addN(terms);
      const expected = [(count * (count - 1)) / 2, count * (count - 1) + 0.5 * count];
      expect(Array.from(await sum.data())).toEqual(expected);
      tf.dispose([sum, ...terms]);
    }
  });

  test("frees the groups' sums: the backend holds no more data after the terms and the sum are disposed", () => {
    const terms = Array.from({ length: 10 }, () => tf.ones([4]));
    const before = tf.backend().numDataIds();
    tf.addN(terms).dispose();
    expect(tf.backend().numDataIds()).toBe(before);
    tf.dispose(terms);
  });
});
