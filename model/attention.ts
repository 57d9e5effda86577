/**
 * Segmented attention of the MAC architecture (Titans, section 4.1): the sequence, with its
 * long-term memory tokens already inserted, is cut into windows of `window` positions. A query sees
 * the earlier positions of its own window (or, with sliding windows, the `window` positions up to
 * itself) and `numPersistMemTokens` learned key/value pairs that every query sees. Rotary position
 * embeddings carry the order inside the window.
 */
import * as tf from '@tensorflow/tfjs-core';
import { Linear, attend, broadcast, kernelOr, mergeHeads, normalizedProduct, tidyObject, type RMSNorm } from './layers.ts';
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
  /** Whether later layers mix this layer's values into theirs (it is the first, and they accept a value residual). */
  sharesValues: boolean;
}

/**
 * What attention returns: its output, and where it shares them, the values it attended with,
 * before any mixing, [G, H, n, dh].
 */
export interface AttentionOutput {
  output: tf.Tensor3D;
  values?: tf.Tensor4D;
}

/** What attention takes beside its rows. */
export interface AttentionInputs {
  /** With a value residual, the values the first layer returned for the same rows. */
  firstValues?: tf.Tensor4D;
  /** Added to the output, [G, n, D], by the output product's kernel where the backend has one: the residual stream. */
  residual?: tf.Tensor3D;
}

/**
 * What a step takes beside those: the rotary embedding another layer made for the same rows, and
 * the block's pre-norm, which the rows have yet to pass (a decoding step runs it in its
 * projection's kernel where the backend has one).
 */
export interface AttentionStepInputs extends AttentionInputs {
  sharedRotation?: Rotation;
  norm?: RMSNorm;
}

/**
 * Every window of some rows at once: the output, the values to share, the keys and values each
 * window attended to, [B * nW, H, P + W (block) or P + 2W (sliding), dh], and the rotary embedding.
 */
interface WindowsRun extends AttentionOutput {
  attended: { keys: tf.Tensor; values: tf.Tensor };
  rotation: Rotation;
}

/** What a step returns: attention's output, the cache that follows, and the rotary embedding it used. */
export interface AttentionStep extends AttentionOutput {
  cache: AttentionCache;
  rotation: Rotation;
}

/**
 * The keys and values a decoding step can still see, already rotated, [B, H, P + t, dh]: the P
 * persistent pairs first, then the window's rows, so that a step adds its row with one concat each.
 */
export interface AttentionCache {
  keys: tf.Tensor4D | null;
  values: tf.Tensor4D | null;
  /** Expanded position of the next row. */
  position: number;
}

