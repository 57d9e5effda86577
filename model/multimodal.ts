/**
 * The multimodal MAC: a vision encoder whose image features, projected to the text width, replace
 * the token embeddings at the image placeholder positions of a byte sequence read by the
 * Memory-as-Context transformer. Training and generation fuse images the same way, so a caption
 * depends on its image.
 */
import * as tf from '@tensorflow/tfjs-core';
import { resolveConfig, type ImageTokenPool, type MultimodalMACConfig, type MultimodalMACOptions } from './config.ts';
import { generate, generateBatch, type BatchEvent, type GenerateOptions, type GeneratedToken, type GenerationRequest, type GenerationResult } from './generate.ts';
import { Dropout, LayerNorm, Linear, gelu, notANumberWhereOutOfRange, oneHotFloat } from './layers.ts';
import { MemoryAsContextTransformer, type TextOutput } from './mac.ts';
import { Module } from './module.ts';
import { Random } from './random.ts';
import { ByteTokenizer } from './tokenizer.ts';
import { VisionTransformerEncoder, type ImageEncoder } from './vit.ts';

/** Linear(visionDim -> projectionDim), LayerNorm, GELU, Linear(-> textDim), dropout. */
export class ImageProjection extends Module {
  readonly up: Linear;
  readonly norm: LayerNorm;
  readonly down: Linear;

  constructor(random: Random, inDim: number, hidden: number, outDim: number, private readonly dropout: Dropout) {
    super();
    this.up = this.child('up', new Linear(random, inDim, hidden));
    this.norm = this.child('norm', new LayerNorm(hidden));
    this.down = this.child('down', new Linear(random, hidden, outDim));
  }

  forward(features: tf.Tensor, training: boolean): tf.Tensor {
    return tf.tidy(() => {
      const h = this.down.forward(gelu(this.norm.forward(this.up.forward(features))));
      return training && this.dropout.rate > 0 ? this.dropout.apply(h) : h;
    });
  }
}

export interface ImageInputs {
  /** [B, N, C, H, W] */
  images?: tf.Tensor5D;
  /** [B, N] position of each image's first placeholder; negative = no image. */
  imagePositions?: number[][];
  /** Dropout on (training only). */
  training?: boolean;
}

export interface LossInputs extends ImageInputs {
  /** Real length of each row of ids; later positions are padding and not targets. */
  lengths?: number[];
  /** Leading tokens of each row that are read as context but not learned (default none). */
  contextLengths?: number[];
  /**
   * Added to the loss per unit of the memory's update rate (NeuralMemory.updateRate; default 0): a
   * price on every write and every forgetting, so that the memory learns to change only for what a
   * later answer needs, and then holds it however long the text around it runs.
   */
  memoryUpdateCost?: number;
}

export class MultimodalMACNetwork extends Module {
  readonly config: MultimodalMACConfig;
  readonly vision: ImageEncoder & Module;
  readonly imageProjection: ImageProjection;
  readonly text: MemoryAsContextTransformer;
  readonly tokenizer = new ByteTokenizer();
  readonly imageTokenId = this.tokenizer.imageTokenId;
  readonly eosTokenId = this.tokenizer.eosTokenId;
  /** The generator behind initialisation and dropout: its state is what a resumed run restores. */
  readonly random: Random;
  private disposed = false;

  constructor(options: MultimodalMACOptions = {}) {
    super();
    const config = resolveConfig(options);
    this.config = config;
    this.random = new Random(config.seed);
    this.vision = this.child('vision', new VisionTransformerEncoder(this.random, config));
    this.imageProjection = this.child('imageProjection', new ImageProjection(
      this.random, config.visionDim, config.projectionDim, config.textDim, new Dropout(config.fusionDropout, this.random)));
    this.text = this.child('text', new MemoryAsContextTransformer(this.random, config));
  }

  /**
   * images [B, C, H, W] -> what fills their placeholders: [B, textDim], or [B, k, textDim] when each
   * image fills k = numImageTokens positions with the patch features pooled over k regions.
   */
  encodeImages(images: tf.Tensor4D, training = false): tf.Tensor {
    return tf.tidy(() => this.project(this.imageFeatures(images, training), training));
  }

  /**
   * encodeImages for inference, a stage of the vision encoder at a time (ImageEncoder.encodeInStages,
   * vision.stages of them), for a caller that spreads an encode over the steps of running generations.
   */
  *encodeImagesInStages(images: tf.Tensor4D): Generator<void, tf.Tensor> {
    const encoded = yield* this.vision.encodeInStages(images, { patches: this.config.numImageTokens > 1 });
    try {
      return tf.tidy(() => this.project(this.tokenFeatures(encoded), false));
    } finally {
      encoded.dispose();
    }
  }

