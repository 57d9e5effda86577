/**
 * MAC_MATMUL_PRECISION=bfloat16: the layers' weights (model/layers.ts AFFINE_KERNEL, x W + b, and
 * PRODUCT_KERNEL, x W) multiply in bfloat16 on oneDNN's matmul primitive (onednn-primitives.ts), as
 * PyTorch's autocast to bfloat16 multiplies on a CPU: both operands rounded to bfloat16 (8 bits of
 * mantissa), their products summed in float32, the bias and the output float32. On a CPU with AMX,
 * a ViT-B/16 layer's products run 3.3-4.9x faster than in float32 (docs/performance.md, "Products
 * in bfloat16"). The other products (attention's scores and mixes, the memory's per-head products
 * and every gradient) stay float32.
 *
 * A weight is rounded and packed once and kept, keyed by its data: a tensor's data never changes,
 * so a variable that is assigned anew is packed anew. Only serving asks for it: a training replica
 * would pack every weight again after each step (src/backend/select.ts).
 */
import * as tf from '@tensorflow/tfjs-core';
import { readFileSync } from 'node:fs';
import { ptr } from 'bun:ffi';
import type { AffineProduct, OpenedBlas } from './blas.ts';
import type { OneDnnPrimitives, PackedWeight } from './onednn-primitives.ts';

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

/** Why products cannot run in bfloat16 here, or undefined where they can. */
export function bfloat16Unavailable(blas: OpenedBlas | { reason: string }, primitives: OneDnnPrimitives | { reason: string }, cpuInfo = readCpuInfo()): string | undefined {
  if (!('sgemm' in blas)) return `it needs oneDNN, and no native BLAS runs (${blas.reason})`;
  if (blas.name !== 'oneDNN') return `it needs oneDNN, and the products run on ${blas.name} (${blas.library})`;
  if ('reason' in primitives) return `it needs oneDNN 2's matmul primitive: ${primitives.reason}`;
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

/** x W + b and x W in bfloat16, for blas.ts's kernels. */
export function bfloat16Product(primitives: OneDnnPrimitives): AffineProduct {
  const packed = new WeakMap<tf.DataId, PackedWeight>();
  return (backend, x, weight, bias, out) => {
    const [[rows, inDim], outDim] = [x.shape as [number, number], weight.shape[1]!];
    const [xs, os] = [x, out].map((t) => backend.typedArrayFromHeap(t) as Float32Array) as [Float32Array, Float32Array];
    const bs = bias && (backend.typedArrayFromHeap(bias) as Float32Array);
    let w = packed.get(weight.dataId);
    if (!w) {
      w = primitives.packBfloat16(ptr(backend.typedArrayFromHeap(weight) as Float32Array), inDim, outDim);
      packed.set(weight.dataId, w);
    }
    primitives.multiplyBfloat16(ptr(xs), rows, w, bs && { at: ptr(bs), perRow: bs.length > outDim }, ptr(os));
  };
}
