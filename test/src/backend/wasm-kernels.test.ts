import { describe, expect, test } from 'bun:test';
import * as tf from '@tensorflow/tfjs-core';
import { copyStrided, tileInto, transposeInto } from '../../../src/backend/wasm-kernels.ts';

/**
 * A copy of the values 0, 1, .. of `shape` puts every element where `byIndex` says: the copying
 * function alone, and `op` through the backend, whose output has `outShape`.
 */
function expectCopies(shape: number[], outShape: number[], byIndex: (values: number[]) => number[], copy: (source: Float32Array, out: Float32Array) => void, op: (x: tf.Tensor) => tf.Tensor): void {
  const values = Array.from({ length: shape.reduce((a, b) => a * b, 1) }, (_, i) => i);
  const expected = byIndex(values);
  const out = new Float32Array(expected.length);
  copy(Float32Array.from(values), out);
  expect(Array.from(out)).toEqual(expected);
  const x = tf.tensor(values, shape, 'int32');
  const copied = op(x);
  expect(copied.shape).toEqual(outShape);
  expect(Array.from(copied.dataSync())).toEqual(expected);
  tf.dispose([x, copied]);
}

/** The slice by definition: each output element read at its own index. */
function sliceByIndex(values: number[], shape: number[], begin: number[], size: number[]): number[] {
  const strides = shape.map((_, d) => shape.slice(d + 1).reduce((a, b) => a * b, 1));
  const count = size.reduce((a, b) => a * b, 1);
  return Array.from({ length: count }, (_, flat) => {
    let offset = 0;
    for (let d = size.length - 1; d >= 0; d--) {
      offset += (begin[d]! + (flat % size[d]!)) * strides[d]!;
      flat = Math.floor(flat / size[d]!);
    }
    return values[offset]!;
  });
}

const CASES: [shape: number[], begin: number[], size: number[]][] = [
  [[7], [2], [4]],
  [[5, 6], [1, 0], [3, 6]], // whole rows: one run
  [[5, 6], [0, 2], [5, 3]],
  [[4, 5, 130], [1, 2, 0], [2, 3, 130]], // runs long enough for set()
  [[16, 68, 384], [0, 0, 128], [16, 68, 128]], // a third of a fused q/k/v projection
  [[2, 4, 68, 32], [0, 0, 4, 0], [2, 4, 60, 32]], // a segment of every head
  [[3, 2, 4, 5, 6], [1, 0, 1, 2, 3], [2, 2, 3, 2, 3]],
  [[2, 3, 2, 3, 2, 3], [0, 1, 0, 1, 1, 0], [2, 2, 2, 2, 1, 3]],
];

describe('Slice and SplitV', () => {
  test.each(CASES)('of %p from %p, %p: every element where the index says', (shape, begin, size) => {
    expectCopies(shape, size, (values) => sliceByIndex(values, shape, begin, size), (source, out) => copyStrided(source, shape, begin, size, out), (x) => tf.slice(x, begin, size));
  });

  test('split, and the gradient through it, are exact copies', () => {
    const before = tf.memory().numTensors;
    const x = tf.tensor3d(Array.from({ length: 2 * 3 * 12 }, (_, i) => i / 7), [2, 3, 12]);
    const [a, b, c] = tf.split(x, [3, 4, 5], -1);
    expect(Array.from(b!.dataSync())).toEqual(sliceByIndex(Array.from(x.dataSync()), [2, 3, 12], [0, 0, 3], [2, 3, 4]));
    const grad = tf.grad((t: tf.Tensor) => tf.split(t, 3, -1)[1]!.mul(2).sum())(x);
    expect(Array.from(grad.dataSync())).toEqual(Array.from({ length: 72 }, (_, i) => (i % 12 >= 4 && i % 12 < 8 ? 2 : 0)));
    tf.dispose([x, a!, b!, c!, grad]);
    expect(tf.memory().numTensors).toBe(before);
  });
});

/** The tile by definition: each output element read at its index modulo the input's shape. */
function tileByIndex(values: number[], shape: number[], reps: number[]): number[] {
  const outShape = shape.map((size, d) => size * reps[d]!);
  return Array.from({ length: outShape.reduce((a, b) => a * b, 1) }, (_, flat) => {
    let offset = 0;
    let stride = 1;
    for (let d = shape.length - 1; d >= 0; d--) {
      offset += ((flat % outShape[d]!) % shape[d]!) * stride;
      flat = Math.floor(flat / outShape[d]!);
      stride *= shape[d]!;
    }
    return values[offset]!;
  });
}

const TILES: [shape: number[], reps: number[]][] = [
  [[5], [3]],
  [[1, 8, 4, 64], [4, 1, 1, 1]], // persistent keys over the windows of a prefill: one run per copy
  [[2, 3], [1, 4]], // the last dimension repeated: short runs
  [[2, 1, 70], [3, 5, 1]], // runs long enough for set()
  [[3, 2, 4], [2, 1, 3]],
  [[2, 3], [1, 1]],
];

describe('Tile and broadcastTo', () => {
  test.each(TILES)('of %p by %p: every element where the index says', (shape, reps) => {
    const outShape = shape.map((size, d) => size * reps[d]!);
    expectCopies(shape, outShape, (values) => tileByIndex(values, shape, reps), (source, out) => tileInto(source, shape, reps, out), (x) => tf.tile(x, reps));
  });

  test('broadcastTo, and the gradient through it, sum over the copies', () => {
    const before = tf.memory().numTensors;
    const x = tf.tensor3d([1, 2, 3, 4, 5, 6], [1, 2, 3]);
    const broadcast = tf.broadcastTo(x, [4, 2, 3]);
    expect(Array.from(broadcast.dataSync())).toEqual([1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6]);
    const grad = tf.grad((t: tf.Tensor) => tf.broadcastTo(t, [4, 2, 3]).mul(tf.range(0, 24).reshape([4, 2, 3])).sum())(x);
    expect(Array.from(grad.dataSync())).toEqual([36, 40, 44, 48, 52, 56]);
    tf.dispose([x, broadcast, grad]);
    expect(tf.memory().numTensors).toBe(before);
  });
});

