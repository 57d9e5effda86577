/**
 * The Memory-as-Context transformer of Titans (section 4.1) over bytes.
 *
 * Byte embedding -> depth blocks -> final norm -> logits. At the start of every segment of
 * `segmentLen` tokens, `numLongtermMemTokens` learned tokens are inserted: they read the neural
 * memory like every token and are attended to by the segment (memory as context), and they are
 * removed before the logits. Each block: neural memory read/store, segmented attention,
 * feed-forward, each pre-norm and residual.
 */
import * as tf from '@tensorflow/tfjs-core';
import { SegmentedAttention, type AttentionCache, type AttentionOutput, type AttentionStep, type Rotation } from './attention.ts';
import type { MultimodalMACConfig } from './config.ts';
import { FeedForward, Linear, RMSNorm, broadcast, oneHotFloat, textRowsOf, tidyObject, type TokenLayout } from './layers.ts';
import { memoryNetwork } from './memory-networks.ts';
import { Module, normalInit } from './module.ts';
import { NeuralMemory, joinMemoryStates, mapMemoryState, type MemoryRead, type MemoryState } from './neural-memory.ts';
import type { Random } from './random.ts';

/**
 * Whole segments that a step reads in one pass. Their attention and feed-forward run as one product
 * each rather than one a segment; but the memory's weights after each of their chunks live until
 * the pass ends (about 12 MB a segment in the original's configuration), so a pass is bounded.
 */
export const SEGMENTS_PER_PASS = 4;

interface BlockCache {
  attention: AttentionCache;
  memory: MemoryState | null;
}

export class MACBlock extends Module {
  readonly memory?: NeuralMemory;
  readonly attentionNorm: RMSNorm;
  readonly attention: SegmentedAttention;
  readonly feedForwardNorm: RMSNorm;
  readonly feedForward: FeedForward;

  /**
   * memory: none, the first memory layer, or a later one (which a weight residual links to the one
   * before); first: whether this is the first block, whose attention values later blocks may mix in.
   */
  constructor(random: Random, config: MultimodalMACConfig, memory: 'none' | 'first' | 'later', first: boolean) {
    super();
    const dim = config.textDim;
    if (memory !== 'none') {
      const m = config.neuralMemoryKwargs;
      this.memory = this.child('memory', new NeuralMemory(random, {
        dim,
        chunkSize: config.neuralMemorySegmentLen,
        batchSize: config.neuralMemoryBatchSize,
        options: m,
        network: memoryNetwork(config.neuralMemoryModel, m.depth, m.expansionFactor, m.memModelNormAddResidual),
        weightResidual: config.neuralMemWeightResidual && memory === 'later',
        memoryTokens: config.neuralMemConvSkipsMemTokens ? tokenLayout(config) : undefined,
      }));
    }
    this.attentionNorm = this.child('attentionNorm', new RMSNorm(dim));
    this.attention = this.child('attention', new SegmentedAttention(random, {
      dim,
      heads: config.heads,
      dimHead: config.dimHead,
      window: config.segmentLen + config.numLongtermMemTokens,
      numPersistMemTokens: config.numPersistMemTokens,
      sliding: config.slidingWindowAttn,
      acceptValueResidual: config.acceptValueResidual && !first,
      sharesValues: config.acceptValueResidual && first,
    }));
    this.feedForwardNorm = this.child('feedForwardNorm', new RMSNorm(dim));
    this.feedForward = this.child('feedForward', new FeedForward(random, dim, Math.round(config.ffMult * dim)));
  }

  /**
   * The whole (expanded) sequence from its start, x [B, T, D]. `links` carries what later blocks take
   * from earlier ones over the same rows: the weights each memory chunk read (weight residual) and
   * the first block's attention values (value residual). `freshChunks`: for each row of the batch,
   * the memory chunks before which its memory starts afresh (NeuralMemory.forward).
   */
  forward(x: tf.Tensor3D, gateWithMemory: boolean, links: LayerLinks, freshChunks?: number[][]): BlockOutput {
    return this.run(x, gateWithMemory, links, null, freshChunks, (h, residual) =>
      this.attention.forward(this.attentionNorm.forward(h) as tf.Tensor3D, { firstValues: links.firstValues, residual }));
  }

