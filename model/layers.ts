/**
 * The building blocks shared by the vision encoder and the text model: linear maps, convolutions,
 * norms, GELU and dropout. Every op here runs on WASM and has a registered gradient (DESIGN.md
 * section 2); many of them run as one kernel where a backend has one (below).
 */
import * as tf from '@tensorflow/tfjs-core';
import { Module, normalInit } from './module.ts';
import type { Random } from './random.ts';

export class Linear extends Module {
  readonly weight: tf.Variable; // [in, out]
  readonly bias?: tf.Variable; // [out]

  /** options.blocks: the weight is drawn as that many products side by side (normalInit). */
  constructor(random: Random, inDim: number, outDim: number, options: { bias?: boolean; std?: number; biasInit?: number; blocks?: number } = {}) {
    super();
    this.weight = this.param('weight', normalInit(random, [inDim, outDim], options.std ?? 0.02, options.blocks));
    if (options.bias ?? true) this.bias = this.param('bias', tf.fill([outDim], options.biasInit ?? 0));
  }

  /**
   * x: [..., in] -> [..., out]; plus `residual` [..., out] where given: without a bias of its own,
   * the product's kernel adds it as one (the residual stream's add, one launch fewer on a GPU).
   */
  forward(x: tf.Tensor, residual?: tf.Tensor): tf.Tensor {
    if (!residual) return this.map(x, 'linear');
    return tf.tidy(() => {
      if (this.bias) return this.map(x, 'linear').add(residual);
      const [inDim, outDim] = this.weight.shape as [number, number];
      return affine(x.reshape([-1, inDim]), this.weight, residual.reshape([-1, outDim])).reshape(residual.shape);
    });
  }

  /** sigmoid(x W + b), a gate in (0, 1): one kernel with the product where the backend has it. */
  gate(x: tf.Tensor): tf.Tensor {
    return this.map(x, 'sigmoid');
  }

  private map(x: tf.Tensor, activation: Activation): tf.Tensor {
    return tf.tidy(() => {
      const [inDim, outDim] = this.weight.shape as [number, number];
      const flat = x.reshape([-1, inDim]);
      const y = this.bias ? affine(flat, this.weight, this.bias, activation) : activate(product(flat, this.weight), activation);
      return y.reshape([...x.shape.slice(0, -1), outDim]);
    });
  }
}

/** What a linear map's output passes through: nothing, or a sigmoid (a gate). */
export type Activation = 'linear' | 'sigmoid';

function activate(y: tf.Tensor, activation: Activation): tf.Tensor {
  return activation === 'sigmoid' ? y.sigmoid() : y;
}

/**
 * A 3 x 3 convolution with stride s and one pixel of zero padding, channels last: x [B, H, W, in] ->
 * [B, ceil(H / s), ceil(W / s), out]. WASM has no Conv2DBackpropFilter kernel of its own (one is
 * registered where a native BLAS runs: src/backend/wasm-convolution.ts), so the gradient is written
 * here: where the backend lacks that kernel, the filter's gradient is itself a convolution, of the
 * input by the output's gradient dilated by the stride, which WASM's forward Conv2D kernel computes.
 */
export class Conv2d extends Module {
  readonly weight: tf.Variable; // [3, 3, in, out]
  readonly bias: tf.Variable; // [out]

  private readonly convolve: (x: tf.Tensor4D, filter: tf.Tensor4D) => tf.Tensor4D;

  constructor(random: Random, inChannels: number, outChannels: number, private readonly stride: number) {
    super();
    // He initialisation: the ReLU after each convolution halves the variance that it passes on.
    this.weight = this.param('weight', normalInit(random, [3, 3, inChannels, outChannels], Math.sqrt(2 / (9 * inChannels))));
    this.bias = this.param('bias', tf.zeros([outChannels]));
    this.convolve = validConvolution(stride);
  }

  forward(x: tf.Tensor4D): tf.Tensor4D {
    return tf.tidy(() => {
      const [, height, width] = x.shape;
      // One pixel before; after, just enough for an output of exactly ceil(size / stride).
      const padAfter = (size: number) => Math.max((Math.ceil(size / this.stride) - 1) * this.stride + 2 - size, 0);
      const padded = tf.pad(x, [[0, 0], [1, padAfter(height)], [1, padAfter(width)], [0, 0]]) as tf.Tensor4D;
      return this.convolve(padded, this.weight as tf.Tensor4D).add(this.bias) as tf.Tensor4D;
    });
  }
}

