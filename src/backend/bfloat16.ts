/**
 * MAC_MATMUL_PRECISION=bfloat16: the layers' weights (model/layers.ts AFFINE_KERNEL, x W + b, and
 * PRODUCT_KERNEL, x W) multiply in bfloat16 on oneDNN, as PyTorch's autocast to bfloat16 multiplies
 * on a CPU: both operands rounded to bfloat16 (8 bits of mantissa), their products summed in
 * float32, the bias and the output float32. On a CPU with AMX, a ViT-B/16 layer's products run
 * about 4x faster than in float32 (docs/performance.md, "Products in bfloat16"). The other products
 * (attention's scores and mixes, the memory's per-head products and every gradient) stay float32.
 *
 * A weight is rounded once and kept, keyed by its data: a tensor's data never changes, so a
 * variable that is assigned anew is rounded anew. Only serving asks for it: a training replica
 * would round every weight again after each step (src/backend/select.ts).
 */
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';
import * as tf from '@tensorflow/tfjs-core';
import { readFileSync } from 'node:fs';
import { ptr } from 'bun:ffi';
import type { AffineProduct, OpenedBlas } from './blas.ts';

export type MatmulPrecision = 'float32' | 'bfloat16';

const PRECISIONS: MatmulPrecision[] = ['float32', 'bfloat16'];

/** MAC_MATMUL_PRECISION: unset or `float32` (the default), or `bfloat16`; anything else stops the start. */
export function parseMatmulPrecision(setting: string | undefined): MatmulPrecision {
  const value = (setting ?? '').trim().toLowerCase() || 'float32';
  if (!(PRECISIONS as string[]).includes(value)) throw new Error(`MAC_MATMUL_PRECISION must be one of ${PRECISIONS.join(', ')}; got '${setting}'`);
  return value as MatmulPrecision;
}

/** A precision that this backend cannot multiply in, with the reason: a startup error, never a quiet float32. */
export class MatmulPrecisionError extends Error {
  constructor(
    readonly precision: MatmulPrecision,
    readonly reason: string,
  ) {
    super(`MAC_MATMUL_PRECISION=${precision}: ${reason}`);
    this.name = 'MatmulPrecisionError';
  }
}

/** The CPU flags that multiply bfloat16 in hardware; without them oneDNN emulates it, slower than float32. */
const BFLOAT16_FLAGS = ['amx_bf16', 'avx512_bf16'];

/**
 * Rounds the floats of `values` to bfloat16 into `out`, both in the heap: oneDNN's reorder where its
 * primitives run (onednn-primitives.ts), else the SIMD module's loop (wasm-simd.wat). Their bits are
 * the same but for float32's subnormals (below 1.2e-38), which the reorder takes as zero, as AMX's
 * products take them either way.
 */
export type Rounding = (values: Float32Array, out: Uint16Array) => void;

/** Why products cannot run in bfloat16 here, or undefined where they can. */
export function bfloat16Unavailable(blas: OpenedBlas | { reason: string }, rounding: Rounding | undefined, cpuInfo = readCpuInfo()): string | undefined {
  if (!('sgemm' in blas)) return `it needs oneDNN, and no native BLAS runs (${blas.reason})`;
  if (!blas.gemmBfloat16) return `it needs oneDNN, and the products run on ${blas.name} (${blas.library})`;
  if (!rounding) return "it needs a rounding to bfloat16: oneDNN 2's primitives or the SIMD kernels of src/backend/wasm-simd.wat, and neither started";
  const flags = new Set(/^flags\s*:(.*)$/m.exec(cpuInfo)?.[1]?.trim().split(/\s+/));
  if (!BFLOAT16_FLAGS.some((flag) => flags.has(flag))) return `this CPU has no bfloat16 instructions (${BFLOAT16_FLAGS.join(' or ')} in /proc/cpuinfo)`;
  return undefined;
}

function readCpuInfo(): string {
  try {
    return readFileSync('/proc/cpuinfo', 'utf8');
  } catch {
    return '';
  }
}

/** x W in bfloat16, for blas.ts's x W + b (onto the bias) and x W. */
export function bfloat16Product(blas: OpenedBlas, round: Rounding): AffineProduct {
  const gemm = blas.gemmBfloat16!;
  const weights = new WeakMap<tf.DataId, Uint16Array>();
  const rounded = (backend: BackendWasm, weight: tf.TensorInfo): Uint16Array => {
    let copy = weights.get(weight.dataId);
    if (!copy) {
      copy = withRounded(backend, round, weight, (bits) => bits.slice());
      weights.set(weight.dataId, copy);
    }
    return copy;
  };
  return (backend, x, weight, out, accumulate) => {
    const [[rows, inDim], outDim] = [x.shape as [number, number], weight.shape[1]!];
    const w = rounded(backend, weight);
    withRounded(backend, round, x, (xs) => {
      const os = backend.typedArrayFromHeap(out) as Float32Array;
      gemm(false, false, rows, outDim, inDim, ptr(xs), inDim, ptr(w), outDim, ptr(os), outDim, accumulate);
    });
  };
}

/** Runs `use` with the tensor's values rounded to bfloat16 in a scratch buffer of the heap, then frees it. */
function withRounded<T>(backend: BackendWasm, round: Rounding, tensor: tf.TensorInfo, use: (bits: Uint16Array) => T): T {
  const n = tf.util.sizeFromShape(tensor.shape);
  // Two bfloat16 a float of scratch, which the backend allocates and frees as any tensor's data.
  const scratch = backend.makeOutput([Math.ceil(n / 2)], 'float32');
  try {
    // Views of the heap are taken after makeOutput, which may grow it.
    const floats = backend.typedArrayFromHeap(scratch) as Float32Array;
    const bits = new Uint16Array(floats.buffer, floats.byteOffset, n);
    round(backend.typedArrayFromHeap(tensor) as Float32Array, bits);
    return use(bits);
  } finally {
    backend.disposeData(scratch.dataId);
  }
}