  /** Rows x [B, n, D] that continue the sequence `cache` holds (as SegmentedAttention.step takes them); the cache that follows them. */
  step(x: tf.Tensor3D, cache: BlockCache, gateWithMemory: boolean, links: LayerLinks, freshChunks?: number[][]): BlockOutput & { cache: BlockCache } {
    let step: AttentionStep | undefined;
    const out = this.run(x, gateWithMemory, links, cache.memory, freshChunks, (h, residual) =>
      (step = this.attention.step(h, cache.attention, { firstValues: links.firstValues, residual, sharedRotation: links.rotation, norm: this.attentionNorm })));
    return { ...out, links: { ...out.links, rotation: step!.rotation }, cache: { attention: step!.cache, memory: out.read?.state ?? null } };
  }

  /**
   * Memory read and store, attention (as `attend` runs it on the residual stream h, its pre-norm
   * first, adding `residual` to its output), feed-forward; each pre-norm and residual. The memory's
   * and attention's residual adds are given to them, so that their output products add them, and
   * the pre-norms of a step's attention and of the feed-forward go into their first products (a
   * launch fewer each on a GPU).
   */
  private run(
    x: tf.Tensor3D, gateWithMemory: boolean, links: LayerLinks, memory: MemoryState | null, freshChunks: number[][] | undefined,
    attend: (h: tf.Tensor3D, residual?: tf.Tensor3D) => AttentionOutput,
  ): BlockOutput {
    let h: tf.Tensor3D = x;
    let gate: tf.Tensor | null = null;
    let read: MemoryRead | null = null;
    if (this.memory) {
      // A state given is a decoding cache's (step), and nothing differentiates a cached decoding.
      const decoding = memory !== null;
      const residual = gateWithMemory ? undefined : x;
      read = this.memory.forward(x, memory ?? this.memory.initialState(x.shape[0]), { earlierChunkWeights: links.chunkWeights, freshChunks, decoding, residual });
      if (gateWithMemory) gate = read.retrieved.sigmoid();
      else h = read.retrieved;
    }
    // Without a gate, attention's output product adds the residual stream h itself.
    const attention = attend(h, gate ? undefined : h);
    h = gate ? h.add(attention.output.mul(gate)) : attention.output;
    h = h.add(this.feedForward.afterNorm(this.feedForwardNorm, h));
    return {
      output: h,
      read,
      links: { chunkWeights: read?.chunkWeights ?? links.chunkWeights, firstValues: links.firstValues ?? attention.values },
    };
  }
}

/** What a block hands to the blocks after it, for the same rows. */
export interface LayerLinks {
  chunkWeights?: tf.Tensor[][];
  firstValues?: tf.Tensor4D;
  /** In a step, the rows' rotary embedding, the same in every layer: made once, not once a layer. */
  rotation?: Rotation;
}

interface BlockOutput {
  output: tf.Tensor3D;
  /** The memory's read of these rows and the state after it; null without a memory. */
  read: MemoryRead | null;
  links: LayerLinks;
}

/** A whole sequence's logits [B, T, V], and the mean update rate of its memory layers (null without one, or unasked). */
export interface TextOutput {
  logits: tf.Tensor3D;
  memoryUpdateRate: tf.Scalar | null;
}

/**
 * What decoding carries from one step to the next: every layer's window and memory, the length so
 * far, and the memory chunks of each row before which its memory starts afresh.
 */
export class DecodingCache {
  constructor(
    public layers: BlockCache[],
    public freshChunks: number[][] | undefined,
    /** Rows of the batch. */
    public rows: number,
    private readonly phase: CachePhase,
    public length = 0,
  ) {}

