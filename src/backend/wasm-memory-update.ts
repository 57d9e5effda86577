/**
 * A memory store's update of its weights (model/memory-update.ts: the clip factor, the momentum step,
 * the forgetting step) as one SIMD kernel each on WASM (wasm-simd.wat). Written out they are 7
 * passes over each of the memory's weights a store, each a WASM kernel of its own: some 15% of a
 * prefill's kernel time for the original configuration (a [8, 64, 256] weight a pass takes 40-80
 * us). The momentum and forgetting steps take the ops' order, so their values are the ops' bit for
 * bit; the clip factor sums in four float32 lanes. Their gradients are model/'s, as on every backend.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';
import { CLIP_EPS, CLIP_FACTOR_KERNEL, FORGET_STEP_KERNEL, MOMENTUM_STEP_KERNEL } from '../../model/memory-update.ts';
import { requireShape } from './wasm-kernels.ts';
import type { SimdKernels } from './wasm-simd.ts';

type KernelArgs = { inputs: tf.NamedTensorInfoMap; attrs: tf.NamedAttrMap };

/** Registers the three kernels for 'wasm'; they run in `simd`. */
export function registerWasmMemoryUpdateKernels(backend: BackendWasm, simd: SimdKernels): void {
  const address = (t: tf.TensorInfo | undefined) => (t ? backend.typedArrayFromHeap(t).byteOffset : 0);
  /** A weight [B, H, a, b] as its B H heads of a b floats. */
  const headsOf = (t: tf.TensorInfo) => ({ heads: t.shape[0]! * t.shape[1]!, n: tf.util.sizeFromShape(t.shape.slice(2)) });

  // These kernels take their inputs as a list (model/memory-update.ts).
  const clipFactor = ({ inputs, attrs }: KernelArgs): tf.TensorInfo => {
    const surprises = inputs as unknown as tf.TensorInfo[];
    const [batch, heads] = surprises[0]!.shape as [number, number];
    const out = backend.makeOutput([batch, heads, 1, 1], 'float32');
    const factors = backend.typedArrayFromHeap(out) as Float32Array;
    const parts = surprises.map((surprise) => ({ at: address(surprise), n: headsOf(surprise).n }));
    for (let head = 0; head < batch * heads; head++) {
      const squares = parts.reduce((sum, { at, n }) => sum + simd.sumOfSquares(at + head * n * 4, n), 0);
      factors[head] = Math.min((attrs.maxNorm as number) / Math.sqrt(squares + CLIP_EPS), 1);
    }
    return out;
  };
  const momentumStep = ({ inputs, attrs }: KernelArgs): tf.TensorInfo => {
    const [surprise, ...rest] = inputs as unknown as tf.TensorInfo[];
    const clip = attrs.clipped ? rest.shift() : undefined;
    const [eta, momentum] = attrs.withMomentum ? rest : [];
    const perHead = [...surprise!.shape.slice(0, 2), 1, 1];
    requireShape(MOMENTUM_STEP_KERNEL, 'clip', clip, perHead);
    requireShape(MOMENTUM_STEP_KERNEL, 'eta', eta, perHead);
    requireShape(MOMENTUM_STEP_KERNEL, 'momentum', momentum, surprise!.shape);
    const out = backend.makeOutput(surprise!.shape, 'float32');
    const { heads, n } = headsOf(surprise!);
    simd.momentumStep(address(surprise), address(clip), address(eta), address(momentum), address(out), heads, n);
    return out;
  };
  const forgetStep = ({ inputs }: KernelArgs): tf.TensorInfo => {
    const [weights, forgetting, update] = inputs as unknown as tf.TensorInfo[];
    requireShape(FORGET_STEP_KERNEL, 'forgetting', forgetting, [...weights!.shape.slice(0, 2), 1, 1]);
    requireShape(FORGET_STEP_KERNEL, 'update', update, weights!.shape);
    const out = backend.makeOutput(weights!.shape, 'float32');
    const { heads, n } = headsOf(weights!);
    simd.forgetStep(address(weights), address(forgetting), address(update), address(out), heads, n);
    return out;
  };
  for (const [kernelName, kernelFunc] of [[CLIP_FACTOR_KERNEL, clipFactor], [MOMENTUM_STEP_KERNEL, momentumStep], [FORGET_STEP_KERNEL, forgetStep]] as const) {
    tf.registerKernel({ kernelName, backendName: 'wasm', kernelFunc: kernelFunc as unknown as tf.KernelFunc });
  }
}
