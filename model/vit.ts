/**
 * A standard pre-norm Vision Transformer (Dosovitskiy et al., "An Image is Worth 16x16 Words"):
 * patches -> linear projection -> class token + learned positions -> blocks -> final LayerNorm.
 * With `visionStem`, a patch's token also gets the features of a few convolutions over it, a hybrid
 * of the paper's kind whose early convolutions (Xiao et al., "Early Convolutions Help Transformers See
 * Better") learn shapes from far fewer images than a linear patch embedding does.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { MultimodalMACConfig } from './config.ts';
import { Conv2d, Dropout, FeedForward, LayerNorm, Linear, broadcast, selfAttention } from './layers.ts';
import { Module, normalInit } from './module.ts';
import type { Random } from './random.ts';

/** What the fusion layer needs of an image encoder; any encoder with this shape can replace the ViT. */
export interface ImageEncoder {
  readonly outputDim: number;
  /** images [B, C, H, W] -> features [B, outputDim] or, with `patches`, [B, N, outputDim] patch features. */
  encode(images: tf.Tensor4D, options?: { training?: boolean; patches?: boolean }): tf.Tensor;
  /** How many stages encodeInStages takes: the calls of its next() until it returns. */
  readonly stages: number;
  /**
   * encode for inference, a stage at a time: pausing between stages lets a caller spread an encode
   * over time, as a server does that must not stall the generations it runs. Stopped early
   * (return()), it frees what it holds.
   */
  encodeInStages(images: tf.Tensor4D, options?: { patches?: boolean }): Generator<void, tf.Tensor>;
}

export type VisionConfig = Pick<MultimodalMACConfig,
  'imageSize' | 'patchSize' | 'inChannels' | 'visionStem' | 'visionDim' | 'visionDepth' | 'visionHeads' | 'visionMlpDim' | 'visionDropout'>;

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
      let attended = this.toOutput.forward(selfAttention(this.toQKV.forward(this.attentionNorm.forward(x)) as tf.Tensor3D, this.heads));
      if (dropout) attended = dropout.apply(attended);
      const h = x.add(attended);
      return h.add(this.mlp.forward(this.mlpNorm.forward(h), dropout)) as tf.Tensor3D;
    });
  }
}

