/**
 * Matrix products through a native BLAS, called through bun:ffi as the WASM backend's BatchMatMul
 * kernel and as x W + b's (model/layers.ts AFFINE_KERNEL). A product runs on the operands where
 * they lie in the WASM heap (bun:ffi takes a pointer into it, shared or not), so nothing is copied.
 * Two libraries serve:
 * - oneDNN's dnnl_sgemm (Debian: libdnnl2, which python3-torch brings: PyTorch's CPU build
 *   multiplies with it), threaded by OpenMP;
 * - OpenBLAS's cblas_sgemm (Debian: libopenblas0-pthread).
 * On this project's machines either reaches several times XNNPACK's WASM SIMD speed on an encoder's
 * or a training step's products, and takes the small ones too: a decode step's matrix-vector
 * products run as fast or faster there, its products per head ten times faster (XNNPACK packs each
 * matrix of a batch on its own). On two threads of an Intel Xeon, oneDNN splits a one-row product
 * where OpenBLAS does not (28 against 20 GFLOP/s), and leads at most of a model's shapes: a token
 * decodes 1.15x faster (docs/performance.md, "oneDNN before OpenBLAS").
 *
 * MAC_BLAS: `auto` (default) uses oneDNN where the system has it, else OpenBLAS; `off` neither; a
 * soname or path loads that library (either of the two) or stops at startup. Where one runs, it has
 * the instance's threads and WASM runs one (src/backend/select.ts).
 */
import * as tf from '@tensorflow/tfjs-core';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';
import { dlopen, FFIType, ptr, type Pointer } from 'bun:ffi';
import { AFFINE_KERNEL, PRODUCT_KERNEL } from '../../model/layers.ts';
import { filledOutput } from './wasm-kernels.ts';

/** A native BLAS opened: which of the two, the soname or path it came from, and the two calls the kernel makes. */
export interface OpenedBlas {
  name: 'oneDNN' | 'OpenBLAS';
  library: string;
  /**
   * C = alpha op(A) op(B) of row-major matrices, op a transpose where asked, alpha 1 unless given;
   * ld* are their row strides. `accumulate`: C += alpha op(A) op(B), onto the values C holds.
   */
  sgemm(transposeA: boolean, transposeB: boolean, m: number, n: number, k: number, a: Pointer, lda: number, b: Pointer, ldb: number, c: Pointer, ldc: number, accumulate?: boolean, alpha?: number): void;
  /** Sets the threads of the products that the calling thread asks for. */
  setThreads(threads: number): void;
}

/**
 * x W + b into `out` (rows x out), each where it lies in the heap; the bias is a row for every row
 * or one a row (rows x out), and without one x W. x has at least one column.
 */
export type AffineProduct = (backend: BackendWasm, x: tf.TensorInfo, weight: tf.TensorInfo, bias: tf.TensorInfo | undefined, out: tf.TensorInfo) => void;

/** oneDNN's row-major sgemm; its threads are OpenMP's, set through libgomp, which it links. */
function openOneDnn(library: string): OpenedBlas {
  const { symbols } = dlopen(library, {
    dnnl_sgemm: {
      args: [FFIType.i8, FFIType.i8, FFIType.i64, FFIType.i64, FFIType.i64, FFIType.f32, FFIType.ptr, FFIType.i64, FFIType.ptr, FFIType.i64, FFIType.f32, FFIType.ptr, FFIType.i64],
      returns: FFIType.i32,
    },
  });
  const openMp = dlopen('libgomp.so.1', { omp_set_num_threads: { args: [FFIType.i32], returns: FFIType.void } }).symbols;
  const [NO_TRANS, TRANS] = ['N', 'T'].map((c) => c.charCodeAt(0)) as [number, number];
  return {
    name: 'oneDNN',
    library,
    sgemm: (transposeA, transposeB, m, n, k, a, lda, b, ldb, c, ldc, accumulate = false, alpha = 1) => {
      const status = symbols.dnnl_sgemm(transposeA ? TRANS : NO_TRANS, transposeB ? TRANS : NO_TRANS, m, n, k, alpha, a, lda, b, ldb, accumulate ? 1 : 0, c, ldc);
      if (status !== 0) throw new Error(`dnnl_sgemm failed with status ${status} (m ${m}, n ${n}, k ${k})`);
    },
    // OpenMP's thread count belongs to the thread that sets it: each backend's own (main or worker).
    setThreads: (threads) => openMp.omp_set_num_threads(threads),
  };
}