  /**
   * images [B, C, H, W] -> the vision encoder's features of each image token, before the projection
   * into the text: [B, k, visionDim], token i covering imageTokenRegions(k, ...)[i] of the image.
   */
  imageFeatures(images: tf.Tensor4D, training = false): tf.Tensor3D {
    this.requireUsable();
    return tf.tidy(() => this.tokenFeatures(this.vision.encode(images, { training, patches: this.config.numImageTokens > 1 })));
  }

  /** The vision encoder's output ([B, Dv], or its patches' [B, N, Dv]) -> each image token's features [B, k, Dv]. */
  private tokenFeatures(encoded: tf.Tensor): tf.Tensor3D {
    const k = this.config.numImageTokens;
    return k === 1 ? (encoded.expandDims(1) as tf.Tensor3D) : poolPatchGrid(encoded as tf.Tensor3D, k, this.config.imageTokenPool);
  }

  /** Image tokens' features [B, k, Dv] -> what fills the placeholders, in the text's width. */
  private project(features: tf.Tensor3D, training: boolean): tf.Tensor {
    const projected = this.imageProjection.forward(features, training);
    return this.config.numImageTokens === 1 ? projected.squeeze([1]) : projected;
  }

  /** ids int32 [B, T] -> logits [B, T, 256]. */
  forward(ids: tf.Tensor2D, inputs: ImageInputs = {}): tf.Tensor3D {
    return tf.tidy(() => this.readText(ids, inputs, false).logits);
  }

  /** Mean next-byte cross-entropy (image placeholders, padding and context are not targets), plus the memory update cost. */
  loss(ids: tf.Tensor2D, inputs: LossInputs = {}): tf.Scalar {
    // Checked before any op: under tf.variableGrads a throw would strand the tensors kept for the gradient.
    for (const [name, bounds] of [['lengths', inputs.lengths], ['contextLengths', inputs.contextLengths]] as const) {
      if (bounds !== undefined && bounds.length !== ids.shape[0]) throw new RangeError(`${name} holds ${bounds.length} rows, the batch ${ids.shape[0]}`);
    }
    return tf.tidy(() => {
      const length = ids.shape[1];
      const cost = inputs.memoryUpdateCost ?? 0;
      const { logits: all, memoryUpdateRate } = this.readText(ids, inputs, cost > 0);
      const logits = all.slice([0, 0, 0], [-1, length - 1, -1]);
      const targets = ids.slice([0, 1], [-1, -1]);
      const mask = this.targetMask(targets, inputs.lengths, inputs.contextLengths); // [B, T-1]
      const logProbs = tf.logSoftmax(logits);
      const picked = logProbs.mul(oneHotFloat(targets, this.config.numTokens)).sum(-1).add(notANumberWhereOutOfRange(targets, this.config.numTokens)); // [B, T-1]
      const crossEntropy = picked.mul(mask).sum().div(tf.maximum(mask.sum(), 1)).neg() as tf.Scalar;
      return memoryUpdateRate ? crossEntropy.add(memoryUpdateRate.mul(cost)) : crossEntropy;
    });
  }

  /** The text model over the embedded ids, its memory starting afresh where the images say (memoryResets). */
  private readText(ids: tf.Tensor2D, inputs: ImageInputs, withUpdateRate: boolean): TextOutput {
    return this.text.forward(this.embed(ids, inputs), { withUpdateRate, memoryResets: this.memoryResets(inputs.images && inputs.imagePositions) });
  }

  /**
   * 1 where a target [B, T-1] counts, 0 at image placeholders, padding and context: built on the
   * device, so a training step does not wait to read the batch back.
   */
  private targetMask(targets: tf.Tensor2D, lengths: number[] | undefined, contextLengths: number[] | undefined): tf.Tensor2D {
    return tf.tidy(() => {
      let mask = targets.notEqual(this.imageTokenId);
      const [batch, count] = targets.shape;
      // Target t sits at position t + 1.
      const positions = tf.range(1, count + 1, 1, 'int32').expandDims(0); // [1, T-1]
      // Padding from the row's length on; context before its context length.
      if (lengths) mask = mask.logicalAnd(positions.less(tf.tensor2d(lengths, [batch, 1], 'int32')));
      if (contextLengths) mask = mask.logicalAnd(positions.greaterEqual(tf.tensor2d(contextLengths, [batch, 1], 'int32')));
      return mask.cast('float32') as tf.Tensor2D;
    });
  }

