/**
 * How a store moves the memory's weights once the surprise is known (Titans, section 3.1): each
 * head's surprise clipped to a norm, the momentum, then forgetting. Every weight is [B, H, a, b] and
 * every per-head factor [B, H, 1, 1].
 *
 * Written out in TensorFlow.js ops this is some 8 launches a weight and 7 more for the clip; on a GPU
 * each launch costs about the same whatever its size, on WASM each is a pass over the weight, and a
 * long prompt's prefill stores a chunk per memory layer every 36 rows or so (docs/gpu.md). So each
 * step is a kernel for a backend that registers one (webgpu: one launch each; wasm: one SIMD pass),
 * with its gradient, as training differentiates through the stores; the cpu backend runs the ops
 * written out.
 */
import * as tf from '@tensorflow/tfjs-core';
import { kernelOr } from './layers.ts';

/** Inputs: the surprises of one memory's weights, in order; attr `maxNorm`; output the clip factor [B, H, 1, 1]. */
export const CLIP_FACTOR_KERNEL = 'TitansClipFactor';
/** Inputs: surprise, then clip where `clipped`, then eta and momentum where `withMomentum` (attrs); output S'. */
export const MOMENTUM_STEP_KERNEL = 'TitansMomentumStep';
/** Inputs: weights, forgetting, update; output W'. */
export const FORGET_STEP_KERNEL = 'TitansForgetStep';

/** What clipping adds to the sum of squares, so that a zero surprise has a finite factor. */
export const CLIP_EPS = 1e-12;

/**
 * min(1, maxNorm / |g|) for each head, |g| the norm of its surprises over all the memory's weights
 * together: the factor that clips them to maxNorm.
 */
export function clipFactor(surprises: tf.Tensor[], maxNorm: number): tf.Tensor {
  return kernelOr(CLIP_FACTOR_KERNEL, surprises, { maxNorm }, () => {
    const sumSquares = surprises.map((g) => g.square().sum([2, 3])).reduce((a, b) => a.add(b)); // [B, H]
    return tf.minimum(sumSquares.add(CLIP_EPS).rsqrt().mul(maxNorm), 1).reshape([...sumSquares.shape, 1, 1]);
  });
}

/**
 * S' = eta S - c g for one weight (the paper's momentum over surprises), c the clip factor where
 * there is one; without momentum, S' = -c g.
 */
export function momentumStep(surprise: tf.Tensor, { clip, eta, momentum }: { clip?: tf.Tensor; eta?: tf.Tensor; momentum?: tf.Tensor }): tf.Tensor {
  const withMomentum = eta !== undefined && momentum !== undefined;
  const inputs = [surprise, ...(clip ? [clip] : []), ...(withMomentum ? [eta, momentum] : [])];
  return kernelOr(MOMENTUM_STEP_KERNEL, inputs, { clipped: clip !== undefined, withMomentum }, () => {
    const clipped = clip ? surprise.mul(clip) : surprise;
    return withMomentum ? momentum.mul(eta).sub(clipped) : clipped.neg();
  });
}

/** W' = (1 - alpha) W + U for one weight: the share alpha forgotten, then the update. */
export function forgetStep(weights: tf.Tensor, forgetting: tf.Tensor, update: tf.Tensor): tf.Tensor {
  return kernelOr(FORGET_STEP_KERNEL, [weights, forgetting, update], {}, () => weights.mul(tf.sub(1, forgetting)).add(update));
}

/** Sums a weight-shaped product over each head's elements: the gradient of a per-head factor. */
function perHead(x: tf.Tensor): tf.Tensor {
  return x.sum([2, 3], true);
}

tf.registerGradient({
  kernelName: CLIP_FACTOR_KERNEL,
  saveAllInputs: true,
  outputsToSave: [true],
  gradFunc: (dy, saved, attrs) => {
    // c = M (s + eps)^-1/2 where it is under 1, s the sum of squares: dc/dg = -c^3 g / M^2 there, 0 where clipped.
    const [surprises, c] = [saved.slice(0, -1), saved.at(-1)!];
    const maxNorm = attrs.maxNorm as number;
    const dSurprise = (dy as tf.Tensor).mul(c.less(1).cast('float32')).mul(c.pow(3).div(-maxNorm * maxNorm));
    return Object.fromEntries(surprises.map((g, i) => [i, () => g.mul(dSurprise)]));
  },
});

tf.registerGradient({
  kernelName: MOMENTUM_STEP_KERNEL,
  saveAllInputs: true,
  gradFunc: (dy, saved, attrs) => {
    const d = dy as tf.Tensor;
    const surprise = saved[0]!;
    const clip = attrs.clipped ? saved[1] : undefined;
    const [eta, momentum] = attrs.withMomentum ? saved.slice(-2) : [];
    const grads: Record<number, () => tf.Tensor> = { 0: () => (clip ? d.mul(clip).neg() : d.neg()) };
    if (clip) grads[1] = () => perHead(d.mul(surprise)).neg();
    if (eta && momentum) {
      grads[saved.length - 2] = () => perHead(d.mul(momentum));
      grads[saved.length - 1] = () => d.mul(eta);
    }
    return grads;
  },
});

tf.registerGradient({
  kernelName: FORGET_STEP_KERNEL,
  saveAllInputs: true,
  gradFunc: (dy, [weights, forgetting]) => {
    const d = dy as tf.Tensor;
    return { 0: () => d.mul(tf.sub(1, forgetting!)), 1: () => perHead(d.mul(weights!)).neg(), 2: () => d };
  },
});