  /** Takes the state that follows a step, disposing what only the old state held. */
  advance(layers: BlockCache[], added: number): void {
    const kept = new Set(layers.flatMap(tensorsOf).map((t) => t.id));
    for (const t of this.layers.flatMap(tensorsOf)) if (!kept.has(t.id)) t.dispose();
    this.layers = layers;
    this.length += added;
  }

  /** Keeps the rows `rows` of the batch, in that order, and frees the others: generations that ended leave a batch. */
  keepRows(rows: number[]): void {
    const indices = tf.tensor1d(rows, 'int32');
    // A tensor that several places hold (a memory's weights at the start of its batch) stays one.
    const gathered = new Map<number, tf.Tensor>();
    const keep = (t: tf.Tensor) => {
      let kept = gathered.get(t.id);
      if (!kept) gathered.set(t.id, (kept = tf.gather(t, indices, 0)));
      return kept;
    };
    const layers = this.layers.map((layer) => mapBlockCache(layer, keep));
    indices.dispose();
    this.dispose();
    this.layers = layers;
    const fresh = this.freshChunks;
    this.freshChunks = fresh && rows.map((row) => fresh[row]!);
    this.rows = rows.length;
  }

  /** Tokens after which the cache's position-dependent state repeats (stepsUntilJoin); null where it never does. */
  get period(): number | null {
    return this.phase.period;
  }

  /**
   * Steps this cache's rows take before rows that have read `length` tokens can join them (join):
   * 0 when they can now, Infinity when they never can. Everything in a cache that depends on the
   * position (the rows of the attention window, the rows of the memory's chunk still pending, the
   * chunk's place in the memory's batch) comes back every `period` tokens; sliding windows rotate
   * keys by their absolute position, so there the lengths must be equal.
   */
  stepsUntilJoin(length: number): number {
    const { period } = this.phase;
    if (period === null) return length >= this.length ? length - this.length : Infinity;
    return (((length - this.length) % period) + period) % period;
  }

  /**
   * Adds the rows of `other` after this cache's own, once stepsUntilJoin is 0 for its length: requests
   * whose prompts were read apart decode together from here. `other` is left empty. The joined rows'
   * chunks are counted from this cache's position from now on.
   */
  join(other: DecodingCache): void {
    if (this.stepsUntilJoin(other.length) !== 0) {
      throw new Error(`rows that have read ${other.length} tokens cannot join rows that have read ${this.length} (a period of ${this.phase.period})`);
    }
    // Made whole or not at all: a join that fails leaves both caches as they were, and no half-made layers.
    const layers = tidyObject(() => this.layers.map((layer, i) => joinBlockCaches(layer, other.layers[i]!, this.phase.persistRows)));
    const shift = (this.phase.expandedLength(this.length) - this.phase.expandedLength(other.length)) / this.phase.chunkSize;
    const fresh = (cache: DecodingCache, by: number) => cache.freshChunks?.map((chunks) => chunks.map((c) => c + by)) ?? Array.from({ length: cache.rows }, () => []);
    if (this.freshChunks || other.freshChunks) this.freshChunks = [...fresh(this, 0), ...fresh(other, shift)];
    this.dispose();
    other.dispose();
    this.layers = layers;
    this.rows += other.rows;
    other.rows = 0;
  }

  dispose(): void {
    for (const t of this.layers.flatMap(tensorsOf)) t.dispose();
    this.layers = [];
  }
}

/** How a decoding cache's positions repeat, for joining rows (DecodingCache.stepsUntilJoin). */
interface CachePhase {
  /** Tokens after which every position-dependent state repeats; null where none does. */
  period: number | null;
  /** Rows a memory chunk takes, among the expanded rows. */
  chunkSize: number;
  /** Tokens read -> rows read, long-term memory tokens included. */
  expandedLength: (length: number) => number;
  /** The persistent memory's key and value rows, first in every attention cache. */
  persistRows: number;
}

