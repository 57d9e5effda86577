/**
 * Matrix products through a native BLAS: OpenBLAS's cblas_sgemm, called through bun:ffi as the WASM
 * backend's BatchMatMul kernel. A product runs on the operands where they lie in the WASM heap
 * (bun:ffi takes a pointer into it, shared or not), so nothing is copied. On this project's
 * machines OpenBLAS reaches several times XNNPACK's WASM SIMD speed on an encoder's or a training
 * step's products, and it takes the small ones too: a decode step's matrix-vector products run as
 * fast or faster there, and its products per head ten times faster (XNNPACK packs each matrix of a
 * batch on its own), a decoded token in 16 ms rather than 23 (docs/performance.md, "CPU threads and
 * OpenBLAS").
 *
 * MAC_BLAS: `auto` (default) uses OpenBLAS where the system has it (Debian: libopenblas0-pthread),
 * `off` never, and a path loads that library or stops at startup. Where it runs, it has the
 * instance's threads and WASM runs one (src/backend/select.ts).
 */
import * as tf from '@tensorflow/tfjs-core';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';
import { dlopen, FFIType, ptr, type Pointer } from 'bun:ffi';

const SONAMES = ['libopenblas.so.0', 'libopenblas.so', 'libopenblas.dylib'];
const ROW_MAJOR = 101;
const NO_TRANS = 111;
const TRANS = 112;

const SYMBOLS = {
  cblas_sgemm: {
    args: [FFIType.i32, FFIType.i32, FFIType.i32, FFIType.i32, FFIType.i32, FFIType.i32, FFIType.f32, FFIType.ptr, FFIType.i32, FFIType.ptr, FFIType.i32, FFIType.f32, FFIType.ptr, FFIType.i32],
    returns: FFIType.void,
  },
  openblas_set_num_threads: { args: [FFIType.i32], returns: FFIType.void },
} as const;

type Library = ReturnType<typeof dlopen<typeof SYMBOLS>>;

/** OpenBLAS opened, its soname or path as given. */
export interface OpenedBlas {
  lib: Library;
  library: string;
}

/**
 * OpenBLAS as MAC_BLAS asks for it: the library opened, or why none will run (off, or none found
 * under auto). A path that cannot load stops the start.
 */
export function openBlas(setting = process.env.MAC_BLAS): OpenedBlas | { reason: string } {
  const value = (setting ?? '').trim();
  if (value.toLowerCase() === 'off') return { reason: 'MAC_BLAS=off' };
  const forced = value !== '' && value.toLowerCase() !== 'auto';
  const errors: string[] = [];
  for (const name of forced ? [value] : SONAMES) {
    try {
      return { lib: dlopen(name, SYMBOLS), library: name };
    } catch (error) {
      errors.push(`${name}: ${error instanceof Error ? error.message : String(error)}`);
    }
  }
  if (forced) throw new Error(`MAC_BLAS=${value}: cannot load OpenBLAS from it: ${errors.join('; ')}`);
  return { reason: `no OpenBLAS found (${SONAMES.join(', ')})` };
}

/** Registers the BLAS BatchMatMul for 'wasm' (call once, after the backend started) with `threads` OpenBLAS threads. */
export function startBlas({ lib }: OpenedBlas, threads: number): void {
  // OpenBLAS's pool is one per process; every backend in it asks for the same count under auto.
  lib.symbols.openblas_set_num_threads(threads);
  registerBlasMatMul(lib);
}

function registerBlasMatMul(lib: Library): void {
  const config = tf.getKernel(tf.BatchMatMul, 'wasm')!;
  const stock = config.kernelFunc;
  const kernelFunc: tf.KernelFunc = (args) => {
    const { a, b } = args.inputs as { a: tf.TensorInfo; b: tf.TensorInfo };
    const { transposeA, transposeB } = args.attrs as { transposeA: boolean; transposeB: boolean };
    if (a.dtype !== 'float32' || b.dtype !== 'float32') return stock(args);
    const [m, k] = transposeA ? [a.shape.at(-1)!, a.shape.at(-2)!] : [a.shape.at(-2)!, a.shape.at(-1)!];
    const n = transposeB ? b.shape.at(-2)! : b.shape.at(-1)!;
    const outerA = a.shape.slice(0, -2);
    const outerB = b.shape.slice(0, -2);
    const outer = tf.broadcast_util.assertAndGetBroadcastShape(outerA, outerB);
    const batch = tf.util.sizeFromShape(outer);
    const [batchA, batchB] = [tf.util.sizeFromShape(outerA), tf.util.sizeFromShape(outerB)];
    // Each operand either has every batch or one matrix for all; other broadcasts stay with XNNPACK.
    const plain = (batchA === batch || batchA === 1) && (batchB === batch || batchB === 1);
    if (!plain || (transposeB ? b.shape.at(-1) : b.shape.at(-2)) !== k) return stock(args);

    const backend = args.backend as BackendWasm;
    const out = backend.makeOutput([...outer, m, n], 'float32');
    if (batch * m * n === 0) return out;
    // Views of the heap are taken after makeOutput, which may grow it.
    const [pa, pb, pc] = [a, b, out].map((t) => ptr(backend.typedArrayFromHeap(t) as Float32Array) as number);
    const at = (base: number, bytes: number) => (base + bytes) as Pointer;
    for (let i = 0; i < batch; i++) {
      lib.symbols.cblas_sgemm(
        ROW_MAJOR, transposeA ? TRANS : NO_TRANS, transposeB ? TRANS : NO_TRANS, m, n, k, 1,
        at(pa!, batchA === 1 ? 0 : i * m * k * 4), transposeA ? m : k,
        at(pb!, batchB === 1 ? 0 : i * k * n * 4), transposeB ? k : n,
        0, at(pc!, i * m * n * 4), n,
      );
    }
    return out;
  };
  tf.unregisterKernel(tf.BatchMatMul, 'wasm');
  tf.registerKernel({ ...config, kernelFunc });
}