function openOpenBlas(library: string): OpenedBlas {
  const { symbols } = dlopen(library, {
    cblas_sgemm: {
      args: [FFIType.i32, FFIType.i32, FFIType.i32, FFIType.i32, FFIType.i32, FFIType.i32, FFIType.f32, FFIType.ptr, FFIType.i32, FFIType.ptr, FFIType.i32, FFIType.f32, FFIType.ptr, FFIType.i32],
      returns: FFIType.void,
    },
    openblas_set_num_threads: { args: [FFIType.i32], returns: FFIType.void },
  });
  const [ROW_MAJOR, NO_TRANS, TRANS] = [101, 111, 112];
  return {
    name: 'OpenBLAS',
    library,
    sgemm: (transposeA, transposeB, m, n, k, a, lda, b, ldb, c, ldc, accumulate = false, alpha = 1) =>
      symbols.cblas_sgemm(ROW_MAJOR, transposeA ? TRANS : NO_TRANS, transposeB ? TRANS : NO_TRANS, m, n, k, alpha, a, lda, b, ldb, accumulate ? 1 : 0, c, ldc),
    // OpenBLAS's pool is one per process; every backend in it asks for the same count under auto.
    setThreads: (threads) => symbols.openblas_set_num_threads(threads),
  };
}

/** The two libraries, in the order `auto` tries them, each with the sonames it is found by. */
const LIBRARIES = [
  { name: 'oneDNN', sonames: ['libdnnl.so.3', 'libdnnl.so.2'], open: openOneDnn },
  { name: 'OpenBLAS', sonames: ['libopenblas.so.0', 'libopenblas.so', 'libopenblas.dylib'], open: openOpenBlas },
] as const;

/** MAC_BLAS names a library that does not load as oneDNN or OpenBLAS: a startup error, whatever the backend order. */
export class BlasSettingError extends Error {
  override name = 'BlasSettingError';
}

/**
 * The native BLAS that MAC_BLAS asks for, opened, or why none will run (off, or none found under
 * auto). A soname or path that loads as neither library stops the start (BlasSettingError).
 */
export function openBlas(setting = process.env.MAC_BLAS): OpenedBlas | { reason: string } {
  const value = (setting ?? '').trim();
  if (value.toLowerCase() === 'off') return { reason: 'MAC_BLAS=off' };
  const forced = value !== '' && value.toLowerCase() !== 'auto';
  const { opened, errors } = openFirst(forced ? LIBRARIES.map((library) => [value, library] as const) : LIBRARIES.flatMap(candidatesOf));
  if (opened) return opened;
  if (forced) throw new BlasSettingError(`MAC_BLAS=${value}: cannot load oneDNN or OpenBLAS from it: ${errors.join('; ')}`);
  return { reason: `no oneDNN or OpenBLAS found (${LIBRARIES.flatMap(({ sonames }) => sonames).join(', ')})` };
}

/** Each of the two libraries that this system has, opened from the first of its sonames that loads: for tests and benches. */
export function availableBlas(): OpenedBlas[] {
  return LIBRARIES.flatMap((library) => openFirst(candidatesOf(library)).opened ?? []);
}

type Library = (typeof LIBRARIES)[number];

function candidatesOf(library: Library): (readonly [string, Library])[] {
  return library.sonames.map((soname) => [soname, library] as const);
}

/** The first of the candidates, each a soname and the library to open it as, that opens; and why the ones before it did not. */
function openFirst(candidates: (readonly [string, Library])[]): { opened?: OpenedBlas; errors: string[] } {
  const errors: string[] = [];
  for (const [soname, { name, open }] of candidates) {
    try {
      return { opened: open(soname), errors };
    } catch (error) {
      errors.push(`${soname} as ${name}: ${error instanceof Error ? error.message : String(error)}`);
    }
  }
  return { errors };
}

/**
 * Registers the native BatchMatMul, and x W + b and x W, for 'wasm' (call once, after the backend
 * started) with `threads` threads; x W + b's and x W's product is `affineProduct`.
 */
export function startBlas(blas: OpenedBlas, threads: number, affineProduct = float32Product(blas)): void {
  blas.setThreads(threads);
  registerBlasMatMul(blas);
  registerBlasAffine(affineProduct);
}

