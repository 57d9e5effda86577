/**
 * Segmented attention of the MAC architecture (Titans, section 4.1): the sequence, with its
 * long-term memory tokens already inserted, is cut into windows of `window` positions. A query sees
 * the earlier positions of its own window (or, with sliding windows, the `window` positions up to
 * itself) and `numPersistMemTokens` learned key/value pairs that every query sees. Rotary position
 * embeddings carry the order inside the window.
 */
import * as tf from '@tensorflow/tfjs-core';
import { Linear, attend, mergeHeads, splitHeads, tidyObject } from './layers.ts';
import { Module, normalInit } from './module.ts';
import type { Random } from './random.ts';

export interface AttentionOptions {
  dim: number;
  heads: number;
  dimHead: number;
  window: number;
  numPersistMemTokens: number;
  sliding: boolean;
  /** Mix the first layer's values into this layer's, a learned share per head and row (value residual learning). */
  acceptValueResidual: boolean;
}

/** What attention returns: its output and the values it attended with, before any mixing, [G, H, n, dh]. */
export interface AttentionOutput {
  output: tf.Tensor3D;
  values: tf.Tensor4D;
}

/** The keys and values a decoding step can still see, already rotated, [B, H, t, dh]. */
export interface AttentionCache {
  keys: tf.Tensor4D | null;
  values: tf.Tensor4D | null;
  /** Expanded position of the next row. */
  position: number;
}

export class SegmentedAttention extends Module {
  readonly toQKV: Linear;
  readonly toOutput: Linear;
  readonly toValueMix?: Linear;
  readonly persistentMemory?: tf.Variable; // [2, H, P, dh]: keys, values
  /** rotateHalf as a constant matrix: a product with fixed weights is the backend's fastest op. */
  private readonly rotateHalf: tf.Tensor2D;

  constructor(
    random: Random,
    readonly options: AttentionOptions,
  ) {
    super();
    const inner = options.heads * options.dimHead;
    this.toQKV = this.child('toQKV', new Linear(random, options.dim, 3 * inner, { bias: false }));
    this.toOutput = this.child('toOutput', new Linear(random, inner, options.dim, { bias: false }));
    if (options.acceptValueResidual) this.toValueMix = this.child('toValueMix', new Linear(random, options.dim, options.heads));
    if (options.numPersistMemTokens > 0) {
      this.persistentMemory = this.param('persistentMemory', normalInit(random, [2, options.heads, options.numPersistMemTokens, options.dimHead], 0.02));
    }
    this.rotateHalf = rotateHalfMatrix(options.dimHead);
  }

  override dispose(): void {
    super.dispose();
    this.rotateHalf.dispose();
  }

  /**
   * The whole (expanded) sequence at once, all windows in parallel: x [B, T, D] -> [B, T, D].
   * `firstValues`: with a value residual, the values the first layer returned for the same x.
   */
  forward(x: tf.Tensor3D, firstValues?: tf.Tensor4D): AttentionOutput {
    return tidyObject(() => {
      const { window, sliding } = this.options;
      const [batch, length, dim] = x.shape;
      const numWindows = Math.ceil(length / window);
      const padded = x.pad([[0, 0], [0, numWindows * window - length], [0, 0]]);
      const windows = padded.reshape([batch * numWindows, window, dim]);
      const [q, k, values] = this.project(windows); // [B * nW, H, W, dh]
      const v = this.mixValues(windows, values, firstValues);
      // Block windows all use positions 0..W-1; sliding windows use absolute positions, one row of angles per window.
      const positions = sliding ? windowPositions(batch, numWindows, window) : [Array.from({ length: window }, (_, i) => i)];
      const angles = rotaryAngles(positions, window, this.options.dimHead);
      const rq = this.rotate(q, angles);
      let rk = this.rotate(k, angles);
      let vv = v;
      let mask: tf.Tensor;
      if (sliding) {
        // Each window also sees the one before it; the band mask keeps exactly `window` positions.
        rk = withPreviousWindow(rk, batch, numWindows);
        vv = withPreviousWindow(v, batch, numWindows);
        mask = slidingMask(batch, numWindows, window);
      } else {
        mask = causalMask(window);
      }
      const out = this.attendWithPersistent(rq, rk, vv, mask);
      const merged = mergeHeads(out).reshape([batch, numWindows * window, -1]).slice([0, 0, 0], [batch, length, -1]);
      return { output: this.toOutput.forward(merged) as tf.Tensor3D, values };
    });
  }

