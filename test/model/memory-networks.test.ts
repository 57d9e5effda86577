import { describe, expect, test } from 'bun:test';
import * as tf from '@tensorflow/tfjs-core';
import { MemoryMLP, MemorySwiGLU, ResidualNorm, memoryNetwork, type MemoryNetwork } from '../../model/memory-networks.ts';
import { normalInit } from '../../model/module.ts';
import { Random } from '../../model/random.ts';
import { maxAbsDifference } from './helpers.ts';

const networks: [string, MemoryNetwork][] = [
  ['linear', new MemoryMLP(1, 4)],
  ['mlp (depth 2)', new MemoryMLP(2, 4)],
  ['mlp (depth 3)', new MemoryMLP(3, 2)],
  ['swiglu', new MemorySwiGLU(2)],
  ['residual norm around mlp', new ResidualNorm(new MemoryMLP(2, 4))],
  ['residual norm around swiglu', new ResidualNorm(new MemorySwiGLU(2))],
];

describe('the surprise is the exact gradient of the inner loss', () => {
  for (const [name, network] of networks) {
    test(`${name}: closed-form backward equals tf.grad (relative error < 1e-4)`, () => {
      const random = new Random(11);
      const weights = network.weightSpecs(8).map(({ shape }) => normalInit(random, [2, 3, ...shape], 0.5));
      const keys = normalInit(random, [2, 3, 5, 8], 1);
      const values = normalInit(random, [2, 3, 5, 8], 1);
      const theta = normalInit(random, [2, 3, 5, 1], 1).abs();
      const innerLoss = (...w: tf.Tensor[]) => network.forward(w, keys).sub(values).square().mul(theta).sum();
      const expected = tf.grads(innerLoss)(weights);
      const trace = network.trace(weights, keys);
      const explicit = trace.backward(trace.output.sub(values).mul(theta).mul(2));
      expect(maxAbsDifference(trace.output, network.forward(weights, keys))).toBeLessThan(1e-6);
      expected.forEach((g, i) => {
        const relative = maxAbsDifference(g, explicit[i]!) / g.abs().max().dataSync()[0]!;
        expect(relative).toBeLessThan(1e-4);
      });
      tf.dispose([weights, keys, values, theta, expected, trace.output, explicit]);
    });
  }
});

describe('shapes', () => {
  test('weightSpecs: the matrices of each kind, at a spread of 1 / sqrt(fan-in), and gamma at zero', () => {
    expect(new MemoryMLP(1, 4).weightSpecs(8)).toEqual([{ shape: [8, 8], std: 1 / Math.sqrt(8) }]);
    expect(new MemoryMLP(3, 2).weightSpecs(8).map((w) => w.shape)).toEqual([[8, 16], [16, 16], [16, 8]]);
    expect(new MemoryMLP(3, 2).weightSpecs(8).map((w) => w.std)).toEqual([1 / Math.sqrt(8), 1 / 4, 1 / 4]);
    expect(new MemorySwiGLU(2).weightSpecs(8).map((w) => w.shape)).toEqual([[8, 16], [8, 16], [16, 8]]);
    expect(new ResidualNorm(new MemorySwiGLU(2)).weightSpecs(8).at(-1)).toEqual({ shape: [1, 8], std: 0 });
  });

  for (const [name, network] of networks) {
    test(`${name}: forward keeps [B, H, n, dim] and frees its intermediates`, () => {
      const random = new Random(2);
      const weights = network.weightSpecs(8).map(({ shape }) => normalInit(random, [2, 3, ...shape], 0.5));
      const x = normalInit(random, [2, 3, 5, 8], 1);
      const baseline = tf.memory().numTensors;
      const y = network.forward(weights, x);
      expect(y.shape).toEqual([2, 3, 5, 8]);
      expect(tf.memory().numTensors).toBe(baseline + 1);
      tf.dispose([weights, x, y]);
    });
  }
});

describe('memoryNetwork', () => {
  test('builds the kind a config names, wrapped in the residual norm when asked', () => {
    expect(memoryNetwork('mlp', 3, 2, false)).toMatchObject({ kind: 'mlp', depth: 3, expansionFactor: 2 });
    expect(memoryNetwork('linear', 3, 2, false)).toMatchObject({ kind: 'linear', depth: 1 });
    expect(memoryNetwork('swiglu', 3, 2, false)).toBeInstanceOf(MemorySwiGLU);
    const wrapped = memoryNetwork('swiglu', 3, 2, true);
    expect(wrapped).toBeInstanceOf(ResidualNorm);
    expect(wrapped.kind).toBe('swiglu');
    const custom = new MemoryMLP(2, 1);
    expect(memoryNetwork(custom, 3, 2, false)).toBe(custom);
  });

  test('the residual norm starts as LayerNorm(M(x)) + x: what it adds to x has zero mean and unit variance per row', () => {
    const network = new ResidualNorm(new MemoryMLP(2, 4));
    const random = new Random(4);
    const weights = network.weightSpecs(8).map(({ shape, std }) => normalInit(random, [1, 1, ...shape], std));
    const x = normalInit(random, [1, 1, 6, 8], 3);
    tf.tidy(() => {
      const added = network.forward(weights, x).sub(x);
      const { mean, variance } = tf.moments(added, -1);
      expect(mean.abs().max().dataSync()[0]!).toBeLessThan(1e-5);
      expect(variance.sub(1).abs().max().dataSync()[0]!).toBeLessThan(1e-3);
    });
    tf.dispose([weights, x]);
  });
});
