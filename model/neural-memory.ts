/**
 * The neural long-term memory of Titans ("Learning to Memorize at Test Time", Behrouz et al. 2024,
 * section 3.1): a small network M whose weights are learned while the model reads.
 *
 * The sequence is read in chunks. Every token of chunk t reads M with the weights W_{t-1} in force
 * before the chunk, so reading is causal. Once the chunk is complete the memory stores it:
 *   surprise  g_t = d/dW sum_i theta_i * ||M(k_i) - v_i||^2   (theta_i: a learned, per-token step size)
 *   momentum  S_t = eta_t * S_{t-1} - g_t
 *   forget    W_t = (1 - alpha_t) * W_{t-1} + S_t
 * With neuralMemoryBatchSize a multiple of the chunk, several chunks are stored together: their
 * surprises are all taken at the batch's starting weights, then folded in one by one.
 * With convKernel K > 0, queries, keys and values each pass a causal depthwise convolution of K rows
 * after their projection (section 4.4), so that a key can hold the tokens just before its own: what
 * a later query recalls by is the context that preceded a value.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { NeuralMemoryOptions } from './config.ts';
import { CausalConv, Linear, RMSNorm, mergeHeads, splitHeads, tidyObject } from './layers.ts';
import type { MemoryNetwork } from './memory-networks.ts';
import { Module, normalInit } from './module.ts';
import type { Random } from './random.ts';

export interface MemoryState {
  /** W_{t-1}, one tensor per memory weight: [B, H, ...]. */
  weights: tf.Tensor[];
  /** S_{t-1}, shaped like the weights. */
  momentum: tf.Tensor[];
  /** Rows of the batch not yet complete, in pieces; stored when it completes. */
  pending: MemoryRows[];
  /** The last K - 1 normalised inputs, which the convolutions of the next rows reach back to; null without them. */
  recent: tf.Tensor | null;
}

/** Rows as the memory stores them: normalised inputs [B, n, D] (for the gates), their keys and values [B, n, H * dh]. */
export interface MemoryRows {
  inputs: tf.Tensor;
  keys: tf.Tensor;
  values: tf.Tensor;
}

export interface NeuralMemoryShape {
  dim: number;
  chunkSize: number;
  batchSize: number;
  options: NeuralMemoryOptions;
  network: MemoryNetwork;
}

export class NeuralMemory extends Module {
  readonly norm: RMSNorm;
  readonly toQueries: Linear;
  readonly toKeys: Linear;
  readonly toValues: Linear;
  readonly toStepSize: Linear;
  readonly toMomentum: Linear;
  readonly toForget: Linear;
  readonly toOutput: Linear;
  readonly queryConv?: CausalConv;
  readonly keyConv?: CausalConv;
  readonly valueConv?: CausalConv;
  readonly initialWeights: tf.Variable[];
  private readonly heads: number;
  private readonly dimHead: number;

  constructor(
    random: Random,
    readonly shape: NeuralMemoryShape,
  ) {
    super();
    const { dim, options, network } = shape;
    this.heads = options.heads;
    this.dimHead = options.dimHead;
    const inner = this.heads * this.dimHead;
    this.norm = this.child('norm', new RMSNorm(dim));
    this.toQueries = this.child('toQueries', new Linear(random, dim, inner, { bias: false }));
    this.toKeys = this.child('toKeys', new Linear(random, dim, inner, { bias: false }));
    this.toValues = this.child('toValues', new Linear(random, dim, inner, { bias: false }));
    this.toStepSize = this.child('toStepSize', new Linear(random, dim, this.heads));
    this.toMomentum = this.child('toMomentum', new Linear(random, dim, this.heads));
    // Forgetting starts rare (sigmoid(-4) ~ 0.02): the memory should first learn to keep things.
    this.toForget = this.child('toForget', new Linear(random, dim, this.heads, { biasInit: -4 }));
    this.toOutput = this.child('toOutput', new Linear(random, inner, dim, { bias: false }));
    if (options.convKernel > 0) {
      this.queryConv = this.child('queryConv', new CausalConv(random, options.convKernel, inner));
      this.keyConv = this.child('keyConv', new CausalConv(random, options.convKernel, inner));
      this.valueConv = this.child('valueConv', new CausalConv(random, options.convKernel, inner));
    }
    this.initialWeights = network.weightShapes(this.dimHead).map((s, i) =>
      this.param(`initialWeights.${i}`, normalInit(random, [this.heads, ...s], 1 / Math.sqrt(s[0]!))),
    );
  }