/** Valid convolution of x [B, H, W, in] by filter [k, k, in, out] at a stride, with its gradient. */
function validConvolution(stride: number): (x: tf.Tensor4D, filter: tf.Tensor4D) => tf.Tensor4D {
  const withGradient = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [input, kernel, save] = args as [tf.Tensor4D, tf.Tensor4D, tf.GradSaveFunc];
    save([input, kernel]);
    return {
      value: tf.conv2d(input, kernel, stride, 'valid'),
      gradFunc: (dy: tf.Tensor4D, [savedInput, savedKernel]: tf.Tensor[]) => {
        const [kh, kw] = savedKernel!.shape as [number, number];
        const dInput = tf.conv2dTranspose(dy, savedKernel as tf.Tensor4D, (savedInput as tf.Tensor4D).shape, stride, 'valid');
        const filterGradient = { strides: stride, pad: 'valid', dataFormat: 'NHWC', filterShape: savedKernel!.shape };
        const dKernel = kernelOr(tf.Conv2DBackpropFilter, { x: savedInput!, dy }, filterGradient, () =>
          // dK[i, j, c, o] = sum over b, y, x of input[b, s*y + i, s*x + j, c] * dy[b, y, x, o]: a convolution
          // of the input with channels and batch swapped by dy as the filter, dilated by s.
          tf.conv2d(
            savedInput!.transpose([3, 1, 2, 0]) as tf.Tensor4D, // [in, H, W, B]
            dy.transpose([1, 2, 0, 3]) as tf.Tensor4D, // [Ho, Wo, B, out]
            1, 'valid', 'NHWC', stride,
          ) // [in, >= k, >= k, out]
            .slice([0, 0, 0, 0], [-1, kh, kw, -1])
            .transpose([1, 2, 0, 3]));
        return [dInput, dKernel];
      },
    };
  });
  return (x, filter) => withGradient(x, filter) as tf.Tensor4D;
}

/**
 * Kernels that compute x W + b (and x W, a weight's product without a bias), LayerNorm, RMSNorm, a
 * row's L2 normalisation (and the input gradients of those three), GELU (and its derivatives), a
 * causal convolution, one query's attention, a ViT's self-attention from its packed projection, a
 * pre-norm with the product after it (a feed-forward's first, and its GELU; attention's projection)
 * and a whole feed-forward, in one launch, for a backend that registers them (webgpu:
 * src/backend/webgpu-kernels.ts): on a GPU every launch costs about the same, whatever its size.
 * WASM registers x W + b, the norms, GELU and self-attention (src/backend/blas.ts, wasm-norms.ts,
 * wasm-simd.ts, wasm-attention.ts), and the feed-forward in bfloat16 (bfloat16.ts): a WASM kernel
 * has a fixed cost too, and each written-out op is a pass over the tensor. Elsewhere the ops below
 * are written out in TensorFlow.js ops, which the kernels match. The gradients of the kernels are
 * registered at the end of this file; the feed-forward's takes its hidden layer again, which the
 * kernel does not keep. (The memory network's residual norm has one too, in memory-networks.ts,
 * which also names a decoding step's memory read; a decoding step's other two are in attention.ts.)
 * x W is a kernel of its own, where a plain product would do, because W is a layer's weight: WASM
 * may keep it in bfloat16 (src/backend/bfloat16.ts), as it does x W + b's.
 */
export const AFFINE_KERNEL = 'TitansAffine';
export const PRODUCT_KERNEL = 'TitansProduct';
export const LAYER_NORM_KERNEL = 'TitansLayerNorm';
export const RMS_NORM_KERNEL = 'TitansRMSNorm';
export const L2_NORM_KERNEL = 'TitansL2Norm';
export const GELU_KERNEL = 'TitansGelu';
export const GELU_DERIVATIVE_KERNEL = 'TitansGeluDerivative';
export const GELU_SECOND_DERIVATIVE_KERNEL = 'TitansGeluSecondDerivative';
export const ATTENTION_KERNEL = 'TitansAttention';
export const SELF_ATTENTION_KERNEL = 'TitansSelfAttention';
export const SCALED_ROWS_GRADIENT_KERNEL = 'TitansScaledRowsGradient';
export const LAYER_NORM_INPUT_GRADIENT_KERNEL = 'TitansLayerNormInputGradient';
export const CAUSAL_CONV_KERNEL = 'TitansCausalConv';
export const NORMALIZED_AFFINE_GELU_KERNEL = 'TitansNormalizedAffineGelu';
export const NORMALIZED_PRODUCT_KERNEL = 'TitansNormalizedProduct';
export const FEED_FORWARD_KERNEL = 'TitansFeedForward';

/**
 * The one-launch kernel where this backend has it; otherwise the same value written out. Inputs
 * given as a list are named by their places, as a gradient that saves all of them needs.
 */
export function kernelOr(kernelName: string, inputs: tf.NamedTensorMap | tf.Tensor[], attrs: tf.NamedAttrMap, writtenOut: () => tf.Tensor): tf.Tensor {
  if (tf.getKernel(kernelName, tf.getBackend()) === undefined) return tf.tidy(writtenOut);
  return tf.engine().runKernel(kernelName, inputs as tf.NamedTensorMap, attrs) as tf.Tensor;
}

/** (x - mean) * rsqrt(variance + eps) * gain + bias over the last axis. */
export function layerNorm(x: tf.Tensor, gain: tf.Tensor, bias: tf.Tensor, eps: number): tf.Tensor {
  return kernelOr(LAYER_NORM_KERNEL, { x, gain, bias }, { eps }, () => {
    const { mean, variance } = tf.moments(x, -1, true);
    return x.sub(mean).mul(variance.add(eps).rsqrt()).mul(gain).add(bias);
  });
}

