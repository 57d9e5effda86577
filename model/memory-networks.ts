/**
 * The networks M whose weights are the long-term memory (Titans, section 3.1). Each one gives its
 * forward pass and the closed form of its backward pass, so that the surprise (the gradient of the
 * inner loss with respect to the weights) is ordinary tensor algebra: the outer training then
 * differentiates through the memory updates with first-order autodiff, and no gradient-of-gradient
 * machinery is needed. Weights carry two leading dims, [B, H, ...], one memory per sequence and head.
 */
import * as tf from '@tensorflow/tfjs-core';
import { gelu, geluDerivative, kernelOr, normalizedInputGradient } from './layers.ts';

export interface MemoryNetwork {
  readonly kind: string;
  /** One head's weights for a memory of width `dim`: each one's shape and the spread of its initial values. */
  weightSpecs(dim: number): WeightSpec[];
  /** x: [B, H, n, dim] -> [B, H, n, dim] */
  forward(weights: tf.Tensor[], x: tf.Tensor): tf.Tensor;
  /**
   * The forward pass with what its backward pass needs kept: `backward(outputGrad)` is
   * d sum(outputGrad * output) / d weights, one tensor per weight, [B, H, ...shape].
   */
  trace(weights: tf.Tensor[], x: tf.Tensor): MemoryTrace;
  /**
   * The surprise, d/dW sum_i r_i mean_d (M(x_i) - v_i)^2, one tensor per weight, for values v
   * [B, H, n, dim] and row weights r [B, H, n, 1]. `decoding`: nothing differentiates it, so a
   * network may take it in kernels that have no gradient, where the backend has them.
   */
  surprise(weights: tf.Tensor[], x: tf.Tensor, values: tf.Tensor, rowWeights: tf.Tensor, decoding: boolean): tf.Tensor[];
  /** Where MEMORY_READ_KERNEL computes the forward pass of this network, the attrs it needs; undefined where it does not. */
  readonly readKernelAttrs?: MemoryReadAttrs;
}

/**
 * A kernel that reads an MLP memory, with or without its residual norm, for the queries of projected
 * rows, in one launch, for a backend that registers one (webgpu): inputs `projected` [B, n, 3 H dh]
 * (queries, keys, values) and `weight0`.. (the MLP's, then gamma); attrs `heads`, `normalizeQueries`
 * (L2, eps 1e-6) and these; output [B, H, n, dh]. It has no gradient (NeuralMemory.retrieve).
 */
export const MEMORY_READ_KERNEL = 'TitansMemoryRead';

/** The widest layer, dh included, that MEMORY_READ_KERNEL reads: a layer's values wait in workgroup memory, 16 KiB on any WebGPU device. */
export const MEMORY_READ_MAX_WIDTH = 1024;

export interface MemoryReadAttrs extends tf.NamedAttrMap {
  /** The residual norm's eps, 0 without one. */
  residualNormEps: number;
}

export interface WeightSpec {
  shape: number[];
  /** Standard deviation of the normal initial values; 0 starts the weight at zero. */
  std: number;
}

export interface MemoryTrace {
  output: tf.Tensor;
  backward(outputGrad: tf.Tensor): tf.Tensor[];
}

/** MemoryNetwork.surprise through a trace's backward pass. */
function surpriseOf({ output, backward }: MemoryTrace, values: tf.Tensor, rowWeights: tf.Tensor): tf.Tensor[] {
  return backward(output.sub(values).mul(rowWeights).mul(2 / values.shape.at(-1)!));
}

/** A GELU MLP without biases; depth 1 is the linear memory of the paper's simplest variant. */
export class MemoryMLP implements MemoryNetwork {
  readonly kind: string;
  readonly readKernelAttrs: MemoryReadAttrs = { residualNormEps: 0 };

  constructor(
    readonly depth: number,
    readonly expansionFactor: number,
  ) {
    this.kind = depth === 1 ? 'linear' : 'mlp';
  }

  weightSpecs(dim: number): WeightSpec[] {
    const hidden = dim * this.expansionFactor;
    const widths = [dim, ...Array<number>(this.depth - 1).fill(hidden), dim];
    return widths.slice(0, -1).map((w, i) => matrix(w, widths[i + 1]!));
  }