/** A rotary embedding: cos and sin per row, or for rows that all share one position, its rotation matrix. */
export type Rotation = { cos: tf.Tensor; sin: tf.Tensor } | { matrix: tf.Tensor2D };

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

  /** The whole (expanded) sequence at once, all windows in parallel: x [B, T, D] -> [B, T, D]. */
  forward(x: tf.Tensor3D, inputs: AttentionInputs = {}): AttentionOutput {
    return tidyObject(() => {
      const { output, values } = this.windows(x, 0, null, inputs);
      return { output, values };
    });
  }

  /**
   * New rows x [B, n, D] at cache.position..: the decoding path. The rows stay inside one window, or
   * start at a window's start, where any number of windows run in parallel (a prompt's prefill).
   * Returns the output, the cache to use next (the given cache is left as it was) and the rows'
   * rotary embedding, which the other layers' steps over the same rows take as `sharedRotation`
   * rather than make it again.
   */
  step(x: tf.Tensor3D, cache: AttentionCache, inputs: AttentionStepInputs = {}): AttentionStep {
    const { window, sliding, numPersistMemTokens: persist, dimHead } = this.options;
    const rows = x.shape[1];
    const start = cache.position;
    const offsetInWindow = start % window;
    if (offsetInWindow + rows > window) {
      if (offsetInWindow > 0) throw new Error(`a step's rows stay inside one window or start at a window's start: ${rows} rows at position ${start}, windows of ${window}`);
      return this.stepWindows(x, cache, inputs);
    }
    const { firstValues, residual, sharedRotation, norm } = inputs;
    const cached = cache.keys ? cache.keys.shape[2] - persist : 0;
    // A block window forgets everything when it starts; a sliding one keeps the last window - 1.
    const keep = sliding ? Math.min(window - 1, cached) : offsetInWindow;
    const positions = Array.from({ length: rows }, (_, i) => (sliding ? start + i : offsetInWindow + i));
    const rotation = sharedRotation ?? (rows === 1 ? { matrix: rotationMatrix(positions[0]!, dimHead) } : rotaryAngles([positions], rows, dimHead));
    if ('matrix' in rotation && cache.keys && cache.values && !this.toValueMix) {
      return this.decodingStep(x, { keys: cache.keys, values: cache.values, position: start }, rotation.matrix, keep, { residual, norm });
    }
    const normalized = norm ? (norm.forward(x) as tf.Tensor3D) : x;
    const [q, k, projectedValues] = this.project(normalized, rotation); // [B, H, n, dh]
    const v = this.mixValues(normalized, projectedValues, firstValues);
    const [keys, values] = keep > 0 && cache.keys && cache.values
      ? [extend(cache.keys, keep, persist, k), extend(cache.values, keep, persist, v)]
      : this.withPersistent(k, v);
    // A single new row sees every key it is given, so it needs no mask.
    const mask = rows === 1 ? undefined : maskOf(rows, keep + rows, persist, (i, j) => j <= keep + i && (!sliding || j > keep + i - window));
    const out = attend(q, keys, values, mask);
    const output = this.toOutput.forward(mergeHeads(out), residual) as tf.Tensor3D;
    const shared = this.options.sharesValues ? projectedValues : undefined;
    return { output, values: shared, cache: { keys: keys as tf.Tensor4D, values: values as tf.Tensor4D, position: start + rows }, rotation };
  }

  /**
   * Rows x [B, n, D] from a window's start over more than one window: all windows in parallel, as
   * forward runs them. Sliding windows also see the rows before them that the cache holds.
   */
  private stepWindows(x: tf.Tensor3D, cache: AttentionCache, { firstValues, residual, sharedRotation, norm }: AttentionStepInputs): AttentionStep {
    const { window, sliding, numPersistMemTokens: persist } = this.options;
    const [batch, rows] = x.shape;
    const known = sliding && cache.keys ? Math.min(window - 1, cache.keys.shape[2] - persist) : 0;
    const before = known > 0 ? { keys: lastRows(cache.keys!, known), values: lastRows(cache.values!, known) } : null;
    const { output, values, attended, rotation } = this.windows(norm ? (norm.forward(x) as tf.Tensor3D) : x, cache.position, before, { firstValues, residual, sharedRotation });
    // The next step sees the last window's rows, and a sliding one also the whole window before it.
    const numWindows = Math.ceil(rows / window);
    const kept = persist + (sliding ? window : 0) + rows - (numWindows - 1) * window;
    const next = { keys: lastWindowRows(attended.keys, batch, kept), values: lastWindowRows(attended.values, batch, kept), position: cache.position + rows };
    return { output, values, cache: next, rotation };
  }

  /**
   * Rows x [B, n, D] from expanded position `start`, a window's start, every window at once.
   * `before`: with sliding windows, the keys and values [B, H, r, dh] (r < window) of the rows just
   * before `start`, which the first window also sees.
   */
  private windows(
    x: tf.Tensor3D, start: number, before: { keys: tf.Tensor; values: tf.Tensor } | null,
    { firstValues, residual, sharedRotation }: Omit<AttentionStepInputs, 'norm'>,
  ): WindowsRun {
    const { window, sliding, numPersistMemTokens: persist, dimHead } = this.options;
    const [batch, length, dim] = x.shape;
    const numWindows = Math.ceil(length / window);
    const padded = x.pad([[0, 0], [0, numWindows * window - length], [0, 0]]);
    const windows = padded.reshape([batch * numWindows, window, dim]) as tf.Tensor3D;
    // Block windows all use positions 0..W-1; sliding windows use absolute positions, one row of angles per window.
    const positions = sliding ? windowPositions(batch, numWindows, window, start) : [Array.from({ length: window }, (_, i) => i)];
    const rotation = sharedRotation ?? rotaryAngles(positions, window, dimHead);
    const [q, k, values] = this.project(windows, rotation); // [B * nW, H, W, dh]
    const v = this.mixValues(windows, values, firstValues);
    // Each sliding window also sees the one before it; the band mask keeps exactly `window` positions.
    const [keys, mixed] = this.withPersistent(
      sliding ? withPreviousWindow(k, batch, numWindows, before?.keys) : k,
      sliding ? withPreviousWindow(v, batch, numWindows, before?.values) : v,
    );
    const mask = sliding ? slidingMask(batch, numWindows, window, persist, before?.keys.shape[2] ?? 0) : maskOf(window, window, persist, (i, j) => j <= i);
    const out = attend(q, keys, mixed, mask);
    const merged = mergeHeads(out).reshape([batch, numWindows * window, -1]).slice([0, 0, 0], [batch, length, -1]);
    const output = this.toOutput.forward(merged, residual) as tf.Tensor3D;
    return { output, values: this.options.sharesValues ? values : undefined, attended: { keys, values: mixed }, rotation };
  }

  /**
   * One row x [B, 1, D] after the first, without a value mix: a decoding step. Its keys and values
   * go into the window straight from its projection (appendToWindow), and its query attends from
   * there (attendFromProjection).
   */
  private decodingStep(
    x: tf.Tensor3D, cache: { keys: tf.Tensor4D; values: tf.Tensor4D; position: number }, rotation: tf.Tensor2D, keep: number,
    { residual, norm }: Pick<AttentionStepInputs, 'residual' | 'norm'>,
  ): AttentionStep {
    const { dim, heads, dimHead, numPersistMemTokens: persist } = this.options;
    const groups = x.shape[0];
    const projection = norm // [G, 1, 3 * H * dh]: queries, keys, values
      ? normalizedProduct(x.reshape([groups, dim]), norm.gain, norm.eps, this.toQKV.weight).reshape([groups, 1, -1])
      : this.toQKV.forward(x);
    const keys = appendToWindow(cache.keys, projection, 'keys', rotation, keep, persist);
    const values = appendToWindow(cache.values, projection, 'values', null, keep, persist);
    const out = attendFromProjection(projection, rotation, keys, values);
    const output = this.toOutput.forward(mergeHeads(out), residual) as tf.Tensor3D;
    const inner = heads * dimHead;
    const shared = this.options.sharesValues ? (projection.slice([0, 0, 2 * inner], [-1, -1, inner]).reshape([groups, heads, 1, dimHead]) as tf.Tensor4D) : undefined;
    return { output, values: shared, cache: { keys: keys as tf.Tensor4D, values: values as tf.Tensor4D, position: cache.position + 1 }, rotation: { matrix: rotation } };
  }

  /** v + mix * (firstValues - v), mix = sigmoid(linear(x)) per head and row, [G, H, n, 1]; v itself without a value residual. */
  private mixValues(x: tf.Tensor, values: tf.Tensor4D, firstValues: tf.Tensor4D | undefined): tf.Tensor4D {
    if (!this.toValueMix) return values;
    const mix = this.toValueMix.gate(x).transpose([0, 2, 1]).expandDims(-1);
    return values.add(firstValues!.sub(values).mul(mix)) as tf.Tensor4D;
  }

  /**
   * Queries and keys rotated to their positions, and values, [G, H, n, dh] each, from x [G, n, D]:
   * one product, and queries and keys rotated together.
   */
  private project(x: tf.Tensor3D, rotation: Rotation): [tf.Tensor4D, tf.Tensor4D, tf.Tensor4D] {
    const { heads, dimHead } = this.options;
    const [groups, rows] = x.shape;
    const qkv = this.toQKV.forward(x); // [G, n, 3 * H * dh]: queries, keys, values, each head after head
    // A single row's layout is already [G, 3H, 1, dh].
    const byHead = rows === 1 ? qkv.reshape([groups, 3 * heads, 1, dimHead]) : qkv.reshape([groups, rows, 3 * heads, dimHead]).transpose([0, 2, 1, 3]);
    const [qk, v] = tf.split(byHead, [2 * heads, heads], 1);
    const [q, k] = tf.split(this.rotate(qk!, rotation), 2, 1);
    return [q as tf.Tensor4D, k as tf.Tensor4D, v as tf.Tensor4D];
  }

  /** Keys and values [G, H, t, dh] behind the persistent pairs, which every query sees: [G, H, P + t, dh]. */
  private withPersistent(k: tf.Tensor, v: tf.Tensor): [tf.Tensor, tf.Tensor] {
    const memory = this.persistentMemory;
    if (!memory) return [k, v];
    const groups = k.shape[0]!;
    const [pk, pv] = tf.split(memory, 2, 0).map((m) => (groups === 1 ? m : broadcast(m, [groups, ...m.shape.slice(1)])));
    return [tf.concat([pk!, k], 2), tf.concat([pv!, v], 2)];
  }

  /** Rotary embedding of x [G, H, n, dh]: x * cos + rotateHalf(x) * sin, where rotateHalf(x1, x2) = (-x2, x1). */
  private rotate(x: tf.Tensor, rotation: Rotation): tf.Tensor {
    const dh = x.shape[3]!;
    if ('matrix' in rotation) return x.reshape([-1, dh]).matMul(rotation.matrix).reshape(x.shape);
    const rotated = x.reshape([-1, dh]).matMul(this.rotateHalf).reshape(x.shape);
    return x.mul(rotation.cos).add(rotated.mul(rotation.sin));
  }
}

