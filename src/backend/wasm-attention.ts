/**
 * A ViT's self-attention (model/layers.ts SELF_ATTENTION_KERNEL) for the WASM backend with a native
 * BLAS, from the packed projection in place. For each image, each head's scores are one product
 * that reads the head's query and key columns straight out of the [T, 3D] projection (a leading
 * dimension of 3D) and scales them, one softmax turns every head's rows into weights in place, and
 * a second product a head writes weights x values into the head's columns of the [T, D] output.
 * Written out, the same attention also splits the projection, transposes queries, keys, values and
 * the output between [B, T, H, dh] and [B, H, T, dh], scales the scores and runs WASM's softmax:
 * its kernels took 30 ms of a ViT-B/16 encode, and this one takes 17 with the SIMD module's softmax
 * (8 of them), 12 with oneDNN's (onednn-primitives.ts).
 */
import * as tf from '@tensorflow/tfjs-core';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';
import { ptr, type Pointer } from 'bun:ffi';
import { SELF_ATTENTION_KERNEL } from '../../model/layers.ts';
import type { OpenedBlas } from './blas.ts';
import { int32s, withScratch } from './wasm-kernels.ts';

/** Each of `rows` rows of n floats in `scores` becomes its softmax, in place. */
export type RowSoftmax = (scores: Float32Array, rows: number, n: number) => void;

/** Registers self-attention for 'wasm'; its products go to `blas`, its softmax to `softmaxRows`. */
export function registerWasmSelfAttention(blas: OpenedBlas, softmaxRows: RowSoftmax): void {
  const kernelFunc = ({ inputs: { qkv }, backend: kernelBackend, attrs }: { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs: tf.NamedAttrMap }): tf.TensorInfo => {
    const backend = kernelBackend as BackendWasm;
    const [batch, length, packed] = int32s(qkv!.shape) as [number, number, number];
    const heads = attrs.heads as number;
    const [width, headWidth] = [packed / 3, packed / 3 / heads];
    if (batch * length * width === 0) return backend.makeOutput([batch, length, width], 'float32');
    const scale = 1 / Math.sqrt(headWidth);
    // The scratch holds one image's scores, every head's.
    return withScratch(backend, [batch, length, width], [heads, length, length], [qkv!], ([source], scores, target) => {
      const [from, to, scoresAt] = [ptr(source!), ptr(target), ptr(scores)];
      const at = (base: number, floats: number) => (base + 4 * floats) as Pointer;
      for (let image = 0; image < batch; image++) {
        for (let head = 0; head < heads; head++) {
          const query = image * length * packed + head * headWidth;
          blas.sgemm(false, true, length, length, headWidth, at(from, query), packed, at(from, query + width), packed, at(scoresAt, head * length * length), length, false, scale);
        }
        softmaxRows(scores, heads * length, length);
        for (let head = 0; head < heads; head++) {
          const query = image * length * packed + head * headWidth;
          blas.sgemm(false, false, length, headWidth, length, at(scoresAt, head * length * length), length, at(from, query + 2 * width), packed, at(to, image * length * width + head * headWidth), width);
        }
      }
    });
  };
  tf.registerKernel({ kernelName: SELF_ATTENTION_KERNEL, backendName: 'wasm', kernelFunc: kernelFunc as unknown as tf.KernelFunc });
}
