/**
 * Picks the TensorFlow.js compute backend, once per process: the main thread and every worker call
 * `selectBackend()` before touching a tensor (DESIGN.md section 2). Every quirk of TensorFlow.js on
 * Bun is handled here, with one comment each.
 */
import * as tf from '@tensorflow/tfjs-core';
import { setWasmPaths, type BackendWasm } from '@tensorflow/tfjs-backend-wasm';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { bfloat16Product, bfloat16Unavailable, MatmulPrecisionError, packedWeights, parseMatmulPrecision, registerBfloat16FeedForward, type MatmulPrecision } from './bfloat16.ts';
import { BlasSettingError, openBlas, startBlas } from './blas.ts';
import { openOneDnnPrimitives, registerOneDnnGelu } from './onednn-primitives.ts';
import { importInstalled, requireInstalled } from './optional-package.ts';
import { parseThreadsSetting, threadsPerInstance } from './threads.ts';
import { startThreadedWasm } from './wasm-threads.ts';
import { startWebGPU } from './webgpu.ts';
import { registerWasmCopyKernels } from './wasm-kernels.ts';
import { blasSelfAttention, oneDnnSelfAttention, registerWasmSelfAttention } from './wasm-attention.ts';
import { registerBlasConvolutionGradients, registerOneDnnConvolution } from './wasm-convolution.ts';
import { registerWasmMemoryUpdateKernels } from './wasm-memory-update.ts';
import { registerWasmNormKernels, registerWasmResidualNormKernels } from './wasm-norms.ts';
import { loadSimdKernels, registerWasmAdamWKernel, registerWasmGeluKernels } from './wasm-simd.ts';
// Bun drops TypeScript imports whose bindings are unused, so modules needed only for their side
// effects are imported bare.
import '@tensorflow/tfjs-backend-cpu';
// tfjs-core alone registers no gradients and no chained ops (`x.square()`); the union package
// @tensorflow/tfjs would import these two for us.
import '@tensorflow/tfjs-core/dist/register_all_gradients';
import '@tensorflow/tfjs-core/dist/public/chained_ops/register_all_chained_ops';

export type BackendName = 'cuda' | 'webgpu' | 'wasm' | 'cpu';

export interface BackendInfo {
  name: BackendName;
  /** TensorFlow.js's own name for it, `tf.getBackend()`: 'tensorflow' for cuda. */
  tfBackend: string;
  /** The tiers tried before this one (auto only), each with why it could not start. */
  skipped: { name: string; reason: string }[];
  /** Compute threads the backend uses; with a native BLAS, those of its products, WASM's kernels running on one. */
  threads: number;
  /** Why one thread runs where MAC_THREADS asked for more (the threaded WASM build could not start). */
  singleThreadReason?: string;
  /** The native BLAS that matrix products run on (WASM only; src/backend/blas.ts). */
  blas?: string;
  /** What the layers' weights multiply in: float32, or bfloat16 where MAC_MATMUL_PRECISION asks (src/backend/bfloat16.ts). */
  matmulPrecision: MatmulPrecision;
  /** Whether the WASM SIMD binary runs (false off WASM). */
  simd: boolean;
  /** The GPU it runs on, as the adapter names itself (webgpu only). */
  device?: string;
}

/** A backend that cannot start, with the reason. Forced by MAC_BACKEND, this is a startup error. */
export class BackendUnavailableError extends Error {
  constructor(
    readonly backend: string,
    readonly reason: string,
  ) {
    super(`MAC_BACKEND=${backend}: cannot start: ${reason}`);
    this.name = 'BackendUnavailableError';
  }
}

const AUTO_ORDER: BackendName[] = ['cuda', 'webgpu', 'wasm', 'cpu'];
const CUDA_PACKAGE = '@tensorflow/tfjs-node-gpu';

type Started = Pick<BackendInfo, 'threads' | 'simd' | 'singleThreadReason' | 'blas' | 'device' | 'matmulPrecision'>;