  initialState(batch: number): MemoryState {
    return tidyObject(() => {
      const { convKernel } = this.shape.options;
      return {
        weights: this.initialWeights.map((w) => tf.broadcastTo(w.expandDims(0), [batch, ...w.shape])),
        momentum: this.initialWeights.map((w) => tf.zeros([batch, ...w.shape])),
        pending: [],
        // Zero rows before the start: the convolutions are zero-padded.
        recent: convKernel > 0 ? tf.zeros([batch, convKernel - 1, this.shape.dim]) : null,
      };
    });
  }

  /**
   * Reads the memory for every row of x ([B, n, D]) and stores each batch of rows as it completes.
   * Returns what was read, [B, n, D], and the new state; the given state is left as it was.
   */
  forward(x: tf.Tensor3D, state: MemoryState): { retrieved: tf.Tensor3D; state: MemoryState } {
    const normalized = this.norm.forward(x) as tf.Tensor3D;
    const { queries, rows: all, recent } = this.project(normalized, state.recent);
    const rows = normalized.shape[1];
    const reads: tf.Tensor[] = [];
    let { weights, momentum, pending } = state;
    for (let offset = 0; offset < rows; ) {
      const have = pending.reduce((sum, p) => sum + p.inputs.shape[1]!, 0);
      const take = Math.min(this.shape.batchSize - have, rows - offset);
      const piece = take === rows ? all : sliceRows(all, offset, take);
      reads.push(this.retrieve(take === rows ? queries : queries.slice([0, offset, 0], [-1, take, -1]), weights));
      // Pieces are joined only when the batch completes: a decoding step adds one row at a time.
      pending = [...pending, piece];
      if (have + take === this.shape.batchSize) {
        ({ weights, momentum } = this.store(pending.length === 1 ? pending[0]! : concatRows(pending), weights, momentum));
        pending = [];
      }
      offset += take;
    }
    const retrieved = (reads.length === 1 ? reads[0]! : tf.concat(reads, 1)) as tf.Tensor3D;
    return { retrieved, state: { weights, momentum, pending, recent } };
  }

  /**
   * Queries, keys and values of normalised rows [B, n, D], each convolved with the rows before
   * (`recent`, when there is a convolution); and the `recent` that follows these rows.
   */
  project(normalized: tf.Tensor, recent: tf.Tensor | null): { queries: tf.Tensor; rows: MemoryRows; recent: tf.Tensor | null } {
    return tidyObject(() => {
      const context = recent ? tf.concat([recent, normalized], 1) : normalized;
      const convolved = (projection: Linear, conv: CausalConv | undefined) => {
        const projected = projection.forward(context);
        return conv ? conv.forward(projected) : projected;
      };
      const rows = { inputs: normalized, keys: convolved(this.toKeys, this.keyConv), values: convolved(this.toValues, this.valueConv) };
      const keep = recent?.shape[1] ?? 0;
      const next = recent && context.slice([0, context.shape[1]! - keep, 0], [-1, keep, -1]);
      return { queries: convolved(this.toQueries, this.queryConv), rows, recent: next };
    });
  }

  /** M_{W}(q) for projected queries [B, n, H * dh] -> [B, n, D]. */
  retrieve(queries: tf.Tensor, weights: tf.Tensor[]): tf.Tensor {
    return tf.tidy(() => {
      const heads = this.headsOf(queries, this.shape.options.qkNorm); // [B, H, n, dh]
      return this.toOutput.forward(mergeHeads(this.shape.network.forward(weights, heads)));
    });
  }

