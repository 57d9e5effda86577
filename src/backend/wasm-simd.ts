/**
 * Our own SIMD kernels for the WASM backend (wasm-simd.wat), assembled by wabt when the backend
 * starts and given the backend's own memory, so that they read and write tensors in place:
 * - GELU and its two derivatives (model/layers.ts GELU_KERNEL, GELU_DERIVATIVE_KERNEL,
 *   GELU_SECOND_DERIVATIVE_KERNEL), one loop each. Written out, GELU is six WASM kernels, each a pass
 *   over the tensor: ViT-B/16's twelve [197, 3072] GELUs took 25 ms of a 195 ms encode. JavaScript
 *   loops were slower than those kernels (3.1 ms against 2.4 a GELU; JavaScriptCore does not
 *   vectorise them), hence a WASM module of our own. Where oneDNN runs the products, GELU and
 *   its first derivative run on it instead (onednn-primitives.ts).
 * - A softmax of rows in place, which the self-attention kernel (wasm-attention.ts) runs where
 *   oneDNN does not (onednn-primitives.ts).
 * - The row norms and their input gradients, which wasm-norms.ts registers.
 * - A memory store's clip factor, momentum step and forgetting step, which wasm-memory-update.ts
 *   registers.
 * - AdamW's update of a parameter, one pass where written out it is 14 over the parameter and its
 *   moments and more to join and split them: 370 ms of a 2.4 s training step of the original
 *   configuration's text model.
 */
import { readFileSync } from 'node:fs';
import * as tf from '@tensorflow/tfjs-core';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';
import wabt from 'wabt';
import { GELU_DERIVATIVE_KERNEL, GELU_KERNEL, GELU_SECOND_DERIVATIVE_KERNEL } from '../../model/layers.ts';
import { ADAMW_KERNEL } from '../../model/optim.ts';

/** Elementwise: out[i] = f(x[i]) for i < n; x and out are byte addresses in the heap. */
type Elementwise = (x: number, out: number, n: number) => void;

export interface SimdKernels {
  gelu: Elementwise;
  geluDerivative: Elementwise;
  geluSecondDerivative: Elementwise;
  /** Each of `rows` rows of n floats at byte address x becomes softmax(scale row), in place. */
  softmaxRows(x: number, rows: number, n: number, scale: number): void;
  /** The row norms of wasm-norms.ts: centred and averaged are 0 or 1, gain and bias 0 where there are none. */
  normalizeRows(x: number, out: number, rows: number, n: number, centred: number, averaged: number, eps: number, gain: number, bias: number): void;
  /** Their input gradients, from u (the gradient of the normalised rows) and x, into out. */
  normGradientRows(u: number, x: number, out: number, rows: number, n: number, centred: number, averaged: number, eps: number): void;
  /** A memory store's update of one weight, `heads` heads of n floats (wasm-memory-update.ts); a factor's address is 0 where there is none. */
  sumOfSquares(x: number, n: number): number;
  momentumStep(surprise: number, clip: number, eta: number, momentum: number, out: number, heads: number, n: number): void;
  forgetStep(weights: number, forgetting: number, update: number, out: number, heads: number, n: number): void;
  /** One AdamW step over n floats (ADAMW_KERNEL); 1 - beta1 and 1 - beta2 are given, worked out in float64. */
  adamw(
    param: number, grad: number, m: number, v: number, paramOut: number, mOut: number, vOut: number, n: number,
    beta1: number, complement1: number, beta2: number, complement2: number, decay: number, correction1: number, correction2: number, lr: number, eps: number,
  ): void;
}

/** The module, instantiated over the 'wasm' backend's heap; call after that backend is registered. */
export async function loadSimdKernels(backend: BackendWasm): Promise<SimdKernels> {
  const memory = heapOf(backend);
  const shared = typeof SharedArrayBuffer !== 'undefined' && memory.buffer instanceof SharedArrayBuffer;
  const source = readFileSync(new URL('./wasm-simd.wat', import.meta.url), 'utf8').replace('SHARED', shared ? 'shared' : '');
  const module = (await wabt()).parseWat('wasm-simd.wat', source, { simd: true, threads: shared });
  try {
    const { buffer } = module.toBinary({});
    const { instance } = await WebAssembly.instantiate(buffer, { env: { memory } });
    return instance.exports as unknown as SimdKernels;
  } finally {
    module.destroy();
  }
}

/** Registers GELU and its derivatives for 'wasm'. */
export function registerWasmGeluKernels(backend: BackendWasm, simd: SimdKernels): void {
  const kernels = { [GELU_KERNEL]: simd.gelu, [GELU_DERIVATIVE_KERNEL]: simd.geluDerivative, [GELU_SECOND_DERIVATIVE_KERNEL]: simd.geluSecondDerivative };
  for (const [kernelName, apply] of Object.entries(kernels)) {
    const kernelFunc = ({ inputs: { x } }: { inputs: tf.NamedTensorInfoMap }): tf.TensorInfo => {
      const out = backend.makeOutput(x!.shape, 'float32');
      const [xs, outs] = [x!, out].map((t) => backend.typedArrayFromHeap(t));
      apply(xs!.byteOffset, outs!.byteOffset, xs!.length);
      return out;
    };
    tf.registerKernel({ kernelName, backendName: 'wasm', kernelFunc: kernelFunc as unknown as tf.KernelFunc });
  }
}

/**
 * Registers AdamW's update of one parameter (model/optim.ts ADAMW_KERNEL) for 'wasm': one pass over
 * the parameter, its gradient and moments, where written out it is 14 and more.
 */
export function registerWasmAdamWKernel(backend: BackendWasm, simd: SimdKernels): void {
  const kernelFunc = ({ inputs, attrs }: { inputs: tf.NamedTensorInfoMap; attrs: tf.NamedAttrMap }): tf.TensorInfo[] => {
    const { param, grad, m, v } = inputs as Record<'param' | 'grad' | 'm' | 'v', tf.TensorInfo>;
    const { beta1, beta2, eps, lr, decay, correction1, correction2 } = attrs as Record<string, number>;
    const outputs = [param, m, v].map((t) => backend.makeOutput(t.shape, 'float32'));
    // Addresses after every makeOutput, which may grow the heap.
    const [p, g, ms, vs, pOut, mOut, vOut] = [param, grad, m, v, ...outputs].map((t) => backend.typedArrayFromHeap(t).byteOffset);
    simd.adamw(p!, g!, ms!, vs!, pOut!, mOut!, vOut!, tf.util.sizeFromShape(param.shape), beta1!, 1 - beta1!, beta2!, 1 - beta2!, decay!, correction1!, correction2!, lr!, eps!);
    return outputs;
  };
  tf.registerKernel({ kernelName: ADAMW_KERNEL, backendName: 'wasm', kernelFunc: kernelFunc as unknown as tf.KernelFunc });
}

/** The backend's WebAssembly.Memory: the threaded build keeps it on the module, the single-threaded one exports it. */
function heapOf(backend: BackendWasm): WebAssembly.Memory {
  const module = backend.wasm as unknown as { wasmMemory?: WebAssembly.Memory; asm?: { memory?: WebAssembly.Memory } };
  const memory = module.wasmMemory ?? module.asm?.memory;
  if (!memory) throw new Error('the WASM backend exposes no WebAssembly.Memory');
  return memory;
}