/** Each starter gets the threads MAC_THREADS asks of this instance, and the precision of its products. */
const starters: Record<BackendName, (threads: number, precision: MatmulPrecision) => Promise<Started>> = {
  cuda: startCuda,
  webgpu: async () => {
    const device = await startWebGPU();
    return { threads: 1, simd: false, device, matmulPrecision: 'float32' };
  },
  wasm: startWasm,
  cpu: async () => {
    await setBackend('cpu');
    // The cpu backend's first tensor prints advice to install tfjs-node; the startup log already
    // says which backend runs and why, so that first tensor is made here with the advice captured.
    await captureWarnings(() => tf.dispose(tf.scalar(0)));
    return { threads: 1, simd: false, matmulPrecision: 'float32' };
  },
};

let selected: Promise<BackendInfo> | undefined;

export interface SelectOptions {
  /** Tiers that auto passes over, each with the reason it logs (the test suite's preload skips webgpu). */
  skip?: Partial<Record<BackendName, string>>;
  /**
   * The precision of x W + b's products, in place of MAC_MATMUL_PRECISION: training replicas ask
   * for float32, whatever serving runs (bfloat16.ts).
   */
  matmulPrecision?: MatmulPrecision;
}

/** Memoized: later calls get the first call's result, or its startup error. */
export function selectBackend(options: SelectOptions = {}): Promise<BackendInfo> {
  selected ??= select(process.env.MAC_BACKEND, options);
  return selected;
}

/** One line for the startup log. */
export function describeBackend(info: BackendInfo): string {
  const details = [`tfjs '${info.tfBackend}'`];
  const threads = `${info.threads} thread${info.threads === 1 ? '' : 's'}`;
  if (info.device) details.push(info.device);
  else if (info.blas) details.push(`products on ${info.blas}${info.matmulPrecision === 'bfloat16' ? ' (the weights in bfloat16)' : ''} with ${threads}, the rest on one thread`);
  else details.push(threads);
  if (info.simd) details.push('SIMD');
  const skipped = info.skipped.map(({ name, reason }) => `${name} (${reason})`).join(', ');
  const single = info.singleThreadReason ? `; one thread: ${info.singleThreadReason}` : '';
  return `backend ${info.name} (${details.join(', ')})${skipped ? `; skipped: ${skipped}` : ''}${single}`;
}

async function select(requested: string | undefined, { skip = {}, matmulPrecision }: SelectOptions): Promise<BackendInfo> {
  const choice = (requested ?? '').trim().toLowerCase() || 'auto';
  if (choice !== 'auto' && !isBackendName(choice)) {
    throw new Error(`MAC_BACKEND must be one of auto, ${AUTO_ORDER.join(', ')}; got '${requested}'`);
  }
  const threads = threadsPerInstance(parseThreadsSetting(process.env.MAC_THREADS));
  const precision = matmulPrecision ?? parseMatmulPrecision(process.env.MAC_MATMUL_PRECISION);
  const candidates = choice === 'auto' ? AUTO_ORDER : [choice];
  const skipped: BackendInfo['skipped'] = [];
  for (const name of candidates) {
    const passedOver = choice === 'auto' ? skip[name] : undefined;
    if (passedOver) {
      skipped.push({ name, reason: passedOver });
      continue;
    }
    try {
      const started = await starters[name](threads, precision);
      if (started.matmulPrecision !== precision) throw new MatmulPrecisionError(precision, `the ${name} backend multiplies in ${started.matmulPrecision} only`);
      return { name, tfBackend: tf.getBackend(), skipped, ...started };
    } catch (error) {
      // A precision or a BLAS asked for and not run is an error under auto too: the next tier would
      // not run it either, and would run many times slower unasked.
      if (error instanceof MatmulPrecisionError || error instanceof BlasSettingError) throw error;
      const reason = error instanceof Error ? error.message : String(error);
      if (choice !== 'auto') throw new BackendUnavailableError(name, reason);
      skipped.push({ name, reason });
    }
  }
  throw new Error(`no compute backend could start: ${skipped.map((s) => `${s.name}: ${s.reason}`).join('; ')}`);
}

function isBackendName(name: string): name is BackendName {
  return (AUTO_ORDER as string[]).includes(name);
}