  /** One weight update from a complete batch of rows, [B, batchSize, ...]. */
  store(rows: MemoryRows, weights: tf.Tensor[], momentum: tf.Tensor[]): { weights: tf.Tensor[]; momentum: tf.Tensor[] } {
    return tidyObject(() => {
      const { chunkSize, batchSize, options } = this.shape;
      let nextWeights = weights;
      let nextMomentum = momentum;
      for (let start = 0; start < batchSize; start += chunkSize) {
        const chunk = sliceRows(rows, start, chunkSize);
        const g = this.surprise(chunk, weights);
        const summary = chunk.inputs.mean(1); // [B, D]
        const eta = this.perHeadGate(this.toMomentum, summary);
        const alpha = this.perHeadGate(this.toForget, summary);
        nextMomentum = options.momentum
          ? nextMomentum.map((s, i) => s.mul(eta).sub(g[i]!))
          : g.map((gi) => gi.neg());
        const forget = alpha.neg().add(1);
        nextWeights = nextWeights.map((w, i) => w.mul(forget).add(nextMomentum[i]!));
      }
      return { weights: nextWeights, momentum: nextMomentum };
    });
  }

  /** g = d/dW sum_i theta_i ||M_W(k_i) - v_i||^2 over one chunk of rows, in closed form. */
  surprise(chunk: MemoryRows, weights: tf.Tensor[]): tf.Tensor[] {
    return tf.tidy(() => {
      const { network, options } = this.shape;
      const keys = this.headsOf(chunk.keys, options.qkNorm); // [B, H, c, dh]
      const values = this.headsOf(chunk.values, false);
      const stepSize = this.toStepSize.forward(chunk.inputs).sigmoid().mul(options.maxLr); // [B, c, H]
      const theta = stepSize.transpose([0, 2, 1]).expandDims(-1); // [B, H, c, 1]
      const trace = network.trace(weights, keys);
      const grads = trace.backward(trace.output.sub(values).mul(theta).mul(2));
      return options.maxGradNorm > 0 ? this.clipPerHead(grads, options.maxGradNorm) : grads;
    });
  }

  private clipPerHead(grads: tf.Tensor[], maxNorm: number): tf.Tensor[] {
    const sumSquares = grads.map((g) => g.square().reshape([g.shape[0]!, g.shape[1]!, -1]).sum(-1)).reduce((a, b) => a.add(b));
    const scale = tf.minimum(sumSquares.add(1e-12).rsqrt().mul(maxNorm), 1); // [B, H]
    return grads.map((g) => g.mul(scale.reshape([...scale.shape, ...Array<number>(g.rank - 2).fill(1)])));
  }

  /** sigmoid(linear(summary)) per head, shaped to broadcast over [B, H, a, b] weights. */
  private perHeadGate(linear: Linear, summary: tf.Tensor): tf.Tensor {
    return linear.forward(summary).sigmoid().reshape([summary.shape[0]!, this.heads, 1, 1]);
  }

  private headsOf(x: tf.Tensor, normalize: boolean): tf.Tensor {
    const heads = splitHeads(x, this.heads);
    return normalize ? heads.div(heads.square().sum(-1, true).add(1e-6).sqrt()) : heads;
  }
}

function sliceRows(rows: MemoryRows, start: number, size: number): MemoryRows {
  const slice = (t: tf.Tensor) => t.slice([0, start, 0], [-1, size, -1]);
  return { inputs: slice(rows.inputs), keys: slice(rows.keys), values: slice(rows.values) };
}

function concatRows(pieces: MemoryRows[]): MemoryRows {
  return {
    inputs: tf.concat(pieces.map((p) => p.inputs), 1),
    keys: tf.concat(pieces.map((p) => p.keys), 1),
    values: tf.concat(pieces.map((p) => p.values), 1),
  };
}