/** A decoding step's kernels, for a backend that has them (webgpu: src/backend/webgpu-kernels.ts). */
export const WINDOW_APPEND_KERNEL = 'TitansWindowAppend';

/** Where each part of a projection [G, n, 3 H dh] starts, in heads. */
const PROJECTION_PARTS = { keys: 1, values: 2 } as const;

/**
 * The window after a decoding step, for the keys or the values: the cached rows [G, H, P + t, dh]
 * with the last `keep` of the t kept, then the step's row of that part, taken from its projection
 * [G, 1, 3 H dh] and rotated by `rotation` [dh, dh] where one is given. One kernel where the
 * backend has it, which reads the row where the projection holds it; decoding needs no gradient,
 * and none is registered for it.
 */
export function appendToWindow(cached: tf.Tensor4D, projection: tf.Tensor, part: keyof typeof PROJECTION_PARTS, rotation: tf.Tensor2D | null, keep: number, persist: number): tf.Tensor {
  const inputs: tf.NamedTensorMap = rotation ? { cached, projection, rotation } : { cached, projection };
  return kernelOr(WINDOW_APPEND_KERNEL, inputs, { part: PROJECTION_PARTS[part], keep, persist }, () => {
    const [groups, heads, , dh] = cached.shape;
    const row = projection.reshape([groups, 3 * heads, 1, dh]).slice([0, PROJECTION_PARTS[part] * heads, 0, 0], [-1, heads, -1, -1]);
    return extend(cached, keep, persist, rotation ? row.reshape([-1, dh]).matMul(rotation).reshape(row.shape) : row);
  });
}