async function startCuda(): Promise<Started> {
  requireInstalled(CUDA_PACKAGE);
  const noGpu = missingGpuReason();
  if (noGpu) throw new Error(noGpu);
  await importInstalled(CUDA_PACKAGE);
  await setBackend('tensorflow');
  return { threads: availableParallelism(), simd: false, matmulPrecision: 'float32' };
}

/** Why no CUDA GPU is visible, or undefined when one is. */
function missingGpuReason(): string | undefined {
  const mask = process.env.CUDA_VISIBLE_DEVICES?.trim();
  if (mask === '' || mask === '-1') return `no CUDA GPU visible (CUDA_VISIBLE_DEVICES='${mask}')`;
  if (existsSync('/dev/nvidia0') || existsSync('/proc/driver/nvidia/version')) return undefined;
  const smi = spawnSync('nvidia-smi', ['-L'], { encoding: 'utf8', timeout: 10_000 });
  if (smi.status === 0 && /^GPU \d+/m.test(smi.stdout)) return undefined;
  return 'no CUDA GPU visible (no /dev/nvidia0, no NVIDIA driver, nvidia-smi lists none)';
}

async function startWasm(threads: number, precision: MatmulPrecision): Promise<Started> {
  // The .wasm files sit next to the package's entry point; an absolute path finds them from any
  // working directory and from a Bun Worker.
  setWasmPaths(`${dirname(fileURLToPath(import.meta.resolve('@tensorflow/tfjs-backend-wasm')))}/`);
  // WASM has no kernel for Conv2DBackpropFilter, UnsortedSegmentSum or Einsum: model/ avoids those
  // ops (DESIGN.md section 2) rather than have them fail at training time.
  // With a native BLAS, the instance's threads run its products and WASM runs one thread: each
  // pool busy-waits between its ops, and two pools on the same cores take turns (an image encodes
  // in 330 rather than 480 ms; docs/performance.md, "CPU threads and a native BLAS").
  const blas = openBlas();
  const wasmThreads = 'sgemm' in blas ? 1 : threads;
  let running = 1;
  let singleThreadReason: string | undefined;
  if (wasmThreads > 1) {
    try {
      running = await startThreadedWasm(wasmThreads);
    } catch (error) {
      singleThreadReason = `the threaded WASM build could not start: ${error instanceof Error ? error.message : String(error)}`;
      console.warn(`MAC_THREADS asked for ${threads} threads; ${singleThreadReason}; running one thread`);
    }
  }
  if (tf.getBackend() !== 'wasm') {
    // One thread: the single-threaded SIMD binary, without pthread workers.
    tf.env().set('WASM_HAS_MULTITHREAD_SUPPORT', false);
    await setBackend('wasm');
  }
  // With a native BLAS, a product takes its transposes itself (sgemm's flags), as the stock gradient asks.
  if (!('sgemm' in blas)) registerPlainMatMulGradient();
  registerWasmCopyKernels();
  const simd = await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT') === true;
  const backend = tf.backend() as BackendWasm;
  // Our kernels are a speed-up: where they cannot start, the ops run written out, and the server still starts.
  const simdKernels = simd
    ? await loadSimdKernels(backend).catch((error) => {
      console.warn(`the SIMD kernels of src/backend/wasm-simd.wat could not start (${error instanceof Error ? error.message : String(error)}); GELU, the row norms, self-attention, AdamW and the memory's update run written out`);
      return undefined;
    })
    : undefined;
  if (simdKernels) {
    registerWasmNormKernels(backend, simdKernels);
    registerWasmResidualNormKernels(backend);
    registerWasmGeluKernels(backend, simdKernels);
    registerWasmAdamWKernel(backend, simdKernels);
    registerWasmMemoryUpdateKernels(backend, simdKernels);
  }
  // GELU, a ViT's self-attention and the products in bfloat16 on oneDNN where it runs the products; else GELU and the softmax in the SIMD module.
  const opened = 'sgemm' in blas && blas.name === 'oneDNN' ? openOneDnnPrimitives(blas.library) : { reason: 'the products do not run on oneDNN' };
  const primitives = 'gelu' in opened ? opened : undefined;
  if (precision === 'bfloat16') {
    const reason = bfloat16Unavailable(blas, opened);
    if (reason) throw new MatmulPrecisionError(precision, reason);
  }
  if (!('sgemm' in blas)) return { threads: running, simd, matmulPrecision: 'float32', ...(singleThreadReason && { singleThreadReason }) };
  if (precision === 'bfloat16') {
    const packedWeight = packedWeights(primitives!);
    startBlas(blas, threads, bfloat16Product(primitives!, packedWeight));
    registerBfloat16FeedForward(primitives!, packedWeight);
  } else {
    startBlas(blas, threads);
  }
  registerBlasConvolutionGradients(blas);
  if (primitives) {
    registerOneDnnGelu(primitives);
    registerOneDnnConvolution(primitives);
    registerWasmSelfAttention(oneDnnSelfAttention(primitives, precision));
  } else if (simdKernels) {
    registerWasmSelfAttention(blasSelfAttention(blas, (scores, rows, n) => simdKernels.softmaxRows(scores.byteOffset, rows, n, 1)));
  }
  return { threads, simd, blas: blas.library, matmulPrecision: precision };
}