  /**
   * A token list written with one placeholder per image, widened to the numImageTokens placeholders
   * each image fills, each image moved to its segment (alignImagesToSegments); the image positions
   * move with it, and a negative one (no image) stays. Callers write prompts the same way
   * whatever the model; the model that reads them knows how many slots an image takes.
   */
  withImageSlots(tokens: number[], imagePositions: number[]): { tokens: number[]; imagePositions: number[] } {
    const widened = widenImagePlaceholders(tokens, imagePositions, this.config.numImageTokens, this.imageTokenId);
    return alignImagesToSegments(widened, this.config);
  }

  /**
   * With neuralMemResetAtImages, for each row of image positions (negative: none) the attention
   * segments past the first that hold an image, where the text model's memory starts afresh;
   * undefined otherwise.
   */
  memoryResets(imagePositions: number[][] | undefined): number[][] | undefined {
    if (!this.config.neuralMemResetAtImages || !imagePositions) return undefined;
    const segmentLen = this.config.segmentLen;
    return imagePositions.map((row) => [...new Set(row.filter((p) => p >= segmentLen).map((p) => Math.floor(p / segmentLen)))]);
  }

  override dispose(): void {
    super.dispose();
    this.disposed = true;
  }

  /** Throws once the model is disposed: its weights are freed, and a use would fail deep inside TensorFlow.js. */
  requireUsable(): void {
    if (this.disposed) throw new Error('this model was disposed (dispose() freed its weights); it can no longer be used');
  }

  /** Streams new tokens after `prompt`; see GenerateOptions. */
  generate(prompt: number[], options: GenerateOptions = {}): AsyncGenerator<GeneratedToken, GenerationResult> {
    return generate(this, prompt, options);
  }

  /** Runs generations as one batch, streaming what happens to each (model/generate.ts); GenerationBatch takes more while it runs. */
  generateBatch(requests: GenerationRequest[]): AsyncGenerator<BatchEvent> {
    return generateBatch(this, requests);
  }

  /**
   * Token embeddings with each image's features at its placeholder positions: [B, T, D]. The positions
   * are checked against the row's length and segments; that the ids hold placeholders there is
   * checked where the tokens are numbers (the tokenizer, generate's imagePlaceholderProblem, the
   * trainer's batches), since reading ids back would wait for the device, which the GPU tier never
   * does in a step. An id out of range makes its embedding NaN (notANumberWhereOutOfRange), on the
   * device; generate's steps embed tokens it has checked already, without that cost.
   */
  embed(ids: tf.Tensor2D, inputs: ImageInputs = {}): tf.Tensor3D {
    this.requireUsable();
    const [batch, length] = ids.shape;
    if (length === 0) throw new RangeError(`ids must hold at least one token a row, got [${batch}, 0]`);
    const positions = inputs.imagePositions;
    // Checked before any op, as in loss().
    if (inputs.images) {
      const [imageRows, numImages, ...pixels] = inputs.images.shape;
      const { imageSize } = this.config;
      if (imageRows !== batch || pixels.join() !== [3, imageSize, imageSize].join()) {
        throw new RangeError(`images must be [${batch}, N, 3, ${imageSize}, ${imageSize}], one row of images per row of ids, got [${inputs.images.shape.join(', ')}]`);
      }
      if (!positions || positions.length !== batch || positions.some((row) => row.length !== numImages)) {
        throw new ImagePositionError(`imagePositions must be [${batch}, ${numImages}], one position per image`);
      }
      positions.forEach((row, b) => {
        const problem = imagePositionProblem(length, row, this.config.numImageTokens, this.config.segmentLen);
        if (problem) throw new ImagePositionError(`row ${b}: ${problem}`);
      });
    }
    return tf.tidy(() => {
      const embeddings = this.text.embed(ids).add(notANumberWhereOutOfRange(ids, this.config.numTokens).expandDims(-1)) as tf.Tensor3D;
      if (!inputs.images || !positions) return embeddings;
      const [, numImages, channels, height, width] = inputs.images.shape;
      const flat = inputs.images.reshape([batch * numImages, channels, height, width]) as tf.Tensor4D;
      const features = this.encodeImages(flat, inputs.training ?? false).reshape([batch, -1, this.config.textDim]); // [B, N * k, D]
      return this.placeImages(embeddings, features, positions, 0);
    });
  }

