/**
 * The neural long-term memory of Titans ("Learning to Memorize at Test Time", Behrouz et al. 2024,
 * section 3.1): a small network M whose weights are learned while the model reads.
 *
 * The sequence is read in chunks. Every token of chunk t reads M with the weights W_{t-1} in force
 * before the chunk, so reading is causal. Once the chunk is complete the memory stores it:
 *   surprise  g_t = d/dW sum_i theta_i * mean_d (M(k_i) - v_i)^2   (theta_i: a learned, per-token step size,
 *             zero below minStepSize)
 *   momentum  S_t = eta_t * S_{t-1} - c_t * g_t   (c_t: the factor clipping each head's g_t to maxGradNorm)
 *   forget    W_t = (1 - alpha_t) * W_{t-1} + S_t
 * (memory-update.ts: the last two steps, each a kernel where the backend has one.)
 * With neuralMemoryBatchSize b chunks, the surprises of a batch are all taken at the weights from the
 * batch's start (the paper's parallel form, section 3.2, and the reference implementation's): within
 * a batch no surprise feeds on the one before it. Every chunk still reads the weights that the chunks
 * before it left. A row of the batch may start afresh before a given chunk: back to the initial
 * weights, momentum zero (neuralMemResetAtImages, at the segment of an image).
 * Options of the reference implementation: the memory network wrapped in a residual norm
 * (memory-networks.ts ResidualNorm), each update orthogonalised by Newton-Schulz iterations
 * (spectralNormSurprises, after the Muon optimiser), and the surprise of a later memory layer taken
 * at its weights plus a learned share of the layer before's (neuralMemWeightResidual).
 * With convKernel K > 0, queries, keys and values each pass a causal depthwise convolution of K rows
 * after their projection (section 4.4), so that a key can hold the tokens just before its own: what
 * a later query recalls by is the context that preceded a value. In MAC the rows include the
 * long-term memory tokens before every segment; with `memoryTokens` given, a text row's convolution
 * passes over them and reaches back over text alone, so that a key that spans a segment boundary
 * holds the same text as one inside a segment.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { NeuralMemoryOptions } from './config.ts';
import { CausalConv, Linear, broadcast, kernelOr, l2Normalize, RMSNorm, mergeHeads, splitHeads, textRowsOf, tidyObject, withTextRows, type TokenLayout } from './layers.ts';
import { MEMORY_READ_KERNEL, MEMORY_READ_MAX_WIDTH, type MemoryNetwork } from './memory-networks.ts';
import { clipFactor, forgetStep, momentumStep } from './memory-update.ts';
import { Module, normalInit } from './module.ts';
import type { Random } from './random.ts';

export interface MemoryState {
  /** W_{t-1}, one tensor per memory weight: [B, H, ...]. */
  weights: tf.Tensor[];
  /** The weights at the start of the current batch, where its surprises are taken. */
  batchStart: tf.Tensor[];
  /** Chunks of the current batch stored so far. */
  chunksInBatch: number;
  /** S_{t-1}, shaped like the weights. */
  momentum: tf.Tensor[];
  /** Rows of the chunk not yet complete, in pieces; stored when it completes. */
  pending: MemoryRows[];
  /** Where the convolutions of the next rows reach back to. */
  convolution: ConvolutionState;
}

export interface ConvolutionState {
  /** The last K - 1 normalised inputs; null without convolutions. */
  recent: tf.Tensor | null;
  /** The last K - 1 normalised text rows, which a text row reaches back to past memory tokens; null unless the layout is given. */
  recentText: tf.Tensor | null;
  /** Rows read so far. */
  position: number;
}

/**
 * Rows as the memory stores them: normalised inputs [B, n, D], from which the store takes its step
 * sizes and gates; and their queries, keys and values as projected, [B, n, 3 * H * dh], kept whole
 * until their chunk is stored, so that a decoding step takes out its queries alone. A step's rows
 * pay for their step sizes only when their chunk is stored: one product for the chunk, not one a row.
 */
export interface MemoryRows {
  inputs: tf.Tensor;
  projected: tf.Tensor;
}

/**
 * A kernel that takes one part of projected rows [B, n, 3 H dh] as heads [B, H, n, dh] in one launch,
 * L2-normalised where asked, for a backend that registers one (webgpu): attrs `part` (its place in
 * PROJECTED_PARTS), `heads` and `normalize` (eps 1e-6). Written out it is a slice, a transpose and
 * the norm. It has no gradient: only a decoding's rows take it (NeuralMemory.headsOfPart).
 */