/** x W + b as one sgemm: the output starts as the bias, and the product adds onto it. */
function float32Product(blas: OpenedBlas): AffineProduct {
  return (backend, x, weight, bias, out) => {
    const [[rows, inDim], outDim] = [x.shape as [number, number], weight.shape[1]!];
    if (bias) fillWithBias(backend, bias, out);
    const [xs, ws, os] = [x, weight, out].map((t) => backend.typedArrayFromHeap(t) as Float32Array) as [Float32Array, Float32Array, Float32Array];
    blas.sgemm(false, false, rows, outDim, inDim, ptr(xs), inDim, ptr(ws), outDim, ptr(os), outDim, bias !== undefined);
  };
}

/** `out` (rows x out) set to the bias: a row repeated, or one a row. */
function fillWithBias(backend: BackendWasm, bias: tf.TensorInfo, out: tf.TensorInfo): void {
  const [os, bs] = [out, bias].map((t) => backend.typedArrayFromHeap(t) as Float32Array) as [Float32Array, Float32Array];
  os.set(bs);
  // Each copy doubles what is filled: a few long copies, not a call a row (70 us for 197 x 768, not 90).
  for (let filled = bs.length; filled < os.length; filled *= 2) os.copyWithin(filled, 0, Math.min(filled, os.length - filled));
}

/**
 * x W + b (model/layers.ts AFFINE_KERNEL) as one product, which adds the bias itself. That spares
 * the Add after every biased product, and the residual stream's where it comes as the bias: WASM
 * pays some 10 us a kernel whatever its size, and a decoded token runs hundreds. A gate's sigmoid is
 * WASM's own kernel, after. x W (PRODUCT_KERNEL), a weight without a bias, is the same product.
 */
function registerBlasAffine(product: AffineProduct): void {
  const sigmoid = tf.getKernel(tf.Sigmoid, 'wasm')!.kernelFunc;
  const multiply = (backend: BackendWasm, x: tf.TensorInfo, weight: tf.TensorInfo, bias?: tf.TensorInfo): tf.TensorInfo => {
    return filledOutput(backend, [x.shape[0]!, weight.shape[1]!], (out) => {
      if (x.shape[1]! > 0) product(backend, x, weight, bias, out);
      // An empty x sums nothing (and has no address to pass): the output is the bias, or zeros.
      else if (bias) fillWithBias(backend, bias, out);
      else (backend.typedArrayFromHeap(out) as Float32Array).fill(0);
    });
  };
  const affine: tf.KernelFunc = ({ inputs, backend: kernelBackend, attrs }) => {
    const { x, weight, bias } = inputs as Record<'x' | 'weight' | 'bias', tf.TensorInfo>;
    const backend = kernelBackend as BackendWasm;
    const out = multiply(backend, x, weight, bias);
    if (attrs?.activation !== 'sigmoid') return out;
    const activated = sigmoid({ inputs: { x: out }, backend, attrs: {} }) as tf.TensorInfo;
    backend.disposeData(out.dataId);
    return activated;
  };
  const plain: tf.KernelFunc = ({ inputs, backend }) => {
    const { x, weight } = inputs as Record<'x' | 'weight', tf.TensorInfo>;
    return multiply(backend as BackendWasm, x, weight);
  };
  tf.registerKernel({ kernelName: AFFINE_KERNEL, backendName: 'wasm', kernelFunc: affine });
  tf.registerKernel({ kernelName: PRODUCT_KERNEL, backendName: 'wasm', kernelFunc: plain });
}

function registerBlasMatMul(blas: OpenedBlas): void {
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
    // A product over no inner terms is zeros; the operands are empty, and so are their heap views.
    if (k === 0) return filledOutput(backend, [...outer, m, n], (out) => void (backend.typedArrayFromHeap(out) as Float32Array).fill(0));
    return filledOutput(backend, [...outer, m, n], (out) => {
      const [pa, pb, pc] = [a, b, out].map((t) => ptr(backend.typedArrayFromHeap(t) as Float32Array) as number);
      const at = (base: number, bytes: number) => (base + bytes) as Pointer;
      for (let i = 0; i < batch; i++) {
        blas.sgemm(
          transposeA, transposeB, m, n, k,
          at(pa!, batchA === 1 ? 0 : i * m * k * 4), transposeA ? m : k,
          at(pb!, batchB === 1 ? 0 : i * k * n * 4), transposeB ? k : n,
          at(pc!, i * m * n * 4), n,
        );
      }
    });
  };
  tf.unregisterKernel(tf.BatchMatMul, 'wasm');
  tf.registerKernel({ ...config, kernelFunc });
}