  /**
   * The embeddings [1, n, D] of rows offset .. offset + n - 1 of one prompt whose images are already
   * encoded (encodeImages of all of them, or null without images): the same rows as embed() of the
   * whole prompt, so that a long prompt can be read in pieces. `imagePositions` are in the whole prompt.
   */
  embedRows(ids: number[], offset: number, imageFeatures: tf.Tensor | null, imagePositions: number[]): tf.Tensor3D {
    return tf.tidy(() => {
      const embeddings = this.text.embed(tf.tensor2d([ids], [1, ids.length], 'int32'));
      const k = this.config.numImageTokens;
      const end = offset + ids.length;
      if (!imageFeatures || !imagePositions.some((p) => p >= 0 && p < end && p + k > offset)) return embeddings;
      return this.placeImages(embeddings, imageFeatures.reshape([1, -1, this.config.textDim]), [imagePositions], offset);
    });
  }

  /**
   * Replaces rows of embeddings [B, T, D] by image features [B, N * k, D]: image n fills positions
   * p_n .. p_n + k - 1, counted from `offset` (the position of the first row). Written as a product
   * with a placement matrix, whose gradient every backend has.
   */
  private placeImages(embeddings: tf.Tensor3D, features: tf.Tensor, positions: number[][], offset: number): tf.Tensor3D {
    const [batch, length] = embeddings.shape;
    const k = this.config.numImageTokens;
    const slots = features.shape[1]!;
    const placement = new Float32Array(batch * length * slots);
    const keep = new Float32Array(batch * length).fill(1);
    positions.forEach((row, b) => row.forEach((start, n) => {
      if (start < 0) return;
      for (let j = 0; j < k; j++) {
        const at = start + j - offset;
        if (at < 0 || at >= length) continue;
        placement[(b * length + at) * slots + n * k + j] = 1;
        keep[b * length + at] = 0;
      }
    }));
    const images = tf.matMul(tf.tensor3d(placement, [batch, length, slots]), features); // [B, T, D]
    return embeddings.mul(tf.tensor3d(keep, [batch, length, 1])).add(images) as tf.Tensor3D;
  }
}

/**
 * Patch features pooled (mean or max) over k regions of the square patch grid, laid out as rows x
 * cols cells (as square as k allows: 4 -> 2 x 2, 2 -> 1 x 2), in reading order: [B, N, D] -> [B, k, D].
 * Cells keep where things are, left and right as well as up and down, which a caption's relation needs.
 * Cells of one size, where the grid divides evenly, are pooled in two reductions, over each band's
 * patch rows and then over each cell's patch columns (a GPU launches a few kernels, not two per
 * cell); uneven ones one by one. (WASM's MaxPool gradient is wrong, so no pooling op is used.)
 */
export function poolPatchGrid(patches: tf.Tensor3D, k: number, pool: ImageTokenPool): tf.Tensor3D {
  return tf.tidy(() => {
    const [batch, count, dim] = patches.shape;
    const side = Math.round(Math.sqrt(count));
    if (side * side !== count) throw new Error(`numImageTokens > 1 needs a square grid of patches, got ${count} patches`);
    const grid = patches.reshape([batch, side, side, dim]);
    const { rows, cols } = cellLayout(k);
    if (side % rows === 0 && side % cols === 0) {
      const reduce = (x: tf.Tensor) => (pool === 'max' ? x.max(1) : x.mean(1));
      const bands = reduce(grid.reshape([batch * rows, side / rows, side * dim])); // [B * rows, side * D]
      return reduce(bands.reshape([batch * k, side / cols, dim])).reshape([batch, k, dim]) as tf.Tensor3D;
    }
    const cells = patchCells(k, side).map(({ top, left, bottom, right }) => {
      const region = grid.slice([0, top, left, 0], [-1, bottom - top, right - left, -1]);
      return pool === 'max' ? region.max([1, 2]) : region.mean([1, 2]);
    });
    return tf.stack(cells, 1) as tf.Tensor3D; // [B, k, D]
  });
}

/**
 * The part of the image that each of k image tokens pools, as fractions of its height and width:
 * the whole image for k = 1, else the cells of poolPatchGrid over a side x side grid of patches.
 */
export function imageTokenRegions(k: number, side: number): { top: number; left: number; bottom: number; right: number }[] {
  if (k === 1) return [{ top: 0, left: 0, bottom: 1, right: 1 }];
  return patchCells(k, side).map(({ top, left, bottom, right }) => ({ top: top / side, left: left / side, bottom: bottom / side, right: right / side }));
}

/** k cells as rows x cols, as square as k allows. */
function cellLayout(k: number): { rows: number; cols: number } {
  let rows = Math.floor(Math.sqrt(k));
  while (k % rows !== 0) rows--;
  return { rows, cols: k / rows };
}