export const PROJECTED_ATTENTION_KERNEL = 'TitansProjectedAttention';

/**
 * A decoding step's attention: its query, taken from its projection [G, 1, 3 H dh] and rotated by
 * `rotation` [dh, dh], over the window's keys and values [G, H, W, dh]: [G, H, 1, dh]. One kernel
 * where the backend has it; like appendToWindow, it has no gradient.
 */
export function attendFromProjection(projection: tf.Tensor, rotation: tf.Tensor2D, keys: tf.Tensor, values: tf.Tensor): tf.Tensor {
  return kernelOr(PROJECTED_ATTENTION_KERNEL, { projection, rotation, keys, values }, {}, () => {
    const [groups, heads, , dh] = keys.shape as [number, number, number, number];
    const query = projection.slice([0, 0, 0], [-1, -1, heads * dh]).reshape([-1, dh]).matMul(rotation).reshape([groups, heads, 1, dh]);
    return attend(query, keys, values);
  });
}

/** The cached rows [B, H, P + t, dh] with the last `keep` of the t kept, then the new rows. */
function extend(cached: tf.Tensor4D, keep: number, persist: number, added: tf.Tensor): tf.Tensor {
  const rows = cached.shape[2] - persist;
  if (rows === keep) return tf.concat([cached, added], 2);
  const kept = cached.slice([0, 0, persist + rows - keep, 0], [-1, -1, keep, -1]);
  return tf.concat(persist > 0 ? [cached.slice([0, 0, 0, 0], [-1, -1, persist, -1]), kept, added] : [kept, added], 2);
}

function rotaryFrequency(i: number, half: number): number {
  return Math.pow(10000, -i / half);
}

/** cos and sin of the rotary angles, [T, dh] for one row of positions or [G, 1, T, dh] for one row per group. */
function rotaryAngles(positions: number[][], length: number, dh: number): Rotation {
  const half = dh / 2;
  const cos = new Float32Array(positions.length * length * dh);
  const sin = new Float32Array(positions.length * length * dh);
  positions.forEach((row, r) =>
    row.forEach((p, t) => {
      for (let i = 0; i < half; i++) {
        const angle = p * rotaryFrequency(i, half);
        const at = (r * length + t) * dh + i;
        cos[at] = cos[at + half] = Math.cos(angle);
        sin[at] = sin[at + half] = Math.sin(angle);
      }
    }),
  );
  const shape = positions.length === 1 ? [length, dh] : [positions.length, 1, length, dh];
  return { cos: tf.tensor(cos, shape), sin: tf.tensor(sin, shape) };
}