export class LayerNorm extends Module {
  readonly gain: tf.Variable;
  readonly bias: tf.Variable;

  constructor(dim: number, private readonly eps = 1e-5) {
    super();
    this.gain = this.param('gain', tf.ones([dim]));
    this.bias = this.param('bias', tf.zeros([dim]));
  }

  forward(x: tf.Tensor): tf.Tensor {
    return layerNorm(x, this.gain, this.bias, this.eps);
  }
}

/** x [rows, in] W [in, out] + bias ([out], or one a row: [rows, out]), through a sigmoid when `activation` says so. */
export function affine(x: tf.Tensor, weight: tf.Tensor, bias: tf.Tensor, activation: Activation = 'linear'): tf.Tensor {
  return kernelOr(AFFINE_KERNEL, { x, weight, bias }, { activation }, () => activate(x.matMul(weight).add(bias), activation));
}

/** x [rows, in] W [in, out], W a layer's weight (a Linear without a bias). */
export function product(x: tf.Tensor, weight: tf.Tensor): tf.Tensor {
  return kernelOr(PRODUCT_KERNEL, { x, weight }, {}, () => x.matMul(weight));
}

/** GELU(RMSNorm(x) W + b), x [rows, in]: a pre-norm, a product and its GELU. */
export function normalizedAffineGelu(x: tf.Tensor, gain: tf.Tensor, eps: number, weight: tf.Tensor, bias: tf.Tensor): tf.Tensor {
  return kernelOr(NORMALIZED_AFFINE_GELU_KERNEL, { x, gain, weight, bias }, { eps }, () => gelu(affine(rmsNorm(x, gain, eps), weight, bias)));
}

/** RMSNorm(x) W, x [rows, in]: a pre-norm and a product without a bias. */
export function normalizedProduct(x: tf.Tensor, gain: tf.Tensor, eps: number, weight: tf.Tensor): tf.Tensor {
  return kernelOr(NORMALIZED_PRODUCT_KERNEL, { x, gain, weight }, { eps }, () => product(rmsNorm(x, gain, eps), weight));
}

/** GELU(x W1 + b1) W2 + b2, x [rows, in]: a feed-forward's two products and the GELU between them. */
export function feedForward(x: tf.Tensor, upWeight: tf.Tensor, upBias: tf.Tensor, downWeight: tf.Tensor, downBias: tf.Tensor): tf.Tensor {
  return kernelOr(FEED_FORWARD_KERNEL, { x, upWeight, upBias, downWeight, downBias }, {}, () => affine(gelu(affine(x, upWeight, upBias)), downWeight, downBias));
}

/** x * rsqrt(mean(x^2) + eps) * gain over the last axis. */
export function rmsNorm(x: tf.Tensor, gain: tf.Tensor, eps: number): tf.Tensor {
  return kernelOr(RMS_NORM_KERNEL, { x, gain }, { eps }, () => x.mul(x.square().mean(-1, true).add(eps).rsqrt()).mul(gain));
}

/** x * rsqrt(sum(x^2) + eps) over the last axis: every row scaled to length 1 (the memory's queries and keys). */
export function l2Normalize(x: tf.Tensor, eps: number): tf.Tensor {
  return kernelOr(L2_NORM_KERNEL, { x }, { eps }, () => x.div(x.square().sum(-1, true).add(eps).sqrt()));
}

/** The text model uses RMSNorm, as the reference MAC implementation does: one op fewer per row. */
export class RMSNorm extends Module {
  readonly gain: tf.Variable;

  constructor(dim: number, readonly eps = 1e-6) {
    super();
    this.gain = this.param('gain', tf.ones([dim]));
  }

  forward(x: tf.Tensor): tf.Tensor {
    return rmsNorm(x, this.gain, this.eps);
  }
}

/** The tanh GELU's constants: u = GELU_C (x + GELU_CUBIC x^3). */
export const GELU_C = Math.sqrt(2 / Math.PI);
export const GELU_CUBIC = 0.044715;

/**
 * GELU, tanh form: TensorFlow.js has no erf-based GELU, and its derivative is needed in closed form.
 * Written as x * sigmoid(2u), which equals 0.5 x (1 + tanh(u)): six kernels instead of nine, and
 * WASM's sigmoid is several times faster than its tanh.
 */
export function gelu(x: tf.Tensor): tf.Tensor {
  return kernelOr(GELU_KERNEL, { x }, {}, () => x.mul(geluGate(x, x.square())));
}

/**
 * d gelu(x) / dx, for GELU's gradient and the neural memory's explicit backward pass: with
 * g = sigmoid(2u) = 0.5 (1 + tanh u) and u' = du/dx, g + 2 x g (1 - g) u'.
 */
export function geluDerivative(x: tf.Tensor): tf.Tensor {
  return kernelOr(GELU_DERIVATIVE_KERNEL, { x }, {}, () => {
    const x2 = x.square();
    const g = geluGate(x, x2);
    return g.add(x.mul(g).mul(tf.sub(1, g)).mul(geluInnerSlope(x2, 2)));
  });
}

