/**
 * A standard pre-norm Vision Transformer (Dosovitskiy et al., "An Image is Worth 16x16 Words"):
 * patches -> linear projection (or a convolutional stem) -> class token + learned positions ->
 * blocks -> final LayerNorm.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { MultimodalMACConfig } from './config.ts';
import { Dropout, FeedForward, LayerNorm, Linear, attend, gelu, mergeHeads, splitHeads } from './layers.ts';
import { Module, normalInit } from './module.ts';
import type { Random } from './random.ts';

/** What the fusion layer needs of an image encoder; any encoder with this shape can replace the ViT. */
export interface ImageEncoder {
  readonly outputDim: number;
  /** images [B, C, H, W] -> features [B, outputDim] or, with `patches`, [B, N, outputDim] patch features. */
  encode(images: tf.Tensor4D, options?: { training?: boolean; patches?: boolean }): tf.Tensor;
}

export type VisionConfig = Pick<MultimodalMACConfig,
  'imageSize' | 'patchSize' | 'inChannels' | 'visionDim' | 'visionDepth' | 'visionHeads' | 'visionMlpDim' | 'visionDropout' | 'visionStem'>;

/** Turns images [B, C, H, W] into one token per cell of the patch grid, [B, N, D] in reading order. */
interface PatchEmbedding {
  embed(images: tf.Tensor4D): tf.Tensor3D;
}

/** Non-overlapping p x p patches, each flattened channel-major like a conv kernel, then this Linear. */
class LinearPatchEmbedding extends Linear implements PatchEmbedding {
  constructor(random: Random, private readonly config: VisionConfig) {
    super(random, config.inChannels * config.patchSize ** 2, config.visionDim);
  }

  /** A reshape and transpose instead of conv2d: WASM has no Conv2DBackpropFilter for the gradient. */
  embed(images: tf.Tensor4D): tf.Tensor3D {
    return tf.tidy(() => {
      const { patchSize: p, inChannels: c, imageSize } = this.config;
      const batch = images.shape[0];
      const grid = imageSize / p;
      const patches = images
        .reshape([batch, c, grid, p, grid, p])
        .transpose([0, 2, 4, 1, 3, 5]) // [B, gy, gx, C, p, p]
        .reshape([batch, grid * grid, c * p * p]);
      return this.forward(patches) as tf.Tensor3D;
    });
  }
}

/**
 * 3x3 convolution, stride 2, padding 1, then GELU: [B, H, W, Cin] -> [B, H/2, W/2, Cout]. Written
 * as its nine taps gathered side by side and one matrix product (im2col), so that the gradient needs
 * only pad, reshape, slice and matMul, which every backend differentiates.
 */
export class StridedConv extends Module {
  readonly kernel: Linear;

  constructor(random: Random, inChannels: number, outChannels: number) {
    super();
    this.kernel = this.child('kernel', new Linear(random, 9 * inChannels, outChannels, { std: Math.sqrt(2 / (9 * inChannels)) }));
  }

  forward(x: tf.Tensor4D): tf.Tensor4D {
    return tf.tidy(() => {
      const [batch, height, width, channels] = x.shape;
      const [h, w] = [height / 2, width / 2];
      // Padded rows 0 .. H+1 as (pair a, phase q): padded row 2a + q. Output row i reads padded rows
      // 2i, 2i + 1 and 2i + 2, i.e. (i, 0), (i, 1) and (i + 1, 0); the same for columns.
      const phased = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]).reshape([batch, h + 1, 2, w + 1, 2, channels]);
      const taps: tf.Tensor[] = [];
      for (const [rowPair, rowPhase] of TAPS) {
        for (const [colPair, colPhase] of TAPS) {
          taps.push(phased.slice([0, rowPair, rowPhase, colPair, colPhase, 0], [batch, h, 1, w, 1, channels]).reshape([batch, h, w, channels]));
        }
      }
      return gelu(this.kernel.forward(tf.concat(taps, -1))) as tf.Tensor4D;
    });
  }
}

const TAPS: ReadonlyArray<[pair: number, phase: number]> = [[0, 0], [0, 1], [1, 0]];

/**
 * log2(p) stride-2 convolutions take the image down to the patch grid, widening towards visionDim,
 * and a Linear (a 1x1 convolution) gives each grid cell its token.
 */
class ConvolutionalStem extends Module implements PatchEmbedding {
  readonly convolutions: StridedConv[];
  readonly projection: Linear;

  constructor(random: Random, config: VisionConfig) {
    super();
    const stages = Math.log2(config.patchSize);
    const widths = [config.inChannels, ...Array.from({ length: stages }, (_, i) => Math.max(16, config.visionDim >> (stages - 1 - i)))];
    this.convolutions = Array.from({ length: stages }, (_, i) => this.child(`convolutions.${i}`, new StridedConv(random, widths[i]!, widths[i + 1]!)));
    this.projection = this.child('projection', new Linear(random, widths[stages]!, config.visionDim));
  }