/** k cells in row-major order over a side x side grid, as near square as k allows (edges in patches). */
function patchCells(k: number, side: number): { top: number; left: number; bottom: number; right: number }[] {
  const { rows, cols } = cellLayout(k);
  const edge = (i: number, parts: number) => Math.round((i * side) / parts);
  const cells = [];
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) cells.push({ top: edge(r, rows), left: edge(c, cols), bottom: edge(r + 1, rows), right: edge(c + 1, cols) });
  }
  return cells;
}

/** Images given bad positions: not at placeholders, overlapping, or split by a segment boundary. */
export class ImagePositionError extends Error {
  override name = 'ImagePositionError';
}

/**
 * Why image positions do not fit a row of `length` tokens, or null when they do: each image (a
 * negative position is none) fills `slots` positions inside the row, no two images share one, and no
 * image is split by a boundary between attention segments, where its halves would not attend to each other.
 */
export function imagePositionProblem(length: number, positions: number[], slots: number, segmentLen: number): string | null {
  const taken = new Set<number>();
  for (const [n, start] of positions.entries()) {
    if (start < 0) continue;
    if (!Number.isInteger(start) || start + slots > length) {
      return `image ${n} at position ${start} does not leave room for ${slots} placeholder(s) in ${length} tokens`;
    }
    for (let j = start; j < start + slots; j++) {
      if (taken.has(j)) return `image ${n} at position ${start} overlaps another image at token ${j}`;
      taken.add(j);
    }
    const boundary = Math.floor(start / segmentLen) * segmentLen + segmentLen;
    if (start + slots > boundary) {
      return `image ${n} fills tokens ${start}-${start + slots - 1}, split by the segment boundary at ${boundary} (segments of ${segmentLen}; see withImageSlots)`;
    }
  }
  return null;
}

/**
 * imagePositionProblem for a row whose tokens are numbers, where each image's positions must hold the
 * placeholder and each placeholder must be an image's: one that no image fills would be read as the
 * placeholder's own embedding, which means nothing.
 */
export function imagePlaceholderProblem(tokens: number[], positions: number[], slots: number, segmentLen: number, imageTokenId: number): string | null {
  const problem = imagePositionProblem(tokens.length, positions, slots, segmentLen);
  if (problem) return problem;
  const filled = new Set<number>();
  for (const [n, start] of positions.entries()) {
    if (start < 0) continue;
    for (let j = start; j < start + slots; j++) {
      if (tokens[j] !== imageTokenId) return `image ${n} at position ${start}: token ${j} is ${tokens[j]}, not the image placeholder ${imageTokenId}`;
      filled.add(j);
    }
  }
  const bare = tokens.findIndex((id, j) => id === imageTokenId && !filled.has(j));
  return bare < 0 ? null : `prompt token ${bare} is the image placeholder ${imageTokenId}, but no image fills it (images and imagePositions)`;
}

/**
 * Moves every image that would start past maxImageOffset in its segment (by default: that a segment
 * boundary would split) to the start of the next segment, with spaces before it.
 */
export function alignImagesToSegments(
  prompt: { tokens: number[]; imagePositions: number[] },
  { segmentLen, maxImageOffset }: Pick<MultimodalMACConfig, 'segmentLen' | 'maxImageOffset'>,
): { tokens: number[]; imagePositions: number[] } {
  const tokens = [...prompt.tokens];
  const moved = [...prompt.imagePositions];
  const order = imagesInOrder(moved);
  let shift = 0;
  for (const { position, image } of order) {
    const at = position + shift;
    const offset = at % segmentLen;
    const padding = offset > maxImageOffset ? segmentLen - offset : 0;
    tokens.splice(at, 0, ...Array<number>(padding).fill(SPACE));
    moved[image] = at + padding;
    shift += padding;
  }
  return { tokens, imagePositions: moved };
}

const SPACE = 0x20;

export function widenImagePlaceholders(tokens: number[], imagePositions: number[], slots: number, imageTokenId: number): { tokens: number[]; imagePositions: number[] } {
  if (slots === 1) return { tokens, imagePositions };
  const order = imagesInOrder(imagePositions);
  const widened = [...tokens];
  const moved = [...imagePositions];
  order.forEach(({ position, image }, i) => {
    const at = position + i * (slots - 1);
    widened.splice(at + 1, 0, ...Array<number>(slots - 1).fill(imageTokenId));
    moved[image] = at;
  });
  return { tokens: widened, imagePositions: moved };
}

/** The images that a row holds (its positions that are not negative), in the order they stand. */
function imagesInOrder(imagePositions: number[]): { position: number; image: number }[] {
  return imagePositions.flatMap((position, image) => (position < 0 ? [] : [{ position, image }])).sort((a, b) => a.position - b.position);
}