/**
 * The rows of two caches at the same position, one batch. A sliding window's cache keeps more of the
 * rows before its window where it read them in one piece than where it read them token by token;
 * only the last window - 1 are read again (model/attention.ts), which both hold, so the longer is
 * cut to the shorter's rows: its persistent ones and its latest.
 */
function joinBlockCaches(a: BlockCache, b: BlockCache, persist: number): BlockCache {
  const latest = (t: tf.Tensor4D, kept: number) =>
    t.shape[2] === kept ? t : (tf.concat([t.slice([0, 0, 0, 0], [-1, -1, persist, -1]), t.slice([0, 0, t.shape[2] - (kept - persist), 0], [-1, -1, -1, -1])], 2) as tf.Tensor4D);
  const rows = (x: tf.Tensor4D | null, y: tf.Tensor4D | null) => {
    if (!x) return x;
    const kept = Math.min(x.shape[2], y!.shape[2]);
    return tf.concat([latest(x, kept), latest(y!, kept)], 0) as tf.Tensor4D;
  };
  return {
    attention: { keys: rows(a.attention.keys, b.attention.keys), values: rows(a.attention.values, b.attention.values), position: a.attention.position },
    memory: a.memory && joinMemoryStates(a.memory, b.memory!),
  };
}

function mapBlockCache(cache: BlockCache, f: (t: tf.Tensor) => tf.Tensor): BlockCache {
  const { keys, values } = cache.attention;
  return {
    attention: { ...cache.attention, keys: keys && (f(keys) as tf.Tensor4D), values: values && (f(values) as tf.Tensor4D) },
    memory: cache.memory && mapMemoryState(cache.memory, f),
  };
}

function tensorsOf(cache: BlockCache): tf.Tensor[] {
  const tensors: tf.Tensor[] = [];
  mapBlockCache(cache, (t) => {
    if (!t.isDisposed) tensors.push(t);
    return t;
  });
  return tensors;
}

export class MemoryAsContextTransformer extends Module {
  readonly tokenEmbedding: tf.Variable; // [V, D]
  readonly longtermMemory?: tf.Variable; // [L, D]
  readonly layers: MACBlock[];
  readonly finalNorm: RMSNorm;
  readonly toLogits: Linear;

  constructor(
    random: Random,
    readonly config: MultimodalMACConfig,
  ) {
    super();
    const { numTokens, textDim, depth, numLongtermMemTokens } = config;
    this.tokenEmbedding = this.param('tokenEmbedding', normalInit(random, [numTokens, textDim], 0.02));
    if (numLongtermMemTokens > 0) this.longtermMemory = this.param('longtermMemory', normalInit(random, [numLongtermMemTokens, textDim], 0.02));
    const withMemory = new Set(config.neuralMemoryLayers);
    const first = Math.min(...config.neuralMemoryLayers);
    this.layers = Array.from({ length: depth }, (_, i) => this.child(`layers.${i}`,
      new MACBlock(random, config, !withMemory.has(i + 1) ? 'none' : i + 1 === first ? 'first' : 'later', i === 0)));
    this.finalNorm = this.child('finalNorm', new RMSNorm(textDim));
    this.toLogits = this.child('toLogits', new Linear(random, textDim, numTokens, { bias: false }));
  }

  /**
   * Token ids int32 [B, T] -> embeddings [B, T, D]. A one-hot product rather than a gather: the
   * gradient of gather needs UnsortedSegmentSum, which the WASM backend lacks. An id out of range
   * embeds as zeros: callers check ids (MultimodalMACNetwork.embed, generate).
   */
  embed(ids: tf.Tensor2D): tf.Tensor3D {
    if (ids.dtype !== 'int32') throw new TypeError(`token ids must be int32, got ${ids.dtype}`);
    return tf.tidy(() => {
      const [batch, length] = ids.shape;
      const oneHot = oneHotFloat(ids.reshape([-1]), this.config.numTokens);
      return oneHot.matMul(this.tokenEmbedding).reshape([batch, length, this.config.textDim]) as tf.Tensor3D;
    });
  }

