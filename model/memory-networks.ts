/**
 * The networks M whose weights are the long-term memory (Titans, section 3.1). Each one gives its
 * forward pass and the closed form of its backward pass, so that the surprise (the gradient of the
 * inner loss with respect to the weights) is ordinary tensor algebra: the outer training then
 * differentiates through the memory updates with first-order autodiff, and no gradient-of-gradient
 * machinery is needed. Weights carry two leading dims, [B, H, ...], one memory per sequence and head.
 */
import * as tf from '@tensorflow/tfjs-core';
import { gelu, geluDerivative } from './layers.ts';

export interface MemoryNetwork {
  readonly kind: string;
  /** Shapes of one head's weights for a memory of width `dim`. */
  weightShapes(dim: number): number[][];
  /** x: [B, H, n, dim] -> [B, H, n, dim] */
  forward(weights: tf.Tensor[], x: tf.Tensor): tf.Tensor;
  /**
   * The forward pass with what its backward pass needs kept: `backward(outputGrad)` is
   * d sum(outputGrad * output) / d weights, one tensor per weight, [B, H, ...shape].
   */
  trace(weights: tf.Tensor[], x: tf.Tensor): MemoryTrace;
}

export interface MemoryTrace {
  output: tf.Tensor;
  backward(outputGrad: tf.Tensor): tf.Tensor[];
}

/** A GELU MLP without biases; depth 1 is the linear memory of the paper's simplest variant. */
export class MemoryMLP implements MemoryNetwork {
  readonly kind: string;

  constructor(
    readonly depth: number,
    readonly expansionFactor: number,
  ) {
    this.kind = depth === 1 ? 'linear' : 'mlp';
  }

  weightShapes(dim: number): number[][] {
    const hidden = dim * this.expansionFactor;
    const widths = [dim, ...Array<number>(this.depth - 1).fill(hidden), dim];
    return widths.slice(0, -1).map((w, i) => [w, widths[i + 1]!]);
  }

  forward(weights: tf.Tensor[], x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => weights.reduce((h, w, i) => (i > 0 ? tf.matMul(gelu(h), w) : tf.matMul(h, w)), x));
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

  weightShapes(dim: number): number[][] {
    const hidden = dim * this.expansionFactor;
    return [[dim, hidden], [dim, hidden], [hidden, dim]];
  }

  forward(weights: tf.Tensor[], x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => this.trace(weights, x).output);
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

export function memoryNetwork(kind: 'mlp' | 'linear' | 'swiglu' | MemoryNetwork, depth: number, expansionFactor: number): MemoryNetwork {
  if (typeof kind !== 'string') return kind;
  if (kind === 'linear') return new MemoryMLP(1, expansionFactor);
  if (kind === 'swiglu') return new MemorySwiGLU(expansionFactor);
  return new MemoryMLP(depth, expansionFactor);
}
