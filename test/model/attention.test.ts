import { describe, expect, test } from 'bun:test';
import * as tf from '@tensorflow/tfjs-core';
import { SegmentedAttention, type AttentionCache, type AttentionOptions } from '../../model/attention.ts';
import { normalInit } from '../../model/module.ts';
import { Random } from '../../model/random.ts';
import { maxAbsDifference } from './helpers.ts';

const WINDOW = 4;
const LENGTH = 11; // two whole windows and a partial one

function attention(options: Partial<AttentionOptions> = {}): SegmentedAttention {
  return new SegmentedAttention(new Random(5), { dim: 16, heads: 2, dimHead: 8, window: WINDOW, numPersistMemTokens: 2, sliding: false, acceptValueResidual: false, sharesValues: false, ...options });
}

const x = normalInit(new Random(9), [1, LENGTH, 16], 1) as tf.Tensor3D;

/** x with row `row` replaced by other values. */
function changedAt(row: number): tf.Tensor3D {
  return tf.tidy(() => {
    const other = normalInit(new Random(100 + row), [1, 1, 16], 1);
    return tf.concat([x.slice([0, 0, 0], [1, row, 16]), other, x.slice([0, row + 1, 0], [1, -1, 16])], 1) as tf.Tensor3D;
  });
}

/** The output rows of forward(x) that change when row `row` of x changes. */
function rowsThatSee(layer: SegmentedAttention, row: number): number[] {
  return tf.tidy(() => {
    const before = layer.forward(x).output;
    const after = layer.forward(changedAt(row)).output;
    const difference = after.sub(before).abs().max(-1).dataSync(); // [LENGTH]
    return [...difference].flatMap((d, t) => (d > 1e-6 ? [t] : []));
  });
}

describe('which positions a query sees', () => {
  test('block windows: the later rows of the same window, and no row of another window', () => {
    const layer = attention();
    expect(rowsThatSee(layer, 0)).toEqual([0, 1, 2, 3]);
    expect(rowsThatSee(layer, 5)).toEqual([5, 6, 7]);
    expect(rowsThatSee(layer, 7)).toEqual([7]);
    expect(rowsThatSee(layer, 9)).toEqual([9, 10]);
    layer.dispose();
  });

  test('sliding windows: each row sees the `window` rows up to itself, across window boundaries', () => {
    const layer = attention({ sliding: true });
    expect(rowsThatSee(layer, 0)).toEqual([0, 1, 2, 3]);
    expect(rowsThatSee(layer, 5)).toEqual([5, 6, 7, 8]);
    expect(rowsThatSee(layer, 9)).toEqual([9, 10]);
    layer.dispose();
  });

  test('every query also sees the persistent pairs: without them the first row attends to itself alone', () => {
    const plain = attention({ numPersistMemTokens: 0 });
    const withPersistent = attention();
    tf.tidy(() => {
      const first = x.slice([0, 0, 0], [1, 1, 16]);
      // One key and no persistent pair: the softmax is 1, and the output is the projected value.
      const value = plain.toQKV.forward(first).slice([0, 0, 32], [1, 1, 16]);
      const alone = plain.toOutput.forward(value);
      expect(maxAbsDifference(plain.forward(x).output.slice([0, 0, 0], [1, 1, 16]), alone)).toBeLessThan(1e-5);
      const persistentFirst = withPersistent.forward(x).output.slice([0, 0, 0], [1, 1, 16]);
      const persistentAlone = withPersistent.toOutput.forward(withPersistent.toQKV.forward(first).slice([0, 0, 32], [1, 1, 16]));
      expect(maxAbsDifference(persistentFirst, persistentAlone)).toBeGreaterThan(1e-3);
    });
    plain.dispose();
    withPersistent.dispose();
  });
});

describe('cached steps give the rows of a full forward', () => {
  /** Steps through x in pieces (each inside one window or from a window's start), from an empty cache, as the MAC block does inside its tidy. */
  function stepped(layer: SegmentedAttention, pieces: number[]): tf.Tensor {
    return tf.tidy(() => {
      let cache: AttentionCache = { keys: null, values: null, position: 0 };
      const outputs: tf.Tensor[] = [];
      let at = 0;
      for (const size of pieces) {
        const step = layer.step(x.slice([0, at, 0], [1, size, 16]) as tf.Tensor3D, cache);
        outputs.push(step.output);
        cache = step.cache;
        at += size;
      }
      return tf.concat(outputs, 1);
    });
  }

  const cases: [string, Partial<AttentionOptions>, number[]][] = [
    ['block windows, one row at a time', {}, Array<number>(LENGTH).fill(1)],
    ['block windows, a window at a time', {}, [4, 4, 3]],
    ['block windows, no persistent pairs, rows 3 + 1 then 2 + 2', { numPersistMemTokens: 0 }, [3, 1, 2, 2, 3]],
    ['sliding windows, one row at a time', { sliding: true }, Array<number>(LENGTH).fill(1)],
    ['sliding windows, pieces of 2 and 3', { sliding: true }, [2, 2, 3, 1, 3]],
    ['block windows, a row, then two windows at once from a window start', {}, [1, 3, 7]],
    ['sliding windows, every window at once', { sliding: true }, [LENGTH]],
    ['sliding windows, two windows at once after the rows they see', { sliding: true }, [1, 3, 6, 1]],
    ['sliding windows, a window and a row at once, then rows after them', { sliding: true }, [5, 3, 3]],
  ];
  for (const [name, options, pieces] of cases) {
    test(`${name} (max abs difference < 1e-5)`, () => {
      const layer = attention(options);
      const full = layer.forward(x);
      const cached = stepped(layer, pieces);
      expect(maxAbsDifference(full.output, cached)).toBeLessThan(1e-5);
      tf.dispose([full.output, full.values, cached]);
      layer.dispose();
    });
  }

  test('a step that crosses into another window starts at a window start', () => {
    const layer = attention();
    tf.tidy(() => {
      const first = layer.step(x.slice([0, 0, 0], [1, 2, 16]) as tf.Tensor3D, { keys: null, values: null, position: 0 });
      expect(() => layer.step(x.slice([0, 2, 0], [1, 3, 16]) as tf.Tensor3D, first.cache)).toThrow(/3 rows at position 2, windows of 4/);
    });
    layer.dispose();
  });

  test('forward keeps only what it returns', () => {
    const layer = attention({ sliding: true });
    const baseline = tf.memory().numTensors;
    const full = layer.forward(x);
    tf.dispose([full.output, full.values]);
    expect(tf.memory().numTensors).toBe(baseline);
    layer.dispose();
  });
});