  /**
   * Embeddings [B, T, D] of a whole sequence -> logits [B, T, V], and the memory's update rate when
   * asked for (training's price). `memoryResets`: for each row, the attention segments at whose start
   * every neural memory returns to its initial state (neuralMemResetAtImages).
   */
  forward(embeddings: tf.Tensor3D, { withUpdateRate = false, memoryResets }: { withUpdateRate?: boolean; memoryResets?: number[][] } = {}): TextOutput {
    return tidyObject(() => {
      let h = this.insertLongtermMemory(embeddings);
      let links: LayerLinks = {};
      const updateRates: tf.Scalar[] = [];
      const freshChunks = this.freshChunks(memoryResets);
      for (const layer of this.layers) {
        const out = layer.forward(h, this.config.neuralMemGateAttnOutput, links, freshChunks);
        ({ output: h, links } = out);
        if (withUpdateRate && out.read) updateRates.push(layer.memory!.updateRate(out.read));
      }
      const memoryUpdateRate = updateRates.length > 0 ? (tf.addN(updateRates).div(updateRates.length) as tf.Scalar) : null;
      return { logits: this.logits(this.removeLongtermMemory(h)), memoryUpdateRate };
    });
  }

  /** An empty cache for `batch` rows; `memoryResets` as in forward. */
  createCache(batch: number, memoryResets?: number[][]): DecodingCache {
    const layers = this.layers.map((layer) => ({
      attention: { keys: null, values: null, position: 0 },
      memory: layer.memory ? layer.memory.initialState(batch) : null,
    }));
    return new DecodingCache(layers, this.freshChunks(memoryResets), batch, this.cachePhase());
  }

  /**
   * The attention window and the memory's batch (a whole number of chunks) both start anew at a
   * multiple of their length among the expanded rows; so everything does after the least common
   * multiple of both, which is a whole number of segments.
   */
  private cachePhase(): CachePhase {
    const { segmentLen, numLongtermMemTokens, neuralMemorySegmentLen, neuralMemoryBatchSize, slidingWindowAttn, numPersistMemTokens } = this.config;
    const window = segmentLen + numLongtermMemTokens;
    const windows = leastCommonMultiple(window, neuralMemoryBatchSize) / window;
    return {
      period: slidingWindowAttn ? null : windows * segmentLen,
      chunkSize: neuralMemorySegmentLen,
      expandedLength: (length) => expandedLength(length, segmentLen, numLongtermMemTokens),
      persistRows: numPersistMemTokens,
    };
  }

  /** Attention segments -> the memory chunks that start them (a segment with its long-term memory tokens is a whole number of chunks). */
  private freshChunks(memoryResets: number[][] | undefined): number[][] | undefined {
    const { segmentLen, numLongtermMemTokens, neuralMemorySegmentLen } = this.config;
    const chunksPerSegment = (segmentLen + numLongtermMemTokens) / neuralMemorySegmentLen;
    return memoryResets?.map((segments) => segments.map((segment) => segment * chunksPerSegment));
  }