/** u''' of the tanh GELU's inner u, whose u'' is GELU_DDDU x. */
export const GELU_DDDU = 6 * GELU_CUBIC * GELU_C;

/** sigmoid(2u) for u = GELU_C (x + GELU_CUBIC x^3), given x2 = x^2 (WASM's Pow is slow): 2u = x (2c + 2c 0.044715 x^2). */
function geluGate(x: tf.Tensor, x2: tf.Tensor): tf.Tensor {
  return x.mul(x2.mul(2 * GELU_C * GELU_CUBIC).add(2 * GELU_C)).sigmoid();
}

/** scale * du/dx for the tanh GELU's inner u, given x2 = x^2. */
function geluInnerSlope(x2: tf.Tensor, scale: number): tf.Tensor {
  return x2.mul(3 * GELU_CUBIC * GELU_C * scale).add(GELU_C * scale);
}

/** The terms of GELU's higher derivatives: t = tanh(u) = 2g - 1, s = 1 - t^2 = 4 g (1 - g) (g = geluGate) and u' = du/dx. */
function geluTerms(x: tf.Tensor): { t: tf.Tensor; s: tf.Tensor; du: tf.Tensor } {
  const x2 = x.square();
  const g = geluGate(x, x2);
  return { t: g.mul(2).sub(1), s: g.mul(tf.sub(1, g)).mul(4), du: geluInnerSlope(x2, 1) };
}

/**
 * d^2 gelu(x) / dx^2, the gradient of geluDerivative, which training takes through the memory's
 * stores: s (u' + 0.5 x (u'' - 2 t u'^2)), in geluTerms' terms.
 */
export function geluSecondDerivative(x: tf.Tensor): tf.Tensor {
  return kernelOr(GELU_SECOND_DERIVATIVE_KERNEL, { x }, {}, () => {
    const { t, s, du } = geluTerms(x);
    return s.mul(du.add(x.mul(0.5).mul(x.mul(GELU_DDDU).sub(t.mul(2).mul(du.square())))));
  });
}

export class FeedForward extends Module {
  readonly up: Linear;
  readonly down: Linear;

  constructor(random: Random, dim: number, hidden: number) {
    super();
    this.up = this.child('up', new Linear(random, dim, hidden));
    this.down = this.child('down', new Linear(random, hidden, dim));
  }

  forward(x: tf.Tensor, dropout?: Dropout): tf.Tensor {
    return tf.tidy(() => {
      const [[inDim], outDim] = [this.up.weight.shape, this.down.weight.shape[1]!];
      const h = feedForward(x.reshape([-1, inDim!]), this.up.weight, this.up.bias!, this.down.weight, this.down.bias!);
      const shaped = h.reshape([...x.shape.slice(0, -1), outDim]);
      return dropout ? dropout.apply(shaped) : shaped;
    });
  }

  /** forward(norm(x)) for a pre-norm `norm`: the norm, the first product and its GELU in one kernel where the backend has one. */
  afterNorm(norm: RMSNorm, x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => {
      const { weight, bias } = this.up;
      const [inDim, hidden] = weight.shape as [number, number];
      const h = normalizedAffineGelu(x.reshape([-1, inDim]), norm.gain, norm.eps, weight, bias!);
      return this.down.forward(h.reshape([...x.shape.slice(0, -1), hidden]));
    });
  }
}

/**
 * A causal depthwise convolution along the rows: out_t = sum_j w_j * x_{t-j}, each channel with its
 * own K taps. Given the K - 1 rows before the output's first, so that a sequence read in pieces
 * convolves as the whole would.
 */
export class CausalConv extends Module {
  readonly weight: tf.Variable; // [K, C], tap j weighs the row j steps back

  /** blocks: the channels are drawn as that many convolutions side by side (normalInit). */
  constructor(random: Random, readonly kernel: number, channels: number, blocks = 1) {
    super();
    // The spread of PyTorch's Conv1d default (uniform in +-1/sqrt(fan_in), fan_in = K for depthwise).
    this.weight = this.param('weight', normalInit(random, [kernel, channels], 1 / Math.sqrt(3 * kernel), blocks));
  }

  /** x: [B, K - 1 + n, C] -> [B, n, C] */
  forward(x: tf.Tensor): tf.Tensor {
    return causalConvolution(x, this.weight);
  }
}

/**
 * out_t = sum_j w_j x_{t-j} for x [B, K - 1 + n, C] (the K - 1 rows before the output's first, then
 * its n) and taps w [K, C]: [B, n, C]. One kernel where the backend has it; written out, a slice and
 * a product per tap and their sum.
 */
export function causalConvolution(x: tf.Tensor, weight: tf.Tensor): tf.Tensor {
  return kernelOr(CAUSAL_CONV_KERNEL, { x, weight }, {}, () => {
    const kernel = weight.shape[0]!;
    const rows = x.shape[1]! - (kernel - 1);
    return tf.addN(Array.from({ length: kernel }, (_, j) => x.slice([0, kernel - 1 - j, 0], [-1, rows, -1]).mul(weight.slice([j, 0], [1, -1]))));
  });
}

