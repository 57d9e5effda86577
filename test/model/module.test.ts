import { describe, expect, test } from 'bun:test';
import * as tf from '@tensorflow/tfjs-core';
import { Module, normalInit } from '../../model/module.ts';
import { Random } from '../../model/random.ts';

class Leaf extends Module {
  constructor(random: Random, size: number) {
    super();
    this.param('weight', normalInit(random, [size, 2], 1));
    this.param('bias', tf.zeros([2]));
  }
}

class Tree extends Module {
  constructor(random: Random) {
    super();
    this.param('scale', tf.ones([1]));
    this.child('left', new Leaf(random, 3));
    this.child('layers.0', new Leaf(random, 4));
  }
}

describe('Module', () => {
  test('names every parameter by its dotted path, its own first, children in the order they were added', () => {
    const tree = new Tree(new Random(1));
    expect(tree.namedParameters().map(([name, v]) => [name, v.shape])).toEqual([
      ['scale', [1]], ['left.weight', [3, 2]], ['left.bias', [2]], ['layers.0.weight', [4, 2]], ['layers.0.bias', [2]],
    ]);
    expect(tree.parameterCount()).toBe(1 + 6 + 2 + 8 + 2);
    tree.dispose();
  });

  test('dispose frees every variable of the tree, and param keeps no copy of its initial value', () => {
    const baseline = tf.memory().numTensors;
    const tree = new Tree(new Random(1));
    expect(tf.memory().numTensors).toBe(baseline + 5);
    tree.dispose();
    expect(tf.memory().numTensors).toBe(baseline);
  });
});

describe('normalInit', () => {
  test('draws from the seeded generator: the same seed, the same values; the spread is std', () => {
    const a = normalInit(new Random(7), [100, 100], 0.5);
    const b = normalInit(new Random(7), [100, 100], 0.5);
    expect(Array.from(a.dataSync())).toEqual(Array.from(b.dataSync()));
    const { mean, variance } = tf.moments(a);
    expect(Math.abs(mean.dataSync()[0]!)).toBeLessThan(0.02);
    expect(Math.sqrt(variance.dataSync()[0]!)).toBeCloseTo(0.5, 1);
    tf.dispose([a, b, mean, variance]);
  });
});