  /**
   * Continues the sequence held by `cache` with embeddings [B, n, D]: logits [B, n, V]. The cost of
   * a step does not grow with the length so far: the cache holds one window and the memory. Rows
   * that finish a segment begun earlier go first; the segments after them go SEGMENTS_PER_PASS at
   * a time, as forward reads a sequence, their long-term memory tokens inserted (a prompt's prefill).
   */
  step(embeddings: tf.Tensor3D, cache: DecodingCache): tf.Tensor3D {
    const { segmentLen } = this.config;
    const outputs: tf.Tensor[] = [];
    for (let offset = 0; offset < embeddings.shape[1]; ) {
      const inSegment = cache.length % segmentLen;
      const rest = embeddings.shape[1] - offset;
      const take = Math.min(inSegment === 0 ? SEGMENTS_PER_PASS * segmentLen : segmentLen - inSegment, rest);
      const result = tidyObject(() => {
        const rows = take === embeddings.shape[1] ? embeddings : embeddings.slice([0, offset, 0], [-1, take, -1]);
        let h = inSegment === 0 ? this.insertLongtermMemory(rows) : rows;
        let links: LayerLinks = {};
        // What a layer leaves besides its output, links and cache goes before the next layer runs.
        const layers = this.layers.map((layer, i) => {
          const out = tidyObject(() => {
            const { output, links: next, cache: after } = layer.step(h, cache.layers[i]!, this.config.neuralMemGateAttnOutput, links, cache.freshChunks);
            return { output, links: next, cache: after };
          });
          ({ output: h, links } = out);
          return out.cache;
        });
        return { logits: this.logits(inSegment === 0 ? this.removeLongtermMemory(h) : h), layers };
      });
      cache.advance(result.layers, take);
      outputs.push(result.logits);
      offset += take;
    }
    if (outputs.length === 1) return outputs[0] as tf.Tensor3D;
    const all = tf.concat(outputs, 1) as tf.Tensor3D;
    tf.dispose(outputs);
    return all;
  }

  private logits(h: tf.Tensor3D): tf.Tensor3D {
    return this.toLogits.forward(this.finalNorm.forward(h)) as tf.Tensor3D;
  }

  /** [B, T, D] -> [B, T', D]: L memory tokens before every segment of the sequence. */
  private insertLongtermMemory(x: tf.Tensor3D): tf.Tensor3D {
    const memory = this.longtermMemory;
    if (!memory) return x;
    const { segmentLen } = this.config;
    const [batch, length, dim] = x.shape;
    const segments = Math.ceil(length / segmentLen);
    // One segment (as a decoding step starts one) needs no padding, grouping or slicing.
    if (segments === 1) return tf.concat([broadcast(memory.expandDims(0), [batch, ...memory.shape]), x], 1) as tf.Tensor3D;
    const grouped = x.pad([[0, 0], [0, segments * segmentLen - length], [0, 0]]).reshape([batch, segments, segmentLen, dim]);
    const tokens = broadcast(memory.reshape([1, 1, ...memory.shape]), [batch, segments, ...memory.shape]);
    const window = segmentLen + memory.shape[0]!;
    const expanded = tf.concat([tokens, grouped], 2).reshape([batch, segments * window, dim]);
    return expanded.slice([0, 0, 0], [-1, expandedLength(length, segmentLen, memory.shape[0]!), -1]) as tf.Tensor3D;
  }

  /** The inverse of insertLongtermMemory: [B, T', D] -> [B, T, D]. */
  private removeLongtermMemory(h: tf.Tensor3D): tf.Tensor3D {
    const layout = tokenLayout(this.config);
    if (!layout) return h;
    // One segment's memory tokens are its first rows.
    if (h.shape[1] <= layout.every) return h.slice([0, layout.count, 0], [-1, -1, -1]);
    return textRowsOf(h, 0, layout) as tf.Tensor3D;
  }
}

/** Where the long-term memory tokens sit among the expanded rows; undefined without them. */
function tokenLayout({ segmentLen, numLongtermMemTokens }: MultimodalMACConfig): TokenLayout | undefined {
  return numLongtermMemTokens > 0 ? { every: segmentLen + numLongtermMemTokens, count: numLongtermMemTokens } : undefined;
}

function expandedLength(length: number, segmentLen: number, memoryTokens: number): number {
  const segments = Math.ceil(length / segmentLen);
  return length + segments * memoryTokens;
}

function leastCommonMultiple(a: number, b: number): number {
  let [x, y] = [a, b];
  while (y > 0) [x, y] = [y, x % y];
  return (a / x) * b;
}