/**
 * Without a native BLAS, WASM hands a matrix product to XNNPACK only when neither operand is
 * transposed; a transposed one runs in a plain loop about 15x slower (a [1600, 128]^T x [1600, 512]
 * product: 1.3 against 24 GFLOP/s here), and the stock BatchMatMul gradient is made of transposed
 * products. This gradient transposes its operands explicitly on WASM, then multiplies them plainly:
 * same values, training about 3x faster. Gradients are global, so on any other backend (webgpu, in a
 * process that started WASM first) the product takes the transposes itself, as the stock gradient
 * does: a transpose is a launch more on a GPU.
 */
function registerPlainMatMulGradient(): void {
  const swapLast = (x: tf.Tensor) => tf.transpose(x, [...x.shape.keys()].map((i, _, all) => (i < all.length - 2 ? i : 2 * all.length - 3 - i)));
  const product = (x: tf.Tensor, y: tf.Tensor, transposeX: boolean, transposeY: boolean) =>
    tf.getBackend() === 'wasm' ? tf.matMul(transposeX ? swapLast(x) : x, transposeY ? swapLast(y) : y) : tf.matMul(x, y, transposeX, transposeY);
  tf.registerGradient({
    kernelName: tf.BatchMatMul,
    inputsToSave: ['a', 'b'],
    gradFunc: (dy, saved, attrs) => {
      const [a, b] = saved as [tf.Tensor, tf.Tensor];
      const { transposeA, transposeB } = attrs as unknown as { transposeA: boolean; transposeB: boolean };
      const grad = dy as tf.Tensor;
      if (!transposeA && !transposeB) return { a: () => product(grad, b, false, true), b: () => product(a, grad, true, false) };
      if (!transposeA) return { a: () => product(grad, b, false, false), b: () => product(grad, a, true, false) };
      if (!transposeB) return { a: () => product(b, grad, false, true), b: () => product(a, grad, false, false) };
      return { a: () => product(b, grad, true, true), b: () => product(grad, a, true, true) };
    },
  });
}

/**
 * tf.setBackend() reports a failed initialization only by returning false after printing the error
 * and its stack with console.warn, so the warnings are captured and their first lines become the reason.
 */
async function setBackend(name: string): Promise<void> {
  const { result, warnings } = await captureWarnings(() => tf.setBackend(name));
  if (!result) {
    const reason = warnings.map((warning) => warning.split('\n')[0]).join(': ');
    throw new Error(reason || `tf.setBackend('${name}') failed`);
  }
}

async function captureWarnings<T>(action: () => T | Promise<T>): Promise<{ result: T; warnings: string[] }> {
  const warnings: string[] = [];
  const warn = console.warn;
  console.warn = (...args: unknown[]) => warnings.push(args.map(String).join(' '));
  try {
    return { result: await action(), warnings };
  } finally {
    console.warn = warn;
  }
}