/** MAC's layout of rows: `count` long-term memory tokens at the start of every `every` rows, text in the rest. */
export interface TokenLayout {
  every: number;
  count: number;
}

/** The text rows of x [B, n, C], whose first row is row `start` of the sequence; null when it has none. */
export function textRowsOf(x: tf.Tensor, start: number, layout: TokenLayout): tf.Tensor | null {
  const { grid, textLead, textRows } = periods(x, start, layout);
  if (textRows === 0) return null;
  const [batch, , , channels] = grid.shape as number[];
  return grid.slice([0, 0, layout.count, 0], [-1, -1, -1, -1]).reshape([batch!, -1, channels!]).slice([0, textLead, 0], [-1, textRows, -1]);
}

/** x [B, n, C] (as textRowsOf) with its text rows replaced by `text`. */
export function withTextRows(x: tf.Tensor, text: tf.Tensor, start: number, layout: TokenLayout): tf.Tensor {
  const { grid, lead, textLead, textRows } = periods(x, start, layout);
  const [batch, numPeriods, every, channels] = grid.shape as number[];
  const textPerPeriod = every! - layout.count;
  const textGrid = text.pad([[0, 0], [textLead, numPeriods! * textPerPeriod - textLead - textRows], [0, 0]]).reshape([batch!, numPeriods!, textPerPeriod, channels!]);
  const memory = grid.slice([0, 0, 0, 0], [-1, -1, layout.count, -1]);
  return tf.concat([memory, textGrid], 2).reshape([batch!, -1, channels!]).slice([0, lead, 0], [-1, x.shape[1]!, -1]);
}

/** x padded to whole periods, [B, periods, every, C]; x's offset in its first period; where its text rows begin and how many. */
function periods(x: tf.Tensor, start: number, { every, count }: TokenLayout): { grid: tf.Tensor4D; lead: number; textLead: number; textRows: number } {
  const [batch, rows, channels] = x.shape as number[];
  const lead = start % every;
  const numPeriods = Math.ceil((lead + rows!) / every);
  const textBefore = (position: number) => Math.floor(position / every) * (every - count) + Math.max(0, (position % every) - count);
  const grid = x.pad([[0, 0], [lead, numPeriods * every - lead - rows!], [0, 0]]).reshape([batch!, numPeriods, every, channels!]) as tf.Tensor4D;
  return { grid, lead, textLead: Math.max(0, lead - count), textRows: textBefore(start + rows!) - textBefore(start) };
}

/** Dropout that draws its masks from the model's seeded generator, so a training run is repeatable. */
export class Dropout {
  constructor(
    readonly rate: number,
    private readonly random: Random,
  ) {}

  apply(x: tf.Tensor): tf.Tensor {
    if (this.rate === 0) return x.clone();
    return tf.dropout(x, this.rate, undefined, this.random.seed());
  }
}

/** tf.tidy for a result that holds tensors in plain objects (with nulls), which tidy's types do not describe. */
export function tidyObject<T>(fn: () => T): T {
  return tf.tidy(fn as unknown as () => tf.TensorContainer) as unknown as T;
}

/**
 * One-hot rows as float32. The WASM OneHot kernel ignores a float32 dtype and writes integer bits
 * (1 reads as 1.4e-45), so the one-hot is made as int32 and cast.
 */
export function oneHotFloat(ids: tf.Tensor, depth: number): tf.Tensor {
  return tf.tidy(() => tf.oneHot(ids.toInt(), depth).toFloat());
}

/**
 * 0 where an id is in [0, depth), NaN where it is not. A one-hot row of an id out of range is all
 * zeros: as an embedding it reads as a token that means nothing, and as a target as one predicted
 * perfectly. Added to what the id gives, NaN shows in every result instead, and the ids are never
 * read back from the device to check them.
 */
export function notANumberWhereOutOfRange(ids: tf.Tensor, depth: number): tf.Tensor {
  return tf.tidy(() => tf.where(ids.greaterEqual(0).logicalAnd(ids.less(depth)), tf.scalar(0), tf.scalar(Number.NaN)));
}

/**
 * Scaled dot-product attention. q: [B, H, Tq, dh], k and v: [B, H, Tk, dh], mask broadcastable to
 * [B, H, Tq, Tk] -> [B, H, Tq, dh]. A single query without a mask, a decoding step's, is one kernel
 * where the backend has it.
 */
export function attend(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, mask?: tf.Tensor): tf.Tensor {
  const writtenOut = () => {
    let scores = tf.matMul(q, k, false, true).mul(attentionScale(q)); // [B, H, Tq, Tk]
    if (mask) scores = scores.add(mask);
    return tf.matMul(tf.softmax(scores), v);
  };
  return mask || q.shape[2] !== 1 ? tf.tidy(writtenOut) : kernelOr(ATTENTION_KERNEL, { q, k, v }, {}, writtenOut);
}