  /**
   * New rows x [B, n, D] at cache.position.., all inside one window: the decoding path. Returns the
   * output and the cache to use next (the given cache is left as it was).
   */
  step(x: tf.Tensor3D, cache: AttentionCache, firstValues?: tf.Tensor4D): AttentionOutput & { cache: AttentionCache } {
    const { window, sliding } = this.options;
    const rows = x.shape[1];
    const start = cache.position;
    const offsetInWindow = start % window;
    // A block window forgets everything when it starts; a sliding one keeps the last window - 1.
    const keep = sliding ? Math.min(window - 1, cache.keys?.shape[2] ?? 0) : offsetInWindow;
    const [q, k, projectedValues] = this.project(x); // [B, H, n, dh]
    const v = this.mixValues(x, projectedValues, firstValues);
    const angles = rotaryAngles([Array.from({ length: rows }, (_, i) => (sliding ? start + i : offsetInWindow + i))], rows, this.options.dimHead);
    const rk = this.rotate(k, angles);
    const keys = keep > 0 && cache.keys ? tf.concat([lastRows(cache.keys, keep), rk], 2) : rk;
    const values = keep > 0 && cache.values ? tf.concat([lastRows(cache.values, keep), v], 2) : v;
    // A single new row sees every key it is given, so it needs no mask.
    const mask = rows === 1 ? null : maskOf(rows, keep + rows, (i, j) => j <= keep + i && (!sliding || j > keep + i - window));
    const out = this.attendWithPersistent(this.rotate(q, angles), keys, values, mask);
    const output = this.toOutput.forward(mergeHeads(out)) as tf.Tensor3D;
    return { output, values: projectedValues, cache: { keys: keys as tf.Tensor4D, values: values as tf.Tensor4D, position: start + rows } };
  }

  /** v + mix * (firstValues - v), mix = sigmoid(linear(x)) per head and row, [G, H, n, 1]; v itself without a value residual. */
  private mixValues(x: tf.Tensor, values: tf.Tensor4D, firstValues: tf.Tensor4D | undefined): tf.Tensor4D {
    if (!this.toValueMix) return values;
    const mix = this.toValueMix.forward(x).sigmoid().transpose([0, 2, 1]).expandDims(-1);
    return values.add(firstValues!.sub(values).mul(mix)) as tf.Tensor4D;
  }

  private project(x: tf.Tensor): [tf.Tensor4D, tf.Tensor4D, tf.Tensor4D] {
    const qkv = this.toQKV.forward(x);
    const inner = this.options.heads * this.options.dimHead;
    const [q, k, v] = tf.split(qkv, [inner, inner, inner], -1);
    return [splitHeads(q!, this.options.heads), splitHeads(k!, this.options.heads), splitHeads(v!, this.options.heads)];
  }

  /** Prepends the persistent key/value pairs, which every query may see, then attends. */
  private attendWithPersistent(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, mask: tf.Tensor | null): tf.Tensor {
    const memory = this.persistentMemory;
    if (!memory) return attend(q, k, v, mask ?? undefined);
    const groups = q.shape[0]!;
    const [pk, pv] = [0, 1].map((i) => {
      const m = memory.slice([i, 0, 0, 0], [1, -1, -1, -1]); // [1, H, P, dh]
      return groups === 1 ? m : tf.broadcastTo(m, [groups, ...m.shape.slice(1)]);
    });
    const fullMask = mask ? tf.concat([tf.zeros([...mask.shape.slice(0, -1), this.options.numPersistMemTokens]), mask], -1) : undefined;
    return attend(q, tf.concat([pk!, k], 2), tf.concat([pv!, v], 2), fullMask);
  }