  embed(images: tf.Tensor4D): tf.Tensor3D {
    return tf.tidy(() => {
      let x = images.transpose([0, 2, 3, 1]) as tf.Tensor4D; // channels last: each tap is a run of channels
      for (const convolution of this.convolutions) x = convolution.forward(x);
      const [batch, height, width, channels] = x.shape;
      return this.projection.forward(x.reshape([batch, height * width, channels])) as tf.Tensor3D;
    });
  }
}

class VisionBlock extends Module {
  readonly attentionNorm: LayerNorm;
  readonly toQKV: Linear;
  readonly toOutput: Linear;
  readonly mlpNorm: LayerNorm;
  readonly mlp: FeedForward;

  constructor(random: Random, dim: number, private readonly heads: number, mlpDim: number) {
    super();
    this.attentionNorm = this.child('attentionNorm', new LayerNorm(dim));
    this.toQKV = this.child('toQKV', new Linear(random, dim, 3 * dim));
    this.toOutput = this.child('toOutput', new Linear(random, dim, dim));
    this.mlpNorm = this.child('mlpNorm', new LayerNorm(dim));
    this.mlp = this.child('mlp', new FeedForward(random, dim, mlpDim));
  }

  forward(x: tf.Tensor3D, dropout?: Dropout): tf.Tensor3D {
    return tf.tidy(() => {
      const [q, k, v] = tf.split(this.toQKV.forward(this.attentionNorm.forward(x)), 3, -1) as [tf.Tensor, tf.Tensor, tf.Tensor];
      const heads = (t: tf.Tensor) => splitHeads(t, this.heads); // [B, H, N, dh]
      let attended = this.toOutput.forward(mergeHeads(attend(heads(q), heads(k), heads(v))));
      if (dropout) attended = dropout.apply(attended);
      const h = x.add(attended);
      return h.add(this.mlp.forward(this.mlpNorm.forward(h), dropout)) as tf.Tensor3D;
    });
  }
}

export class VisionTransformerEncoder extends Module implements ImageEncoder {
  readonly outputDim: number;
  readonly patchEmbedding: PatchEmbedding & Module;
  readonly classToken: tf.Variable; // [1, 1, D]
  readonly positionEmbedding: tf.Variable; // [1, N + 1, D]
  readonly blocks: VisionBlock[];
  readonly norm: LayerNorm;
  private readonly dropout: Dropout;

  constructor(
    random: Random,
    readonly config: VisionConfig,
  ) {
    super();
    const { imageSize, patchSize, visionDim: dim } = config;
    const numPatches = (imageSize / patchSize) ** 2;
    this.outputDim = dim;
    this.patchEmbedding = this.child('patchEmbedding',
      config.visionStem === 'conv' ? new ConvolutionalStem(random, config) : new LinearPatchEmbedding(random, config));
    this.classToken = this.param('classToken', normalInit(random, [1, 1, dim], 0.02));
    this.positionEmbedding = this.param('positionEmbedding', normalInit(random, [1, numPatches + 1, dim], 0.02));
    this.blocks = Array.from({ length: config.visionDepth }, (_, i) =>
      this.child(`blocks.${i}`, new VisionBlock(random, dim, config.visionHeads, config.visionMlpDim)),
    );
    this.norm = this.child('norm', new LayerNorm(dim));
    this.dropout = new Dropout(config.visionDropout, random);
  }

  encode(images: tf.Tensor4D, options: { training?: boolean; patches?: boolean } = {}): tf.Tensor {
    return tf.tidy(() => {
      const dropout = options.training && this.dropout.rate > 0 ? this.dropout : undefined;
      this.checkShape(images);
      const patches = this.patchEmbedding.embed(images); // [B, N, D]
      const batch = images.shape[0];
      const classTokens = tf.broadcastTo(this.classToken, [batch, 1, this.outputDim]);
      let h = tf.concat([classTokens, patches], 1).add(this.positionEmbedding) as tf.Tensor3D;
      if (dropout) h = dropout.apply(h) as tf.Tensor3D;
      for (const block of this.blocks) h = block.forward(h, dropout);
      h = this.norm.forward(h) as tf.Tensor3D;
      return options.patches ? h.slice([0, 1, 0], [-1, -1, -1]) : h.slice([0, 0, 0], [-1, 1, -1]).reshape([batch, this.outputDim]);
    });
  }

  private checkShape(images: tf.Tensor4D): void {
    const { inChannels: c, imageSize } = this.config;
    const [, channels, height, width] = images.shape;
    if (channels !== c || height !== imageSize || width !== imageSize) {
      throw new Error(`images must be [B, ${c}, ${imageSize}, ${imageSize}], got [${images.shape.join(', ')}]`);
    }
  }
}