export const PROJECTED_HEADS_KERNEL = 'TitansProjectedHeads';

/** The parts of projected rows, in the order the projection writes them. */
export const PROJECTED_PARTS = ['queries', 'keys', 'values'] as const;
export type ProjectedPart = (typeof PROJECTED_PARTS)[number];

/** One part of projected rows [B, n, 3 H dh]: [B, n, H dh]. */
export function projectedPart(projected: tf.Tensor, part: ProjectedPart): tf.Tensor {
  const inner = projected.shape[2]! / 3;
  return projected.slice([0, 0, PROJECTED_PARTS.indexOf(part) * inner], [-1, -1, inner]);
}

export interface NeuralMemorySettings {
  dim: number;
  chunkSize: number;
  batchSize: number;
  options: NeuralMemoryOptions;
  network: MemoryNetwork;
  /** Mixes the memory layer before's weights into this one's surprises (neuralMemWeightResidual). */
  weightResidual: boolean;
  /** Where MAC's long-term memory tokens sit among the rows, for text rows' convolutions to pass over (neuralMemConvSkipsMemTokens). */
  memoryTokens?: TokenLayout;
}

/** What a read of rows returns: the memory's answer, the state after, and the weights each completed chunk read. */
export interface MemoryRead {
  /** The memory's answer for each row, [B, n, D], plus the residual where the read was given one. */
  retrieved: tf.Tensor3D;
  state: MemoryState;
  /** For each chunk completed by these rows, in order, the weights it read (W_{t-1}). */
  chunkWeights: tf.Tensor[][];
  /** These rows normalised, [B, n, D]: training prices their step sizes (updateRate). */
  inputs: tf.Tensor;
  /** For each chunk completed by these rows, in order, the share of the weights it forgot, alpha [B, H, 1, 1]. */
  forgetting: tf.Tensor[];
}

export class NeuralMemory extends Module {
  readonly norm: RMSNorm;
  /** Queries, keys and values in one product, [D, 3 * H * dh]; checkpoints keep toQueries, toKeys, toValues. */
  readonly toQKV: Linear;
  readonly toStepSize: Linear;
  readonly toMomentum: Linear;
  readonly toForget: Linear;
  readonly toOutput: Linear;
  readonly toWeightResidualMix?: Linear;
  /** The queries', keys' and values' convolutions in one; checkpoints keep queryConv, keyConv, valueConv. */
  readonly qkvConv?: CausalConv;
  readonly initialWeights: tf.Variable[];
  private readonly heads: number;
  private readonly dimHead: number;

  constructor(
    random: Random,
    readonly settings: NeuralMemorySettings,
  ) {
    super();
    const { dim, options, network } = settings;
    this.heads = options.heads;
    this.dimHead = options.dimHead;
    const inner = this.heads * this.dimHead;
    this.norm = this.child('norm', new RMSNorm(dim));
    this.toQKV = this.child('toQKV', new Linear(random, dim, 3 * inner, { bias: false, blocks: 3 }));
    this.storeAsParts('toQKV.weight', ['toQueries.weight', 'toKeys.weight', 'toValues.weight']);
    this.toStepSize = this.child('toStepSize', new Linear(random, dim, this.heads));
    this.toMomentum = this.child('toMomentum', new Linear(random, dim, this.heads));
    this.toForget = this.child('toForget', new Linear(random, dim, this.heads, { biasInit: options.initDecayBias }));
    this.toOutput = this.child('toOutput', new Linear(random, inner, dim, { bias: false }));
    if (settings.weightResidual) this.toWeightResidualMix = this.child('toWeightResidualMix', new Linear(random, dim, this.heads));
    if (options.convKernel > 0) {
      this.qkvConv = this.child('qkvConv', new CausalConv(random, options.convKernel, 3 * inner, 3));
      this.storeAsParts('qkvConv.weight', ['queryConv.weight', 'keyConv.weight', 'valueConv.weight']);
    }
    this.initialWeights = network.weightSpecs(this.dimHead).map(({ shape, std }, i) =>
      this.param(`initialWeights.${i}`, std > 0 ? normalInit(random, [this.heads, ...shape], std) : tf.zeros([this.heads, ...shape])),
    );
  }