  forward(weights: tf.Tensor[], x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => this.trace(weights, x).output);
  }

  surprise(weights: tf.Tensor[], x: tf.Tensor, values: tf.Tensor, rowWeights: tf.Tensor): tf.Tensor[] {
    return surpriseOf(this.trace(weights, x), values, rowWeights);
  }

  trace(weights: tf.Tensor[], x: tf.Tensor): MemoryTrace {
    // inputs[i] feeds weight i; preActivations[i] = inputs[i] @ W_i.
    const inputs: tf.Tensor[] = [x];
    const preActivations: tf.Tensor[] = [];
    weights.forEach((w, i) => {
      preActivations.push(tf.matMul(inputs[i]!, w));
      if (i < weights.length - 1) inputs.push(gelu(preActivations[i]!));
    });
    const backward = (outputGrad: tf.Tensor) => {
      const grads: tf.Tensor[] = [];
      let delta = outputGrad;
      for (let i = weights.length - 1; i >= 0; i--) {
        grads[i] = tf.matMul(inputs[i]!, delta, true, false); // [B, H, in, out]
        if (i > 0) delta = tf.matMul(delta, weights[i]!, false, true).mul(geluDerivative(preActivations[i - 1]!));
      }
      return grads;
    };
    return { output: preActivations[preActivations.length - 1]!, backward };
  }
}

/** y = (silu(x Wg) * (x Wu)) Wd, the gated MLP of modern transformers. */
export class MemorySwiGLU implements MemoryNetwork {
  readonly kind = 'swiglu';

  constructor(readonly expansionFactor: number) {}

  weightSpecs(dim: number): WeightSpec[] {
    const hidden = dim * this.expansionFactor;
    return [matrix(dim, hidden), matrix(dim, hidden), matrix(hidden, dim)];
  }

  forward(weights: tf.Tensor[], x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => this.trace(weights, x).output);
  }

  surprise(weights: tf.Tensor[], x: tf.Tensor, values: tf.Tensor, rowWeights: tf.Tensor): tf.Tensor[] {
    return surpriseOf(this.trace(weights, x), values, rowWeights);
  }

  trace(weights: tf.Tensor[], x: tf.Tensor): MemoryTrace {
    const [gate, up, down] = weights as [tf.Tensor, tf.Tensor, tf.Tensor];
    const g = tf.matMul(x, gate);
    const u = tf.matMul(x, up);
    const s = g.sigmoid();
    const silu = g.mul(s);
    const hidden = silu.mul(u);
    const backward = (outputGrad: tf.Tensor) => {
      const dDown = tf.matMul(hidden, outputGrad, true, false);
      const dHidden = tf.matMul(outputGrad, down, false, true);
      const dSilu = s.add(silu.mul(s.neg().add(1))); // d silu(g) / dg
      const dGate = tf.matMul(x, dHidden.mul(u).mul(dSilu), true, false);
      const dUp = tf.matMul(x, dHidden.mul(silu), true, false);
      return [dGate, dUp, dDown];
    };
    return { output: tf.matMul(hidden, down), backward };
  }
}

/**
 * y = LayerNorm(M(x)) * (1 + gamma) + x, the memory network of TTT (Sun et al. 2024) that the
 * reference implementation wraps every memory in: whatever the weights of M become, the output stays
 * within a normalised distance of its input, so what the memory returns, and the surprise it
 * stores next, cannot grow without bound. gamma is a memory weight like the others, starting at 0.
 */
export class ResidualNorm implements MemoryNetwork {
  readonly kind: string;
  readonly readKernelAttrs?: MemoryReadAttrs;

  constructor(
    readonly inner: MemoryNetwork,
    private readonly eps = 1e-5,
  ) {
    this.kind = inner.kind;
    if (inner.readKernelAttrs?.residualNormEps === 0) this.readKernelAttrs = { residualNormEps: eps };
  }

  weightSpecs(dim: number): WeightSpec[] {
    return [...this.inner.weightSpecs(dim), { shape: [1, dim], std: 0 }];
  }

