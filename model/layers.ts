/**
 * The building blocks shared by the vision encoder and the text model: linear maps, norms, GELU
 * and dropout. Every op here has a WASM kernel and a registered gradient (DESIGN.md section 2).
 */
import * as tf from '@tensorflow/tfjs-core';
import { Module, normalInit } from './module.ts';
import type { Random } from './random.ts';

export class Linear extends Module {
  readonly weight: tf.Variable; // [in, out]
  readonly bias?: tf.Variable; // [out]

  constructor(random: Random, inDim: number, outDim: number, options: { bias?: boolean; std?: number; biasInit?: number } = {}) {
    super();
    this.weight = this.param('weight', normalInit(random, [inDim, outDim], options.std ?? 0.02));
    if (options.bias ?? true) this.bias = this.param('bias', tf.fill([outDim], options.biasInit ?? 0));
  }

  /** x: [..., in] -> [..., out] */
  forward(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => {
      const [inDim, outDim] = this.weight.shape as [number, number];
      const flat = x.reshape([-1, inDim]);
      const y = flat.matMul(this.weight);
      const withBias = this.bias ? y.add(this.bias) : y;
      return withBias.reshape([...x.shape.slice(0, -1), outDim]);
    });
  }
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
    return tf.tidy(() => {
      const { mean, variance } = tf.moments(x, -1, true);
      return x.sub(mean).mul(variance.add(this.eps).rsqrt()).mul(this.gain).add(this.bias);
    });
  }
}

/** The text model uses RMSNorm, as the reference MAC implementation does: one op fewer per row. */
export class RMSNorm extends Module {
  readonly gain: tf.Variable;

  constructor(dim: number, private readonly eps = 1e-6) {
    super();
    this.gain = this.param('gain', tf.ones([dim]));
  }

  forward(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => x.mul(x.square().mean(-1, true).add(this.eps).rsqrt()).mul(this.gain));
  }
}

const GELU_C = Math.sqrt(2 / Math.PI);

/** GELU, tanh form: TensorFlow.js has no erf-based GELU, and its derivative is needed in closed form. */
export function gelu(x: tf.Tensor): tf.Tensor {
  return tf.tidy(() => {
    // x * x^2 rather than pow(x, 3): WASM's generic Pow kernel is several times slower.
    const inner = x.mul(x.square().mul(0.044715).add(1)).mul(GELU_C);
    return x.mul(inner.tanh().add(1)).mul(0.5);
  });
}

/** d gelu(x) / dx, for the neural memory's explicit backward pass. */
export function geluDerivative(x: tf.Tensor): tf.Tensor {
  return tf.tidy(() => {
    const x2 = x.square();
    const t = x.add(x.mul(x2).mul(0.044715)).mul(GELU_C).tanh();
    const dInner = x2.mul(3 * 0.044715).add(1).mul(GELU_C);
    return t.add(1).mul(0.5).add(x.mul(t.square().neg().add(1)).mul(dInner).mul(0.5));
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
      const h = this.down.forward(gelu(this.up.forward(x)));
      return dropout ? dropout.apply(h) : h;
    });
  }
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
 * Scaled dot-product attention. q: [B, H, Tq, dh], k and v: [B, H, Tk, dh], mask broadcastable to
 * [B, H, Tq, Tk] -> [B, H, Tq, dh].
 */
export function attend(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, mask?: tf.Tensor): tf.Tensor {
  return tf.tidy(() => {
    const dh = q.shape[q.rank - 1]!;
    let scores = tf.matMul(q, k, false, true).mul(1 / Math.sqrt(dh)); // [B, H, Tq, Tk]
    if (mask) scores = scores.add(mask);
    return tf.matMul(tf.softmax(scores), v);
  });
}

/** [B, T, H * dh] -> [B, H, T, dh] */
export function splitHeads(x: tf.Tensor, heads: number): tf.Tensor4D {
  const [b, t, d] = x.shape as [number, number, number];
  return x.reshape([b, t, heads, d / heads]).transpose([0, 2, 1, 3]) as tf.Tensor4D;
}

/** [B, H, T, dh] -> [B, T, H * dh] */
export function mergeHeads(x: tf.Tensor): tf.Tensor3D {
  const [b, h, t, dh] = x.shape as [number, number, number, number];
  return x.transpose([0, 2, 1, 3]).reshape([b, t, h * dh]) as tf.Tensor3D;
}