  initialState(batch: number): MemoryState {
    return tidyObject(() => {
      const { convKernel } = this.settings.options;
      // Zero rows before the start: the convolutions are zero-padded.
      const zeros = () => (convKernel > 0 ? tf.zeros([batch, convKernel - 1, this.settings.dim]) : null);
      const weights = this.initialWeights.map((w) => broadcast(w.expandDims(0), [batch, ...w.shape]));
      return {
        weights,
        batchStart: weights,
        chunksInBatch: 0,
        momentum: this.initialWeights.map((w) => tf.zeros([batch, ...w.shape])),
        pending: [],
        convolution: { recent: zeros(), recentText: this.settings.memoryTokens ? zeros() : null, position: 0 },
      };
    });
  }

  /**
   * Reads the memory for every row of x ([B, n, D]) and stores each chunk of rows as it completes.
   * `earlierChunkWeights`: with a weight residual, the chunkWeights of the memory layer before, read
   * from the same rows. `freshChunks`: for each row of the batch, the chunks (counted from the
   * sequence's start) before which the memory returns to its initial state; each must start a batch.
   * `decoding`: the rows of a cached decoding, which nothing differentiates; `residual`: added to
   * what they retrieve (retrieve). The given state is left as it was.
   */
  forward(
    x: tf.Tensor3D, state: MemoryState,
    { earlierChunkWeights, freshChunks, decoding = false, residual }: { earlierChunkWeights?: tf.Tensor[][]; freshChunks?: number[][]; decoding?: boolean; residual?: tf.Tensor3D } = {},
  ): MemoryRead {
    const normalized = this.norm.forward(x) as tf.Tensor3D;
    const { rows: all, convolution } = this.project(normalized, state.convolution);
    const { chunkSize, batchSize } = this.settings;
    const rows = normalized.shape[1];
    const reads: tf.Tensor[] = [];
    const chunkWeights: tf.Tensor[][] = [];
    const forgetting: tf.Tensor[] = [];
    let { weights, batchStart, chunksInBatch, momentum, pending } = state;
    const pendingRows = pending.reduce((sum, p) => sum + p.inputs.shape[1]!, 0);
    const pieces = splitRows(all, piecesOf(rows, pendingRows, chunkSize));
    let offset = 0;
    for (const piece of pieces) {
      const have = pending.reduce((sum, p) => sum + p.inputs.shape[1]!, 0);
      const take = piece.inputs.shape[1]!;
      const fresh = have === 0 && freshChunks ? this.freshRows(freshChunks, (state.convolution.position + offset) / chunkSize) : null;
      if (fresh) {
        const kept = tf.sub(1, fresh);
        weights = weights.map((w, i) => w.mul(kept).add(this.initialWeights[i]!.expandDims(0).mul(fresh)));
        momentum = momentum.map((s) => s.mul(kept));
        batchStart = weights;
      }
      const whole = take === rows;
      // A read of every row adds the residual in its output product; the reads of pieces, once joined.
      reads.push(this.retrieve(piece.projected, weights, { decoding, residual: whole ? residual : undefined }));
      // Pieces are joined only when the chunk completes: a decoding step adds one row at a time.
      pending = [...pending, piece];
      if (have + take === chunkSize) {
        const chunk = pending.length === 1 ? pending[0]! : concatRows(pending);
        const surpriseAt = this.toWeightResidualMix
          ? this.withWeightResidual(batchStart, earlierChunkWeights![chunkWeights.length]!, chunk)
          : batchStart;
        chunkWeights.push(weights);
        const stored = this.store(chunk, weights, momentum, { surpriseAt, decoding });
        ({ weights, momentum } = stored);
        forgetting.push(stored.forgetting);
        pending = [];
        chunksInBatch = (chunksInBatch + 1) % (batchSize / chunkSize);
        if (chunksInBatch === 0) batchStart = weights;
      }
      offset += take;
    }
    const joined = reads.length === 1 ? reads[0]! : tf.concat(reads, 1);
    const retrieved = (reads.length > 1 && residual ? joined.add(residual) : joined) as tf.Tensor3D;
    return { retrieved, state: { weights, batchStart, chunksInBatch, momentum, pending, convolution }, chunkWeights, inputs: normalized, forgetting };
  }

  /** 1 for each row of the batch whose memory starts afresh before `chunk`, 0 for the others, [B, 1, 1, 1]; null when none does. */
  private freshRows(freshChunks: number[][], chunk: number): tf.Tensor | null {
    const rows = freshChunks.map((chunks) => (chunks.includes(chunk) ? 1 : 0));
    return rows.includes(1) ? tf.tensor4d(rows, [rows.length, 1, 1, 1]) : null;
  }