/**
 * The rotary embedding of one position as a matrix, diag(cos) + rotateHalf diag(sin): a decoding
 * step rotates its queries and keys with one product instead of five kernels.
 */
function rotationMatrix(position: number, dh: number): tf.Tensor2D {
  const half = dh / 2;
  const values = new Float32Array(dh * dh);
  for (let i = 0; i < half; i++) {
    const angle = position * rotaryFrequency(i, half);
    const [cos, sin] = [Math.cos(angle), Math.sin(angle)];
    values[i * dh + i] = values[(i + half) * dh + i + half] = cos;
    values[(i + half) * dh + i] = -sin; // out[i] = x[i] cos - x[i + half] sin
    values[i * dh + i + half] = sin; // out[i + half] = x[i + half] cos + x[i] sin
  }
  return tf.tensor2d(values, [dh, dh]);
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

/** Absolute positions of each window's rows, one row per (sequence, window) group, the first window at `start`. */
function windowPositions(batch: number, numWindows: number, window: number, start: number): number[][] {
  return Array.from({ length: batch * numWindows }, (_, g) => Array.from({ length: window }, (_, i) => start + (g % numWindows) * window + i));
}

/**
 * [B * nW, H, W, dh] -> [B * nW, H, 2W, dh]: each window's keys after the previous window's; before
 * the first, the rows `before` [B, H, r, dh] at the end of zeros (none given: all zeros). The windows
 * are shifted as flat rows: tfjs-backend-webgpu's Pad of five dimensions is invalid WGSL.
 */
function withPreviousWindow(x: tf.Tensor4D, batch: number, numWindows: number, before?: tf.Tensor): tf.Tensor4D {
  const flat = x.reshape([batch, numWindows, -1]);
  const shifted = before
    ? tf.concat([before.pad([[0, 0], [0, 0], [x.shape[2] - before.shape[2]!, 0], [0, 0]]).reshape([batch, 1, -1]), flat], 1)
    : flat.pad([[0, 0], [1, 0], [0, 0]]);
  const previous = shifted.slice([0, 0, 0], [batch, numWindows, -1]).reshape(x.shape);
  return tf.concat([previous, x], 2) as tf.Tensor4D;
}

/**
 * [B * nW, 1, W, P + 2W]: query i of window w sees the persistent pairs and the `window` positions up
 * to itself; of those before the first window, only the `known` last.
 */
function slidingMask(batch: number, numWindows: number, window: number, persist: number, known: number): tf.Tensor {
  const first = maskOf(window, 2 * window, persist, (i, j) => j > i && j <= window + i && j >= window - known);
  const rest = maskOf(window, 2 * window, persist, (i, j) => j > i && j <= window + i);
  const perWindow = tf.stack(Array.from({ length: numWindows }, (_, w) => (w === 0 ? first : rest)));
  return tf.tile(perWindow.expandDims(0), [batch, 1, 1, 1]).reshape([batch * numWindows, 1, window, persist + 2 * window]);
}

/** The last `count` rows of cached keys or values [B, H, P + t, dh], without the P persistent ones. */
function lastRows(cached: tf.Tensor, count: number): tf.Tensor {
  return cached.slice([0, 0, cached.shape[2]! - count, 0], [-1, -1, count, -1]);
}

/** The first `count` rows of each sequence's last window of keys or values [B * nW, H, K, dh]: [B, H, count, dh]. */
function lastWindowRows(t: tf.Tensor, batch: number, count: number): tf.Tensor4D {
  const [groups, heads, rows, dh] = t.shape as [number, number, number, number];
  const perSequence = groups / batch;
  const last = t.reshape([batch, perSequence, -1]).slice([0, perSequence - 1, 0], [-1, 1, -1]).reshape([batch, heads, rows, dh]);
  return last.slice([0, 0, 0, 0], [-1, -1, count, -1]) as tf.Tensor4D;
}

/** Additive mask [rows, persist + cols]: the persistent columns always seen, column j of the rest where allowed(i, j). */
function maskOf(rows: number, cols: number, persist: number, allowed: (i: number, j: number) => boolean): tf.Tensor2D {
  const width = persist + cols;
  const values = new Float32Array(rows * width);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) values[i * width + persist + j] = allowed(i, j) ? 0 : -1e9;
  return tf.tensor2d(values, [rows, width]);
}