/**
 * Multi-head attention of every position to every other, without a mask, from a packed projection
 * [B, T, 3 H dh] (queries, keys and values side by side, as a ViT's toQKV makes them) -> [B, T, H dh],
 * the heads merged. One kernel where the backend has it: with a native BLAS, WASM's reads each head's
 * columns in place and writes its output in place, sparing the split and four transposes.
 */
export function selfAttention(qkv: tf.Tensor3D, heads: number): tf.Tensor3D {
  const packed = qkv.shape[2];
  if (!Number.isInteger(heads) || heads < 1 || packed % (3 * heads) !== 0) {
    throw new Error(`selfAttention: a packed projection of width ${packed} does not hold queries, keys and values of ${heads} heads`);
  }
  return kernelOr(SELF_ATTENTION_KERNEL, { qkv }, { heads }, () => {
    const [q, k, v] = headsOfPacked(qkv, heads);
    return mergeHeads(attend(q!, k!, v!));
  }) as tf.Tensor3D;
}

/** A packed projection [B, T, 3 H dh] -> its queries, keys and values, [B, H, T, dh] each. */
function headsOfPacked(qkv: tf.Tensor, heads: number): tf.Tensor4D[] {
  return tf.split(qkv, 3, -1).map((part) => splitHeads(part, heads));
}

/** 1 / sqrt(dh), by which attention scales its scores. */
function attentionScale(q: tf.Tensor): number {
  return 1 / Math.sqrt(q.shape.at(-1)!);
}

/** [B, T, H * dh] -> [B, H, T, dh]; a single row (T = 1) is only reshaped, as its layout does not change. */
export function splitHeads(x: tf.Tensor, heads: number): tf.Tensor4D {
  const [b, t, d] = x.shape as [number, number, number];
  if (t === 1) return x.reshape([b, heads, 1, d / heads]);
  return x.reshape([b, t, heads, d / heads]).transpose([0, 2, 1, 3]) as tf.Tensor4D;
}

/** [B, H, T, dh] -> [B, T, H * dh]; a single row is only reshaped. */
export function mergeHeads(x: tf.Tensor): tf.Tensor3D {
  const [b, h, t, dh] = x.shape as [number, number, number, number];
  if (t === 1) return x.reshape([b, 1, h * dh]);
  return x.transpose([0, 2, 1, 3]).reshape([b, t, h * dh]) as tf.Tensor3D;
}

/**
 * x repeated along its axes of size 1 up to `shape` (of the same rank), as tf.broadcastTo. That op
 * runs Tile, whose registered gradient adds up one slice of the output's gradient per copy: a slice
 * and an add per row of the batch, each a kernel launch on a GPU. This gradient is one sum.
 */
export function broadcast<T extends tf.Tensor>(x: T, shape: number[]): T {
  const repeated = shape.flatMap((size, axis) => (x.shape[axis] === size ? [] : [axis]));
  if (repeated.length === 0) return x.clone() as T;
  const withGradient = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => ({
    value: tf.broadcastTo(args[0] as tf.Tensor, shape),
    gradFunc: (dy: tf.Tensor) => dy.sum(repeated, true),
  }));
  return withGradient(x) as T;
}

/**
 * LayerNorm's backward pass over the last axis, from the gradient of its normalised rows to that of
 * its input: the mean and the normalised direction carry no gradient.
 */
export function normalizedInputGradient(dNormalized: tf.Tensor, normalized: tf.Tensor, inverseStd: tf.Tensor): tf.Tensor {
  return dNormalized
    .sub(dNormalized.mean(-1, true))
    .sub(normalized.mul(dNormalized.mul(normalized).mean(-1, true)))
    .mul(inverseStd);
}

/** A per-feature gradient: the sum over every axis but the last. */
function sumOverRows(x: tf.Tensor): tf.Tensor {
  return x.reshape([-1, x.shape.at(-1)!]).sum(0);
}

tf.registerGradient({
  kernelName: PRODUCT_KERNEL,
  inputsToSave: ['x', 'weight'],
  gradFunc: (dy, [x, weight]) => ({
    x: () => (dy as tf.Tensor).matMul(weight!, false, true),
    weight: () => x!.matMul(dy as tf.Tensor, true, false),
  }),
});

tf.registerGradient({
  kernelName: AFFINE_KERNEL,
  inputsToSave: ['x', 'weight', 'bias'],
  outputsToSave: [true],
  gradFunc: (dy, [x, weight, bias, y], attrs) => {
    // Through a sigmoid y, the product's gradient is dy y (1 - y).
    const dProduct = attrs.activation === 'sigmoid' ? (dy as tf.Tensor).mul(y!.mul(y!.neg().add(1))) : (dy as tf.Tensor);
    return {
      x: () => dProduct.matMul(weight!, false, true),
      weight: () => x!.matMul(dProduct, true, false),
      bias: () => (bias!.rank === 1 ? dProduct.sum(0) : dProduct),
    };
  },
});

/**
 * LayerNorm's input gradient from u, the gradient of its normalised rows n = (x - mean) r,
 * r = (variance + eps)^-1/2. One kernel where the backend has it: it runs only in LayerNorm's
 * gradient, which nothing differentiates again, so it has no gradient of its own.
 */
