/**
 * A ViT's self-attention (model/layers.ts SELF_ATTENTION_KERNEL) for the WASM backend with a native
 * BLAS, from the packed projection in place. For each image and head, the scores are one product
 * that reads the head's query and key columns straight out of the [T, 3D] projection (a leading
 * dimension of 3D), a softmax of their rows (wasm-simd.wat) turns them into weights in place, and a
 * second product writes weights x values into the head's columns of the [T, D] output. Written out,
 * the same attention also splits the projection, transposes queries, keys, values and the output
 * between [B, T, H, dh] and [B, H, T, dh], scales the scores and runs WASM's softmax: its kernels
 * took 30 ms of a ViT-B/16 encode, and this one takes 17 (the softmax 8 of them).
 */
import * as tf from '@tensorflow/tfjs-core';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';
import { ptr, type Pointer } from 'bun:ffi';
import { SELF_ATTENTION_KERNEL } from '../../model/layers.ts';
import type { OpenedBlas } from './blas.ts';
import { int32s, withScratch } from './wasm-kernels.ts';
import type { SimdKernels } from './wasm-simd.ts';

/** Registers self-attention for 'wasm'; its products go to `blas`, its softmax to `simd`. */
export function registerWasmSelfAttention(blas: OpenedBlas, simd: SimdKernels): void {
  const kernelFunc = ({ inputs: { qkv }, backend: kernelBackend, attrs }: { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs: tf.NamedAttrMap }): tf.TensorInfo => {
    const backend = kernelBackend as BackendWasm;
    const [batch, length, packed] = int32s(qkv!.shape) as [number, number, number];
    const heads = attrs.heads as number;
    const [width, headWidth] = [packed / 3, packed / 3 / heads];
    if (batch * length * width === 0) return backend.makeOutput([batch, length, width], 'float32');
    const scale = 1 / Math.sqrt(headWidth);
    // The scratch holds one head's scores at a time.
    return withScratch(backend, [batch, length, width], [length, length], [qkv!], ([source], weights, target) => {
      const [from, to, scoresAt] = [ptr(source!), ptr(target), ptr(weights)];
      const at = (base: number, floats: number) => (base + 4 * floats) as Pointer;
      for (let image = 0; image < batch; image++) {
        for (let head = 0; head < heads; head++) {
          const query = image * length * packed + head * headWidth;
          blas.sgemm(false, true, length, length, headWidth, at(from, query), packed, at(from, query + width), packed, scoresAt, length);
          simd.softmaxRows(weights.byteOffset, length, length, scale);
          blas.sgemm(false, false, length, headWidth, length, scoresAt, length, at(from, query + 2 * width), packed, at(to, image * length * width + head * headWidth), width);
        }
      }
    });
  };
  tf.registerKernel({ kernelName: SELF_ATTENTION_KERNEL, backendName: 'wasm', kernelFunc: kernelFunc as unknown as tf.KernelFunc });
}