  /**
   * How much a read's rows changed the memory: the mean of their step sizes as a fraction of maxLr,
   * plus the mean share of its weights forgotten at each chunk they completed. Training prices it
   * (memoryUpdateCost); inference never asks, so reading pays nothing for it.
   */
  updateRate({ inputs, forgetting }: MemoryRead): tf.Scalar {
    return tf.tidy(() => {
      const writeRate = this.stepShares(inputs).mean();
      return (forgetting.length > 0 ? writeRate.add(tf.stack(forgetting).mean()) : writeRate) as tf.Scalar;
    });
  }

  /**
   * Queries, keys and values of normalised rows [B, n, D] (one product, then one convolution when
   * there is one, with the rows before them); and the convolution state that follows these rows.
   */
  project(normalized: tf.Tensor, convolution: ConvolutionState): { rows: MemoryRows; convolution: ConvolutionState } {
    return tidyObject(() => {
      const { recent, recentText, position } = convolution;
      const context = recent ? tf.concat([recent, normalized], 1) : normalized;
      const projected = this.toQKV.forward(context);
      let convolved = this.qkvConv ? this.qkvConv.forward(projected) : projected;
      let nextText = recentText;
      const layout = this.settings.memoryTokens;
      const text = recentText && layout && textRowsOf(normalized, position, layout);
      if (text) {
        // Text rows convolve again over text alone; memory tokens keep their convolution over every row.
        const fresh = projected.slice([0, recentText.shape[1]!, 0], [-1, -1, -1]);
        const textProjected = tf.concat([this.toQKV.forward(recentText), textRowsOf(fresh, position, layout!)!], 1);
        convolved = withTextRows(convolved, this.qkvConv!.forward(textProjected), position, layout!);
        nextText = lastRows(tf.concat([recentText, text], 1), recentText.shape[1]!);
      }
      return {
        rows: { inputs: normalized, projected: convolved },
        convolution: { recent: recent && lastRows(context, recent.shape[1]!), recentText: nextText, position: position + normalized.shape[1]! },
      };
    });
  }

  /**
   * The step size theta of each row's surprise per head as a share of maxLr, from normalised rows
   * [B, n, D]: [B, n, H] (theta = maxLr * share).
   */
  stepShares(normalized: tf.Tensor): tf.Tensor {
    return tf.tidy(() => {
      const { minStepSize } = this.settings.options;
      const gate = this.toStepSize.gate(normalized);
      return minStepSize > 0 ? gate.sub(minStepSize).relu().div(1 - minStepSize) : gate;
    });
  }

  /**
   * M_W(q) for the queries of projected rows [B, n, 3 * H * dh] -> [B, n, D]. `decoding`: rows that
   * nothing differentiates, which the memory network reads in one kernel without a gradient where
   * the network and the backend have one (MEMORY_READ_KERNEL): most of a decoded token's memory work.
   * `residual` [B, n, D]: added by the output product's kernel where the backend has one.
   */
  retrieve(projected: tf.Tensor, weights: tf.Tensor[], { decoding = false, residual }: { decoding?: boolean; residual?: tf.Tensor } = {}): tf.Tensor {
    return tf.tidy(() => {
      const { network, options } = this.settings;
      const writtenOut = () => network.forward(weights, this.headsOfPart(projected, 'queries', options.qkNorm, decoding));
      const attrs = decoding && weights.every((w) => w.shape.at(-1)! <= MEMORY_READ_MAX_WIDTH) ? network.readKernelAttrs : undefined;
      const heads = attrs // [B, H, n, dh]
        ? kernelOr(MEMORY_READ_KERNEL, { projected, ...namedWeights(weights) }, { ...attrs, heads: this.heads, normalizeQueries: options.qkNorm }, writtenOut)
        : writtenOut();
      return this.toOutput.forward(mergeHeads(heads), residual);
    });
  }