  /** Rotary embedding of x [G, H, T, dh]: x * cos + rotateHalf(x) * sin, where rotateHalf(x1, x2) = (-x2, x1). */
  private rotate(x: tf.Tensor4D, angles: { cos: tf.Tensor; sin: tf.Tensor }): tf.Tensor4D {
    const rotated = x.reshape([-1, x.shape[3]]).matMul(this.rotateHalf).reshape(x.shape);
    return x.mul(angles.cos).add(rotated.mul(angles.sin)) as tf.Tensor4D;
  }
}

/** cos and sin of the rotary angles, [T, dh] for one row of positions or [G, 1, T, dh] for one row per group. */
function rotaryAngles(positions: number[][], length: number, dh: number): { cos: tf.Tensor; sin: tf.Tensor } {
  const half = dh / 2;
  const cos = new Float32Array(positions.length * length * dh);
  const sin = new Float32Array(positions.length * length * dh);
  positions.forEach((row, r) =>
    row.forEach((p, t) => {
      for (let i = 0; i < half; i++) {
        const angle = p * Math.pow(10000, -i / half);
        const at = (r * length + t) * dh + i;
        cos[at] = cos[at + half] = Math.cos(angle);
        sin[at] = sin[at + half] = Math.sin(angle);
      }
    }),
  );
  const shape = positions.length === 1 ? [length, dh] : [positions.length, 1, length, dh];
  return { cos: tf.tensor(cos, shape), sin: tf.tensor(sin, shape) };
}

function rotateHalfMatrix(dh: number): tf.Tensor2D {
  const half = dh / 2;
  const values = new Float32Array(dh * dh);
  for (let i = 0; i < half; i++) {
    values[(i + half) * dh + i] = -1; // out[i] = -x[i + half]
    values[i * dh + i + half] = 1; // out[i + half] = x[i]
  }
  return tf.tensor2d(values, [dh, dh]);
}

function lastRows(x: tf.Tensor4D, count: number): tf.Tensor {
  return count === x.shape[2] ? x : x.slice([0, 0, x.shape[2] - count, 0], [-1, -1, count, -1]);
}

/** Absolute positions of each window's rows, one row per (sequence, window) group. */
function windowPositions(batch: number, numWindows: number, window: number): number[][] {
  return Array.from({ length: batch * numWindows }, (_, g) => Array.from({ length: window }, (_, i) => (g % numWindows) * window + i));
}

/** [B * nW, H, W, dh] -> [B * nW, H, 2W, dh]: each window's keys after the previous window's (zeros before the first). */
function withPreviousWindow(x: tf.Tensor4D, batch: number, numWindows: number): tf.Tensor4D {
  const [, heads, window, dh] = x.shape;
  const grouped = x.reshape([batch, numWindows, heads, window, dh]);
  const previous = grouped.pad([[0, 0], [1, 0], [0, 0], [0, 0], [0, 0]]).slice([0, 0, 0, 0, 0], [batch, numWindows, heads, window, dh]);
  return tf.concat([previous, grouped], 3).reshape([batch * numWindows, heads, 2 * window, dh]) as tf.Tensor4D;
}

function causalMask(size: number): tf.Tensor2D {
  return maskOf(size, size, (i, j) => j <= i);
}

/** [B * nW, 1, W, 2W]: query i of window w sees the `window` positions up to itself, none before the sequence. */
function slidingMask(batch: number, numWindows: number, window: number): tf.Tensor {
  const first = maskOf(window, 2 * window, (i, j) => j >= window && j <= window + i);
  const rest = maskOf(window, 2 * window, (i, j) => j > i && j <= window + i);
  const perWindow = tf.stack(Array.from({ length: numWindows }, (_, w) => (w === 0 ? first : rest)));
  return tf.tile(perWindow.expandDims(0), [batch, 1, 1, 1]).reshape([batch * numWindows, 1, window, 2 * window]);
}

function maskOf(rows: number, cols: number, allowed: (i: number, j: number) => boolean): tf.Tensor2D {
  const values = new Float32Array(rows * cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) values[i * cols + j] = allowed(i, j) ? 0 : -1e9;
  return tf.tensor2d(values, [rows, cols]);
}