/** The transpose by definition: each output element read at its index with the axes put back. */
function transposeByIndex(values: number[], shape: number[], perm: number[]): number[] {
  const outShape = perm.map((axis) => shape[axis]!);
  const strides = shape.map((_, d) => shape.slice(d + 1).reduce((a, b) => a * b, 1));
  return Array.from({ length: values.length }, (_, flat) => {
    let offset = 0;
    for (let d = outShape.length - 1; d >= 0; d--) {
      offset += (flat % outShape[d]!) * strides[perm[d]!]!;
      flat = Math.floor(flat / outShape[d]!);
    }
    return values[offset]!;
  });
}

const TRANSPOSES: [shape: number[], perm: number[]][] = [
  [[1, 3, 4, 5, 4, 5], [0, 2, 4, 1, 3, 5]], // a ViT's patches: runs of the last axis
  [[2, 3, 2, 3, 70], [2, 0, 3, 1, 4]], // runs long enough for set()
  [[2, 3, 4, 5, 6], [4, 3, 2, 1, 0]], // every axis moved: runs of one element
  [[3, 1, 2, 1, 4, 2, 3], [6, 5, 4, 3, 2, 1, 0]],
  [[4, 5, 6], [1, 0, 2]], // four dimensions or fewer: the stock kernel
];

describe('Transpose', () => {
  test.each(TRANSPOSES)('of %p by %p: every element where the index says', (shape, perm) => {
    const outShape = perm.map((axis) => shape[axis]!);
    expectCopies(shape, outShape, (values) => transposeByIndex(values, shape, perm), (source, out) => transposeInto(source, shape, perm, out), (x) => tf.transpose(x, perm));
  });
});

// Sharing is what these kernels add on WASM; another backend may copy, which is not wrong there.
describe.if(tf.getBackend() === 'wasm')('Identity and Cast on WASM', () => {
  test('a clone shares the memory of its source, and outlives it', () => {
    const x = tf.tensor1d([1, 2, 3]);
    const buffers = tf.memory().numDataBuffers;
    const copy = tf.clone(x);
    expect(tf.memory().numDataBuffers).toBe(buffers);
    x.dispose();
    expect(Array.from(copy.dataSync())).toEqual([1, 2, 3]);
    copy.dispose();
  });

  test('a cast to the same dtype shares, to another converts', () => {
    const before = tf.memory();
    const x = tf.tensor1d([1.75, -2.5, 3], 'float32');
    const same = tf.cast(x, 'float32');
    const whole = tf.cast(x, 'int32');
    expect(tf.memory().numDataBuffers - before.numDataBuffers).toBe(2); // x, and the int32 copy
    expect(Array.from(same.dataSync())).toEqual([1.75, -2.5, 3]);
    expect(whole.dtype).toBe('int32');
    expect(Array.from(whole.dataSync())).toEqual([1, -2, 3]);
    tf.dispose([x, same, whole]);
    expect(tf.memory().numTensors).toBe(before.numTensors);
    expect(tf.memory().numDataBuffers).toBe(before.numDataBuffers);
  });
});

describe('Equal where an operand broadcasts', () => {
  // A max over rows' gradient; a row against every row; a scalar; ranks that differ; both sides broadcasting.
  const shapes: [number[], number[]][] = [[[4, 2, 6], [4, 1, 6]], [[3, 5], [5]], [[2, 3], []], [[2, 1, 3], [4, 1]], [[1, 3, 1], [2, 1, 4]]];
  test.each(shapes)('of %p and %p is the comparison by definition, element by element (NaN equal to nothing, -0 to 0)', (shapeA, shapeB) => {
    // Few distinct values, so that many pairs are equal; NaN and -0 among them.
    const special = [NaN, -0, 0, 1];
    const valuesOf = (shape: number[], offset: number) => Array.from({ length: shape.reduce((a, b) => a * b, 1) }, (_, i) => special[(i * 3 + offset) % 4]!);
    const [as, bs] = [valuesOf(shapeA, 0), valuesOf(shapeB, 1)];
    const [a, b] = [tf.tensor(as, shapeA), tf.tensor(bs, shapeB)];
    const outShape = tf.backend_util.assertAndGetBroadcastShape(shapeA, shapeB);
    // Each output element's own index into either operand, as broadcasting defines it.
    const at = (values: number[], shape: number[], flat: number) => {
      let [offset, stride] = [0, 1];
      for (let d = outShape.length - 1, rest = flat; d >= 0; d--) {
        const size = shape[d - (outShape.length - shape.length)] ?? 1;
        if (size > 1) offset += (rest % outShape[d]!) * stride;
        stride *= size;
        rest = Math.floor(rest / outShape[d]!);
      }
      return values[offset]!;
    };
    const expected = Array.from({ length: outShape.reduce((x, y) => x * y, 1) }, (_, i) => (at(as, shapeA, i) === at(bs, shapeB, i) ? 1 : 0));
    const equal = tf.equal(a, b);
    expect(equal.shape).toEqual(outShape);
    expect(equal.dtype).toBe('bool');
    expect(Array.from(equal.dataSync())).toEqual(expected);
    tf.dispose([a, b, equal]);
  });
});
