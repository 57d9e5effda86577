/**
 * MAC_MATMUL_PRECISION=bfloat16: the layers' weights (model/layers.ts AFFINE_KERNEL, x W + b, and
 * PRODUCT_KERNEL, x W) multiply in bfloat16 on oneDNN's matmul primitive (onednn-primitives.ts), as
 * PyTorch's autocast to bfloat16 multiplies on a CPU: both operands rounded to bfloat16 (8 bits of
 * mantissa), their products summed in float32, the bias and the output float32. On a CPU with AMX,
 * a ViT-B/16 layer's products run 3.3-4.9x faster than in float32 (docs/performance.md, "Products
 * in bfloat16"). A feed-forward (FEED_FORWARD_KERNEL) is one kernel here, and a ViT's self-attention
 * multiplies in bfloat16 too (wasm-attention.ts). The other products (the text model's attention,
 * the memory's per-head products and every gradient) stay float32.
 *
 * A weight is rounded and packed once and kept, keyed by its data: a tensor's data never changes,
 * so a variable that is assigned anew is packed anew. Only serving asks for it: a training replica
 * would pack every weight again after each step (src/backend/select.ts).
 */
import * as tf from '@tensorflow/tfjs-core';
import { readFileSync } from 'node:fs';
import { ptr } from 'bun:ffi';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';
import { AFFINE_KERNEL, FEED_FORWARD_KERNEL, GELU_KERNEL } from '../../model/layers.ts';
import type { AffineProduct, OpenedBlas } from './blas.ts';
import type { OneDnnPrimitives, PackedWeight } from './onednn-primitives.ts';
import { filledOutput } from './wasm-kernels.ts';

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

/** A layer's weight in bfloat16, packed on first use and kept while its data lives. */
export type PackedWeights = (backend: BackendWasm, weight: tf.TensorInfo) => PackedWeight;

/** The weights packed for `primitives`, each once, keyed by its data (which never changes). */
export function packedWeights(primitives: OneDnnPrimitives): PackedWeights {
  const packed = new WeakMap<tf.DataId, PackedWeight>();
  return (backend, weight) => {
    let found = packed.get(weight.dataId);
    if (!found) {
      const [inDim, outDim] = weight.shape as [number, number];
      found = primitives.packBfloat16(ptr(backend.typedArrayFromHeap(weight) as Float32Array), inDim, outDim);
      packed.set(weight.dataId, found);
    }
    return found;
  };
}

/** x W + b and x W in bfloat16, for blas.ts's kernels. */
export function bfloat16Product(primitives: OneDnnPrimitives, packedWeight: PackedWeights): AffineProduct {
  return (backend, x, weight, bias, out) => {
    const [xs, os] = [x, out].map((t) => backend.typedArrayFromHeap(t) as Float32Array) as [Float32Array, Float32Array];
    const bs = bias && (backend.typedArrayFromHeap(bias) as Float32Array);
    // A bias of one a row (the residual stream) is the output's start, which the product adds onto.
    const perRow = bs !== undefined && bs.length > weight.shape[1]!;
    if (perRow) os.set(bs);
    primitives.multiplyBfloat16(ptr(xs), x.shape[0]!, packedWeight(backend, weight), perRow ? undefined : bs && ptr(bs), ptr(os), perRow);
  };
}

/**
 * Registers the feed-forward, GELU(x W1 + b1) W2 + b2 (model/layers.ts FEED_FORWARD_KERNEL), for
 * 'wasm' in bfloat16: the first product writes its rows through GELU straight into bfloat16 for the
 * second, where the two products as kernels of their own write them in float32, GELU reads and
 * writes them again, and the second product rounds them.
 */
export function registerBfloat16FeedForward(primitives: OneDnnPrimitives, packedWeight: PackedWeights): void {
  const kernelFunc: tf.KernelFunc = ({ inputs, backend: kernelBackend }) => {
    const { x, upWeight, upBias, downWeight, downBias } = inputs as Record<'x' | 'upWeight' | 'upBias' | 'downWeight' | 'downBias', tf.TensorInfo>;
    const backend = kernelBackend as BackendWasm;
    const [[rows, inDim], [hidden, outDim]] = [x.shape as [number, number], downWeight.shape as [number, number]];
    // Of no width, there is nothing to multiply: the kernels of its ops run it, and its products give their biases.
    if (inDim * hidden === 0) return runWrittenOut(backend, inputs as Record<string, tf.TensorInfo>);
    return filledOutput(backend, [rows, outDim], (out) => {
      const at = (t: tf.TensorInfo) => ptr(backend.typedArrayFromHeap(t) as Float32Array);
      primitives.feedForwardBfloat16(at(x), rows, packedWeight(backend, upWeight), at(upBias), packedWeight(backend, downWeight), at(downBias), at(out));
    });
  };
  tf.registerKernel({ kernelName: FEED_FORWARD_KERNEL, backendName: 'wasm', kernelFunc });
}

/** The feed-forward as its three kernels, x W + b, GELU and x W + b. */
function runWrittenOut(backend: BackendWasm, { x, upWeight, upBias, downWeight, downBias }: Record<string, tf.TensorInfo>): tf.TensorInfo {
  const run = (kernelName: string, inputs: tf.NamedTensorInfoMap) => tf.getKernel(kernelName, 'wasm')!.kernelFunc({ inputs, backend, attrs: {} }) as tf.TensorInfo;
  const product = run(AFFINE_KERNEL, { x: x!, weight: upWeight!, bias: upBias! });
  const activated = run(GELU_KERNEL, { x: product });
  backend.disposeData(product.dataId);
  const out = run(AFFINE_KERNEL, { x: activated, weight: downWeight!, bias: downBias! });
  backend.disposeData(activated.dataId);
  return out;
}
