/**
 * A ViT's self-attention (model/layers.ts SELF_ATTENTION_KERNEL) for the WASM backend with a native
 * BLAS, from the packed projection in place. Written out, the same attention splits the projection,
 * transposes queries, keys, values and the output between [B, T, H, dh] and [B, H, T, dh], scales
 * the scores and runs WASM's softmax: its kernels took 30 ms of a ViT-B/16 encode. Two ways run it
 * here:
 * - with oneDNN's primitives (onednn-primitives.ts): every head's scores of a few images, their
 *   softmax and the mix as one primitive each, after one reorder splits the heads out; in bfloat16
 *   where the products are (MAC_MATMUL_PRECISION);
 * - with another BLAS: each head's scores are one product that reads the head's query and key
 *   columns straight out of the [T, 3D] projection (a leading dimension of 3D) and scales them, the
 *   SIMD module's softmax turns every head's rows into weights in place, and a second product a head
 *   writes weights x values into the head's columns of the [T, D] output.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';
import { ptr, type Pointer } from 'bun:ffi';
import { SELF_ATTENTION_KERNEL } from '../../model/layers.ts';
import type { MatmulPrecision } from './bfloat16.ts';
import type { OpenedBlas } from './blas.ts';
import type { OneDnnPrimitives } from './onednn-primitives.ts';
import { filledOutput, int32s } from './wasm-kernels.ts';

/** The attention of each image's packed projection at qkv ([batch, length, 3 width]) into out ([batch, length, width]), both in the heap. */
export type PackedSelfAttention = (backend: BackendWasm, qkv: tf.TensorInfo, out: tf.TensorInfo, heads: number) => void;

/** Each of `rows` rows of n floats in `scores` becomes its softmax, in place. */
export type RowSoftmax = (scores: Float32Array, rows: number, n: number) => void;

/** Registers self-attention for 'wasm', computed by `attention`. */
export function registerWasmSelfAttention(attention: PackedSelfAttention): void {
  const kernelFunc = ({ inputs: { qkv }, backend: kernelBackend, attrs }: { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs: tf.NamedAttrMap }): tf.TensorInfo => {
    const backend = kernelBackend as BackendWasm;
    const [batch, length, packed] = int32s(qkv!.shape) as [number, number, number];
    return filledOutput(backend, [batch, length, packed / 3], (out) => attention(backend, qkv!, out, attrs.heads as number));
  };
  tf.registerKernel({ kernelName: SELF_ATTENTION_KERNEL, backendName: 'wasm', kernelFunc: kernelFunc as unknown as tf.KernelFunc });
}

/**
 * The attention scores held at once, at most (some 8 MB): oneDNN takes as many images a call as
 * fit, since each call costs some 20-45 us between WASM's kernels whatever its size. A ViT-B/16's
 * 12 heads of 197 x 197 fit 4 images; the shapes preset's 4 heads of 65 x 65 a batch of 16 and more.
 */
const SCORES_AT_ONCE = 2_000_000;

/** Self-attention on oneDNN's primitives, its products in `precision`. */
export function oneDnnSelfAttention(primitives: OneDnnPrimitives, precision: MatmulPrecision): PackedSelfAttention {
  return (backend, qkv, out, heads) => {
    const [batch, length, packed] = int32s(qkv.shape) as [number, number, number];
    const [from, to] = [qkv, out].map((t) => ptr(backend.typedArrayFromHeap(t) as Float32Array));
    const at = (base: number, floats: number) => (base + 4 * floats) as Pointer;
    const group = Math.max(1, Math.floor(SCORES_AT_ONCE / (heads * length * length)));
    for (let image = 0; image < batch; image += group) {
      const images = Math.min(group, batch - image);
      primitives.selfAttention(at(from!, image * length * packed), images, length, packed / 3, heads, at(to!, (image * length * packed) / 3), precision);
    }
  };
}

/** Self-attention as a BLAS's products, a head at a time, and `softmaxRows` on a scratch in the heap. */
export function blasSelfAttention(blas: OpenedBlas, softmaxRows: RowSoftmax): PackedSelfAttention {
  return (backend, qkv, out, heads) => {
    const [batch, length, packed] = int32s(qkv.shape) as [number, number, number];
    const [width, headWidth] = [packed / 3, packed / 3 / heads];
    const scale = 1 / Math.sqrt(headWidth);
    // The scratch holds one image's scores, every head's.
    const scratch = backend.makeOutput([heads, length, length], 'float32');
    try {
      // Views of the heap are taken after makeOutput, which may grow it.
      const scores = backend.typedArrayFromHeap(scratch) as Float32Array;
      const [from, to, scoresAt] = [qkv, out].map((t) => ptr(backend.typedArrayFromHeap(t) as Float32Array)).concat(ptr(scores));
      const at = (base: number, floats: number) => (base + 4 * floats) as Pointer;
      for (let image = 0; image < batch; image++) {
        for (let head = 0; head < heads; head++) {
          const query = image * length * packed + head * headWidth;
          blas.sgemm(false, true, length, length, headWidth, at(from!, query), packed, at(from!, query + width), packed, at(scoresAt!, head * length * length), length, false, scale);
        }
        softmaxRows(scores, heads * length, length);
        for (let head = 0; head < heads; head++) {
          const query = image * length * packed + head * headWidth;
          blas.sgemm(false, false, length, headWidth, length, at(scoresAt!, head * length * length), length, at(from!, query + 2 * width), packed, at(to!, image * length * width + head * headWidth), width);
        }
      }
    } finally {
      backend.disposeData(scratch.dataId);
    }
  };
}