  /**
   * Stores one complete chunk of rows, [B, chunkSize, ...]: the surprise is taken at `surpriseAt`
   * (the batch's starting weights) and clipped per head to maxGradNorm; momentum and forgetting act
   * on the weights in force; `decoding` as for forward. Also returns the share forgotten, alpha
   * [B, H, 1, 1].
   */
  store(
    chunk: MemoryRows, weights: tf.Tensor[], momentum: tf.Tensor[], { surpriseAt = weights, decoding = false }: { surpriseAt?: tf.Tensor[]; decoding?: boolean } = {},
  ): { weights: tf.Tensor[]; momentum: tf.Tensor[]; forgetting: tf.Tensor } {
    return tidyObject(() => {
      const { options } = this.settings;
      const g = this.surprise(chunk, surpriseAt, decoding);
      const clip = options.maxGradNorm > 0 ? clipFactor(g, options.maxGradNorm) : undefined;
      const summary = chunk.inputs.mean(1); // [B, D]
      const eta = options.momentum ? this.perHeadGate(this.toMomentum, summary) : undefined;
      const nextMomentum = g.map((gi, i) => momentumStep(gi, { clip, eta, momentum: eta && momentum[i] }));
      const update = options.spectralNormSurprises ? nextMomentum.map(orthogonalize) : nextMomentum;
      const forgetting = this.perHeadGate(this.toForget, summary);
      return { weights: weights.map((w, i) => forgetStep(w, forgetting, update[i]!)), momentum: nextMomentum, forgetting };
    });
  }

  /**
   * g = d/dW sum_i theta_i mean_d (M_W(k_i) - v_i)^2 over one chunk of rows, in closed form;
   * `decoding` as for forward.
   */
  surprise(chunk: MemoryRows, weights: tf.Tensor[], decoding = false): tf.Tensor[] {
    return tf.tidy(() => {
      const { network, options } = this.settings;
      const keys = this.headsOfPart(chunk.projected, 'keys', options.qkNorm, decoding); // [B, H, c, dh]
      const values = this.headsOfPart(chunk.projected, 'values', false, decoding);
      const theta = this.stepShares(chunk.inputs).mul(options.maxLr).transpose([0, 2, 1]).expandDims(-1); // [B, H, c, 1]
      return network.surprise(weights, keys, values, theta, decoding);
    });
  }

  /** W + mix * W_earlier, mix = sigmoid(linear(mean of the chunk)) per head (the reference's learned weight residual). */
  private withWeightResidual(weights: tf.Tensor[], earlier: tf.Tensor[], chunk: MemoryRows): tf.Tensor[] {
    const mix = this.perHeadGate(this.toWeightResidualMix!, chunk.inputs.mean(1));
    return weights.map((w, i) => w.add(earlier[i]!.mul(mix)));
  }

  /** sigmoid(linear(summary)) per head, shaped to broadcast over [B, H, a, b] weights. */
  private perHeadGate(linear: Linear, summary: tf.Tensor): tf.Tensor {
    return linear.gate(summary).reshape([summary.shape[0]!, this.heads, 1, 1]);
  }

  /**
   * One part of projected rows [B, n, 3 H dh] as heads [B, H, n, dh], L2-normalised where asked;
   * for a decoding's rows, in one kernel where the backend has it.
   */
  private headsOfPart(projected: tf.Tensor, part: ProjectedPart, normalize: boolean, decoding: boolean): tf.Tensor {
    const writtenOut = () => {
      const heads = splitHeads(projectedPart(projected, part), this.heads);
      return normalize ? l2Normalize(heads, 1e-6) : heads;
    };
    const attrs = { part: PROJECTED_PARTS.indexOf(part), heads: this.heads, normalize };
    return decoding ? kernelOr(PROJECTED_HEADS_KERNEL, { projected }, attrs, writtenOut) : writtenOut();
  }
}

/**
 * The nearest semi-orthogonal matrix to each [.., a, b] matrix, by five Newton-Schulz iterations with
 * the Muon optimiser's coefficients (Jordan et al. 2024), as the reference implementation's
 * spectral-norm surprises: every direction of the update gets the same strength. Vectors ([.., 1, d],
 * the residual norm's gain) pass unchanged.
 */
export function orthogonalize(update: tf.Tensor): tf.Tensor {
  const [rows, cols] = update.shape.slice(-2) as [number, number];
  if (rows === 1 || cols === 1) return update;
  return tf.tidy(() => {
    const wide = rows > cols ? transposeLast(update) : update;
    const norm = wide.square().sum([-2, -1], true).sqrt();
    let x = wide.div(tf.maximum(norm, 1e-7));
    for (let i = 0; i < 5; i++) {
      const a = tf.matMul(x, x, false, true);
      const b = a.mul(-4.775).add(tf.matMul(a, a).mul(2.0315));
      x = x.mul(3.4445).add(tf.matMul(b, x));
    }
    return rows > cols ? transposeLast(x) : x;
  });
}