function layerNormInputGradient(u: tf.Tensor, x: tf.Tensor, eps: number): tf.Tensor {
  return kernelOr(LAYER_NORM_INPUT_GRADIENT_KERNEL, { u, x }, { eps }, () => {
    const { mean, variance } = tf.moments(x, -1, true);
    const inverseStd = variance.add(eps).rsqrt();
    return normalizedInputGradient(u, x.sub(mean).mul(inverseStd), inverseStd);
  });
}

tf.registerGradient({
  kernelName: LAYER_NORM_KERNEL,
  inputsToSave: ['x', 'gain'],
  gradFunc: (dy, [x, gain], attrs) => {
    // y = n g + b, and u = dy g the gradient of n; n is the norm with a gain of ones and no bias.
    const eps = attrs.eps as number;
    return {
      x: () => layerNormInputGradient((dy as tf.Tensor).mul(gain!), x!, eps),
      gain: () => sumOverRows((dy as tf.Tensor).mul(layerNorm(x!, tf.onesLike(gain!), tf.zerosLike(gain!), eps))),
      bias: () => sumOverRows(dy as tf.Tensor),
    };
  },
});

/** How scaledRowsGradient's r reduces x^2 over a row. */
type RowReduction = 'mean' | 'sum';

/**
 * The gradient of x r over the last axis, r = (reduce(x^2) + eps)^-1/2 (RMSNorm's r with a mean,
 * L2 normalisation's with a sum), from u, the gradient of x r: r u - x r^3 reduce(u x). One kernel
 * where the backend has it: it runs only in those gradients, which nothing differentiates again, so
 * it has no gradient of its own.
 */
function scaledRowsGradient(u: tf.Tensor, x: tf.Tensor, eps: number, reduction: RowReduction): tf.Tensor {
  return kernelOr(SCALED_ROWS_GRADIENT_KERNEL, { u, x }, { eps, reduction }, () => {
    const reduce = (t: tf.Tensor) => (reduction === 'mean' ? t.mean(-1, true) : t.sum(-1, true));
    const inverse = reduce(x.square()).add(eps).rsqrt();
    return u.mul(inverse).sub(x.mul(inverse.pow(3)).mul(reduce(u.mul(x))));
  });
}

/** RMSNorm's gradients for x and the gain from dy, the gradient of its output. */
function rmsNormGradients(dy: tf.Tensor, x: tf.Tensor, gain: tf.Tensor, eps: number): { x: () => tf.Tensor; gain: () => tf.Tensor } {
  // y = x r g with r = (mean(x^2) + eps)^-1/2; x r is the norm with a gain of ones.
  return {
    x: () => scaledRowsGradient(dy.mul(gain), x, eps, 'mean'),
    gain: () => sumOverRows(dy.mul(rmsNorm(x, tf.onesLike(gain), eps))),
  };
}

tf.registerGradient({
  kernelName: RMS_NORM_KERNEL,
  inputsToSave: ['x', 'gain'],
  gradFunc: (dy, [x, gain], attrs) => rmsNormGradients(dy as tf.Tensor, x!, gain!, attrs.eps as number),
});

/**
 * The gradients of RMSNorm(x) W for x, the gain and W from dProduct, that of the product;
 * `normalized` is RMSNorm(x), taken again, as the kernels do not keep it.
 */
function normalizedProductGradients(dProduct: tf.Tensor, x: tf.Tensor, gain: tf.Tensor, weight: tf.Tensor, eps: number, normalized: tf.Tensor) {
  return {
    ...rmsNormGradients(dProduct.matMul(weight, false, true), x, gain, eps),
    weight: () => normalized.matMul(dProduct, true, false),
  };
}

tf.registerGradient({
  kernelName: NORMALIZED_AFFINE_GELU_KERNEL,
  inputsToSave: ['x', 'gain', 'weight', 'bias'],
  gradFunc: (dy, [x, gain, weight, bias], attrs) => {
    const eps = attrs.eps as number;
    const normalized = rmsNorm(x!, gain!, eps);
    // Through the GELU, at the product taken again.
    const dProduct = (dy as tf.Tensor).mul(geluDerivative(affine(normalized, weight!, bias!)));
    return { ...normalizedProductGradients(dProduct, x!, gain!, weight!, eps, normalized), bias: () => dProduct.sum(0) };
  },
});

tf.registerGradient({
  kernelName: FEED_FORWARD_KERNEL,
  inputsToSave: ['x', 'upWeight', 'upBias', 'downWeight'],
  gradFunc: (dy, [x, upWeight, upBias, downWeight]) => {
    // The hidden layer taken again, as the kernel does not keep it.
    const product = affine(x!, upWeight!, upBias!);
    const dProduct = (dy as tf.Tensor).matMul(downWeight!, false, true).mul(geluDerivative(product));
    return {
      x: () => dProduct.matMul(upWeight!, false, true),
      upWeight: () => x!.matMul(dProduct, true, false),
      upBias: () => dProduct.sum(0),
      downWeight: () => gelu(product).matMul(dy as tf.Tensor, true, false),
      downBias: () => (dy as tf.Tensor).sum(0),
    };
  },
});