  forward(weights: tf.Tensor[], x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => this.trace(weights, x).output);
  }

  surprise(weights: tf.Tensor[], x: tf.Tensor, values: tf.Tensor, rowWeights: tf.Tensor, decoding: boolean): tf.Tensor[] {
    if (!decoding || tf.getKernel(RESIDUAL_NORM_SURPRISE_KERNEL, tf.getBackend()) === undefined) return surpriseOf(this.trace(weights, x), values, rowWeights);
    const gamma = weights[weights.length - 1]!;
    const inner = this.inner.trace(weights.slice(0, -1), x);
    const [dInput, dGamma] = (['input', 'gamma'] as const).map((part) =>
      tf.engine().runKernel(RESIDUAL_NORM_SURPRISE_KERNEL, { y: inner.output, gamma, x, values, rowWeights }, { eps: this.eps, part }) as tf.Tensor);
    return [...inner.backward(dInput!), dGamma!];
  }

  trace(weights: tf.Tensor[], x: tf.Tensor): MemoryTrace {
    const gamma = weights[weights.length - 1]!; // [B, H, 1, dim]
    const inner = this.inner.trace(weights.slice(0, -1), x);
    // What the backward pass needs is computed again there: a read, most of a decoded token's
    // memory work, needs the output alone, one launch on a GPU (residualNorm).
    const backward = (outputGrad: tf.Tensor) => {
      const { dInput, dGamma } = residualNormBackward(outputGrad, inner.output, gamma, this.eps);
      return [...inner.backward(dInput), dGamma];
    };
    return { output: residualNorm(inner.output, gamma, x, this.eps), backward };
  }
}

/** A kernel that computes `residualNorm` in one launch, for a backend that registers one (webgpu, wasm). */
export const RESIDUAL_NORM_KERNEL = 'TitansResidualNorm';

/**
 * A decoding store's surprise through the residual norm, for a backend that registers it (webgpu, wasm):
 * with e = (residualNorm(y, gamma, x) - values) r 2 / dim, attr `part` 'input' gives d/dy
 * [B, H, n, dim] and 'gamma' d/dgamma [B, H, 1, dim], each in one launch where written out they
 * are some 20 (residualNormBackward). It has no gradient: training stores through the ops.
 */
export const RESIDUAL_NORM_SURPRISE_KERNEL = 'TitansResidualNormSurprise';

/**
 * LayerNorm(y) * (1 + gamma) + x over the last axis, the LayerNorm without a gain or bias of its own;
 * y, x [B, H, n, dim], gamma [B, H, 1, dim].
 */
export function residualNorm(y: tf.Tensor, gamma: tf.Tensor, x: tf.Tensor, eps: number): tf.Tensor {
  return kernelOr(RESIDUAL_NORM_KERNEL, { y, gamma, x }, { eps }, () => standardized(y, eps).normalized.mul(gamma.add(1)).add(x));
}

/** (y - mean) / std over the last axis, and 1 / std: tf.moments would add a cast and a reshape to the same arithmetic. */
function standardized(y: tf.Tensor, eps: number): { normalized: tf.Tensor; inverseStd: tf.Tensor } {
  const centered = y.sub(y.mean(-1, true));
  const inverseStd = centered.square().mean(-1, true).add(eps).rsqrt();
  return { normalized: centered.mul(inverseStd), inverseStd };
}

/** d sum(outputGrad * residualNorm(y, gamma, x)) / d y and / d gamma (its gradient for x is outputGrad). */
function residualNormBackward(outputGrad: tf.Tensor, y: tf.Tensor, gamma: tf.Tensor, eps: number): { dInput: tf.Tensor; dGamma: tf.Tensor } {
  const { normalized, inverseStd } = standardized(y, eps);
  const dGamma = outputGrad.mul(normalized).sum(-2, true);
  return { dInput: normalizedInputGradient(outputGrad.mul(gamma.add(1)), normalized, inverseStd), dGamma };
}

tf.registerGradient({
  kernelName: RESIDUAL_NORM_KERNEL,
  inputsToSave: ['y', 'gamma'],
  gradFunc: (dy, [y, gamma], attrs) => {
    const { dInput, dGamma } = residualNormBackward(dy as tf.Tensor, y!, gamma!, attrs.eps as number);
    return { y: () => dInput, gamma: () => dGamma, x: () => dy as tf.Tensor };
  },
});

function matrix(rows: number, cols: number): WeightSpec {
  return { shape: [rows, cols], std: 1 / Math.sqrt(rows) };
}

export function memoryNetwork(kind: 'mlp' | 'linear' | 'swiglu' | MemoryNetwork, depth: number, expansionFactor: number, residualNorm: boolean): MemoryNetwork {
  const network = typeof kind !== 'string' ? kind
    : kind === 'linear' ? new MemoryMLP(1, expansionFactor)
    : kind === 'swiglu' ? new MemorySwiGLU(expansionFactor)
    : new MemoryMLP(depth, expansionFactor);
  return residualNorm ? new ResidualNorm(network) : network;
}