function transposeLast(t: tf.Tensor): tf.Tensor {
  const axes = t.shape.map((_, i) => i);
  axes.splice(-2, 2, t.rank - 1, t.rank - 2);
  return t.transpose(axes);
}

/** The last `count` rows of x [B, n, C]. */
function lastRows(x: tf.Tensor, count: number): tf.Tensor {
  return x.slice([0, x.shape[1]! - count, 0], [-1, count, -1]);
}

/** How `rows` new rows fall into chunks of `chunkSize` after `pendingRows` rows already waiting: the sizes of the pieces, in order. */
function piecesOf(rows: number, pendingRows: number, chunkSize: number): number[] {
  const sizes: number[] = [];
  for (let have = pendingRows, offset = 0; offset < rows; have = 0) {
    const take = Math.min(chunkSize - have, rows - offset);
    sizes.push(take);
    offset += take;
  }
  return sizes;
}

/**
 * Rows cut into pieces of the given sizes, in one split: its gradient is one concat, where a slice a
 * piece would add a copy of all the rows, zero-padded, for every piece.
 */
function splitRows(rows: MemoryRows, sizes: number[]): MemoryRows[] {
  if (sizes.length < 2) return sizes.map(() => rows);
  const [inputs, projected] = [rows.inputs, rows.projected].map((t) => tf.split(t, sizes, 1));
  return sizes.map((_, i) => ({ inputs: inputs![i]!, projected: projected![i]! }));
}

function concatRows(pieces: MemoryRows[]): MemoryRows {
  const join = (part: (rows: MemoryRows) => tf.Tensor) => tf.concat(pieces.map(part), 1);
  return { inputs: join((p) => p.inputs), projected: join((p) => p.projected) };
}

/** A memory's weights as MEMORY_READ_KERNEL's inputs: weight0, weight1, .. */
function namedWeights(weights: tf.Tensor[]): tf.NamedTensorMap {
  return Object.fromEntries(weights.map((w, i) => [`weight${i}`, w]));
}

/**
 * The rows of `a`, then those of `b`: two states at the same phase (as many rows of their chunk
 * pending, the same place in the memory's batch), as a decoding cache joins rows that read another
 * prompt. The position is a's, which the joined rows' chunks are then counted from.
 */
export function joinMemoryStates(a: MemoryState, b: MemoryState): MemoryState {
  return tidyObject(() => {
    const rows = (x: tf.Tensor, y: tf.Tensor) => tf.concat([x, y], 0);
    const weights = a.weights.map((w, i) => rows(w, b.weights[i]!));
    // Weights that are the batch's start on both sides stay one tensor, as a step leaves them.
    const startsBatch = (s: MemoryState) => s.batchStart.every((w, i) => w === s.weights[i]);
    const pending = (s: MemoryState) => (s.pending.length === 1 ? s.pending[0]! : concatRows(s.pending));
    const { recent, recentText } = a.convolution;
    return {
      weights,
      batchStart: startsBatch(a) && startsBatch(b) ? weights : a.batchStart.map((w, i) => rows(w, b.batchStart[i]!)),
      chunksInBatch: a.chunksInBatch,
      momentum: a.momentum.map((s, i) => rows(s, b.momentum[i]!)),
      pending: a.pending.length === 0 ? [] : [joinedRows(pending(a), pending(b))],
      convolution: {
        recent: recent && rows(recent, b.convolution.recent!),
        recentText: recentText && rows(recentText, b.convolution.recentText!),
        position: a.convolution.position,
      },
    };
  });
}

function joinedRows(a: MemoryRows, b: MemoryRows): MemoryRows {
  return { inputs: tf.concat([a.inputs, b.inputs], 0), projected: tf.concat([a.projected, b.projected], 0) };
}

/** The state with each of its tensors replaced by `f` of it: a decoding cache frees, or keeps some rows of, all of them. */
export function mapMemoryState(state: MemoryState, f: (t: tf.Tensor) => tf.Tensor): MemoryState {
  const { recent, recentText } = state.convolution;
  return {
    ...state,
    weights: state.weights.map(f),
    batchStart: state.batchStart.map(f),
    momentum: state.momentum.map(f),
    pending: state.pending.map((rows) => ({ inputs: f(rows.inputs), projected: f(rows.projected) })),
    convolution: { ...state.convolution, recent: recent && f(recent), recentText: recentText && f(recentText) },
  };
}