export class VisionTransformerEncoder extends Module implements ImageEncoder {
  readonly outputDim: number;
  readonly stem: Conv2d[];
  readonly patchEmbedding: Linear;
  /** With a stem: the embedding of its features, added to that of the pixels. */
  readonly stemEmbedding?: Linear;
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
    const { imageSize, patchSize, inChannels, visionStem, visionDim: dim } = config;
    const numPatches = (imageSize / patchSize) ** 2;
    this.outputDim = dim;
    this.patchEmbedding = this.child('patchEmbedding', new Linear(random, inChannels * patchSize * patchSize, dim));
    this.classToken = this.param('classToken', normalInit(random, [1, 1, dim], 0.02));
    this.positionEmbedding = this.param('positionEmbedding', normalInit(random, [1, numPatches + 1, dim], 0.02));
    this.blocks = Array.from({ length: config.visionDepth }, (_, i) =>
      this.child(`blocks.${i}`, new VisionBlock(random, dim, config.visionHeads, config.visionMlpDim)),
    );
    this.norm = this.child('norm', new LayerNorm(dim));
    // The stem is drawn last, so that it leaves every other initial weight as it would be without it.
    const channels = [inChannels, ...visionStem];
    // Every convolution but the last halves the map; the last reads the finest map the stem makes.
    this.stem = visionStem.map((out, i) => this.child(`stem.${i}`, new Conv2d(random, channels[i]!, out, i < visionStem.length - 1 ? 2 : 1)));
    // Zero at first: a model with a stem starts as the same model without one.
    this.stemEmbedding = visionStem.length === 0 ? undefined : this.child('stemEmbedding', new Linear(random, channels.at(-1)!, dim, { std: 0 }));
    this.dropout = new Dropout(config.visionDropout, random);
  }

  encode(images: tf.Tensor4D, options: { training?: boolean; patches?: boolean } = {}): tf.Tensor {
    return tf.tidy(() => {
      const dropout = options.training && this.dropout.rate > 0 ? this.dropout : undefined;
      let h = this.embed(images, dropout);
      for (const block of this.blocks) h = block.forward(h, dropout);
      return this.readOut(h, options.patches);
    });
  }

  /** One a block; the embedding goes with the first, the final norm with the last. */
  get stages(): number {
    return this.blocks.length;
  }

  *encodeInStages(images: tf.Tensor4D, options: { patches?: boolean } = {}): Generator<void, tf.Tensor> {
    let h = tf.tidy(() => this.embed(images));
    try {
      for (const [i, block] of this.blocks.entries()) {
        if (i > 0) yield;
        const next = block.forward(h);
        h.dispose();
        h = next;
      }
      return tf.tidy(() => this.readOut(h, options.patches));
    } finally {
      h.dispose();
    }
  }

  /** images [B, C, H, W] -> [B, N + 1, D]: the class token and the patches' tokens, at their positions. */
  private embed(images: tf.Tensor4D, dropout?: Dropout): tf.Tensor3D {
    let patches = this.patchEmbedding.forward(this.patchify(images)); // [B, N, D]
    if (this.stemEmbedding) patches = patches.add(this.stemEmbedding.forward(this.detect(images)));
    const classTokens = broadcast(this.classToken, [images.shape[0], 1, this.outputDim]);
    const h = tf.concat([classTokens, patches], 1).add(this.positionEmbedding) as tf.Tensor3D;
    return dropout ? (dropout.apply(h) as tf.Tensor3D) : h;
  }

  /** The last block's output -> the class token's features [B, D], or with `patches` the patches' [B, N, D]. */
  private readOut(h: tf.Tensor3D, patches = false): tf.Tensor {
    const normed = this.norm.forward(h) as tf.Tensor3D;
    return patches ? normed.slice([0, 1, 0], [-1, -1, -1]) : normed.slice([0, 0, 0], [-1, 1, -1]).reshape([h.shape[0], this.outputDim]);
  }

  /**
   * images [B, C, H, W] -> [B, N, C'] the stem's features, each the maximum over its patch of a ReLU
   * feature map: whether, not where in the patch, a pattern was seen. A mean would dilute a small
   * object's features with the background around it.
   */
  private detect(images: tf.Tensor4D): tf.Tensor3D {
    let h = images.transpose([0, 2, 3, 1]) as tf.Tensor4D; // convolutions run channels last
    for (const conv of this.stem) h = conv.forward(h).relu() as tf.Tensor4D;
    const [batch, side, , channels] = h.shape;
    const grid = this.config.imageSize / this.config.patchSize;
    const pool = side / grid;
    const pooled = tf.maxPool(h, pool, pool, 'valid');
    // Each patch's features at unit RMS: left at their own scale, which grows with training, they
    // outweigh the pixels' embedding and push the colours out of the tokens (docs/bundled-model.md).
    const features = pooled.reshape([batch, grid * grid, channels]);
    return features.div(features.square().mean(-1, true).add(1e-6).sqrt()) as tf.Tensor3D;
  }

  /**
   * [B, C, H, W] -> [B, N, C * p * p], each patch flattened channel-major like a conv kernel: with
   * the linear embedding after it, a stride-p convolution in one reshape and transpose.
   */
  private patchify(images: tf.Tensor4D): tf.Tensor3D {
    const { patchSize: p, inChannels: c, imageSize } = this.config;
    const [batch, channels, height, width] = images.shape;
    if (channels !== c || height !== imageSize || width !== imageSize) {
      throw new Error(`images must be [B, ${c}, ${imageSize}, ${imageSize}], got [${images.shape.join(', ')}]`);
    }
    const grid = imageSize / p;
    return images
      .reshape([batch, c, grid, p, grid, p])
      .transpose([0, 2, 4, 1, 3, 5]) // [B, gy, gx, C, p, p]
      .reshape([batch, grid * grid, c * p * p]) as tf.Tensor3D;
  }
}