tf.registerGradient({
  kernelName: NORMALIZED_PRODUCT_KERNEL,
  inputsToSave: ['x', 'gain', 'weight'],
  gradFunc: (dy, [x, gain, weight], attrs) => {
    const eps = attrs.eps as number;
    return normalizedProductGradients(dy as tf.Tensor, x!, gain!, weight!, eps, rmsNorm(x!, gain!, eps));
  },
});

tf.registerGradient({
  kernelName: L2_NORM_KERNEL,
  inputsToSave: ['x'],
  gradFunc: (dy, [x], attrs) => ({ x: () => scaledRowsGradient(dy as tf.Tensor, x!, attrs.eps as number, 'sum') }),
});

/** The gradients of attend(q, k, v) without a mask for its output's gradient dy, all [B, H, T, dh]. */
function attentionGradients(dy: tf.Tensor, q: tf.Tensor, k: tf.Tensor, v: tf.Tensor): { q: tf.Tensor; k: tf.Tensor; v: tf.Tensor } {
  // p = softmax(s q k^T): d(scores) = p (dp - sum(dp p)), dp = dy v^T.
  const scale = attentionScale(q);
  const p = tf.softmax(tf.matMul(q, k, false, true).mul(scale));
  const dp = tf.matMul(dy, v, false, true);
  const dScores = p.mul(dp.sub(dp.mul(p).sum(-1, true))).mul(scale);
  return { q: tf.matMul(dScores, k), k: tf.matMul(dScores, q, true, false), v: tf.matMul(p, dy, true, false) };
}

tf.registerGradient({
  kernelName: ATTENTION_KERNEL,
  inputsToSave: ['q', 'k', 'v'],
  gradFunc: (dy, [q, k, v]) => {
    const gradients = attentionGradients(dy as tf.Tensor, q!, k!, v!);
    return { q: () => gradients.q, k: () => gradients.k, v: () => gradients.v };
  },
});

tf.registerGradient({
  kernelName: SELF_ATTENTION_KERNEL,
  inputsToSave: ['qkv'],
  gradFunc: (dy, [qkv], attrs) => ({
    qkv: () => {
      const heads = attrs.heads as number;
      const [q, k, v] = headsOfPacked(qkv!, heads);
      const gradients = attentionGradients(splitHeads(dy as tf.Tensor, heads), q!, k!, v!);
      return tf.concat([gradients.q, gradients.k, gradients.v].map(mergeHeads), -1);
    },
  }),
});

tf.registerGradient({
  kernelName: CAUSAL_CONV_KERNEL,
  inputsToSave: ['x', 'weight'],
  gradFunc: (dy, [x, weight]) => {
    const kernel = weight!.shape[0]!;
    const [rows, channels] = (dy as tf.Tensor).shape.slice(1) as [number, number];
    const taps = Array.from({ length: kernel }, (_, j) => j);
    return {
      // Tap j read x from row K - 1 - j on: its share of dy goes back there.
      x: () => tf.addN(taps.map((j) => (dy as tf.Tensor).mul(weight!.slice([j, 0], [1, -1])).pad([[0, 0], [kernel - 1 - j, j], [0, 0]]))),
      weight: () => tf.concat(taps.map((j) => (dy as tf.Tensor).mul(x!.slice([0, kernel - 1 - j, 0], [-1, rows, -1])).reshape([-1, channels]).sum(0, true)), 0),
    };
  },
});

tf.registerGradient({
  kernelName: GELU_KERNEL,
  inputsToSave: ['x'],
  gradFunc: (dy, [x]) => ({ x: () => (dy as tf.Tensor).mul(geluDerivative(x!)) }),
});

tf.registerGradient({
  kernelName: GELU_DERIVATIVE_KERNEL,
  inputsToSave: ['x'],
  gradFunc: (dy, [x]) => ({ x: () => (dy as tf.Tensor).mul(geluSecondDerivative(x!)) }),
});

tf.registerGradient({
  kernelName: GELU_SECOND_DERIVATIVE_KERNEL,
  inputsToSave: ['x'],
  gradFunc: (dy, [x]) => ({
    x: () => {
      // gelu''' = s (h' - 2 t u' h), h = u' + 0.5 x (u'' - 2 t u'^2) and t' = s u'.
      const { t, s, du } = geluTerms(x!);
      const ddu = x!.mul(GELU_DDDU);
      const curvature = ddu.sub(t.mul(2).mul(du.square()));
      const h = du.add(x!.mul(0.5).mul(curvature));
      const dCurvature = tf.scalar(GELU_DDDU).sub(s.mul(du).mul(du.square()).mul(2)).sub(t.mul(4).mul(du).mul(ddu));
      const dh = ddu.add(curvature.mul(0.5)).add(x!.mul(0.5).mul(dCurvature));
      return (dy as tf.Tensor).mul(s.mul(dh.sub(t.mul(2).mul(du).mul(h))));
    },
  }),
});
