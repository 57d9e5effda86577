/**
 * The threaded WASM build of @tensorflow/tfjs-backend-wasm 4.22, started under Bun. Three things stop
 * it out of the box, each bridged here without changing the package:
 * 1. Emscripten starts its eight pthread workers from a `blob:` URL, which Bun's worker_threads
 *    refuses, and the script in it needs bundle-scoped names: worker_threads' Worker is swapped, for
 *    the start only, for one that runs wasm-pthread-worker.ts.
 * 2. tfjs caps the pool at half the logical cores (`emscripten_num_logical_cores() / 2`, read once
 *    when the module starts), taking every core for a hyperthread pair: on 2 cores it makes 1 thread,
 *    whatever setThreadsCount asked. That is why an earlier probe saw the module start with one
 *    thread. os.cpus() answers twice the threads asked for while the module starts.
 * 3. Waking the pool costs more than a small product gains: a decode step's [1, 384] x [384, 1152]
 *    ran 4x slower on 2 threads than on one on a quiet machine, 28x on a busy one. Kernels below a size run with XNNPACK's pool pointer
 *    set to null, which pthreadpool takes as "run on the calling thread".
 * A start that fails leaves the package's single-threaded build to start, and says why.
 */
import * as tf from '@tensorflow/tfjs-core';
import { getThreadsCount, setThreadsCount } from '@tensorflow/tfjs-backend-wasm';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { PTHREAD_LOAD_FAILED } from './threads.ts';

const require = createRequire(import.meta.url);
const PTHREAD_WORKER = require.resolve('./wasm-pthread-worker.ts');
const THREADED_BINARY = require.resolve('@tensorflow/tfjs-backend-wasm/dist/tfjs-backend-wasm-threaded-simd.wasm');

/**
 * Below these sizes a kernel runs on the calling thread (measured on 2 cores, docs/performance.md,
 * "CPU threads and a native BLAS"): a matrix product's multiply-adds x 2, and any other kernel's
 * largest input, in elements.
 */
export const SERIAL_BELOW = { productFlops: 40e6, elements: 256 * 1024 };

const PRODUCTS = new Set<string>([tf.BatchMatMul, tf._FusedMatMul]);

interface StartOptions {
  /** The pthread script; a test gives a broken one to see the fallback. */
  workerScript?: string;
  /** How long the eight pthread workers may take to load the module. */
  timeoutMs?: number;
}

type WorkerThreads = { Worker: new (url: string | URL, options?: object) => WorkerThreadsWorker };
type WorkerThreadsWorker = { on(event: string, listener: (data: any) => void): unknown; unref(): void; terminate(): Promise<number> };

/**
 * Starts tfjs's 'wasm' backend on the threaded SIMD build with `threads` threads and returns how many
 * it runs. Throws with the reason when it cannot; the 'wasm' backend is then as before the call,
 * ready to start single-threaded.
 */
export async function startThreadedWasm(threads: number, { workerScript = PTHREAD_WORKER, timeoutMs = 60_000 }: StartOptions = {}): Promise<number> {
  if (typeof SharedArrayBuffer === 'undefined') throw new Error('this runtime has no SharedArrayBuffer');
  try {
    new WebAssembly.Memory({ initial: 1, maximum: 1, shared: true });
  } catch (error) {
    throw new Error(`this runtime has no shared WebAssembly memory: ${error instanceof Error ? error.message : error}`);
  }
  // tfjs answers false on any Node-like runtime without looking (tfjs issue 3830); the two checks
  // above are what its browser check tests.
  tf.env().set('WASM_HAS_MULTITHREAD_SUPPORT', true);
  const factory = tf.findBackendFactory('wasm');
  if (!factory) throw new Error("tfjs has no 'wasm' backend registered");

  const workerThreads = require('node:worker_threads') as WorkerThreads;
  const os = require('node:os') as { cpus: () => unknown[] };
  const saved = { Worker: workerThreads.Worker, cpus: os.cpus, globalWorker: globalThis.Worker };
  const started: WorkerThreadsWorker[] = [];
  let failed: (reason: string) => void = () => {};
  const failure = new Promise<never>((_, reject) => (failed = (reason) => reject(new Error(reason))));
  let starting = true;
  workerThreads.Worker = class extends saved.Worker {
    constructor(url: string | URL, options?: object) {
      super(workerScript, options);
      if (String(url).startsWith('blob:')) URL.revokeObjectURL(String(url));
      started.push(this);
      super.on('message', (data) => {
        if (data?.cmd === PTHREAD_LOAD_FAILED) failed(data.reason ?? 'a pthread worker failed to load');
      });
      // Emscripten listens for errors only once the module is compiled; one emitted before that
      // would have no listener and end the process.
      super.on('error', (error) => starting && failed(`a pthread worker failed: ${error instanceof Error ? error.message : String(error)}`));
    }

    // Emscripten rethrows a worker's error, which would end the process: while starting, the error
    // is the reason for one thread instead (the listener above). Later, a pthread that dies leaves
    // the pool waiting for it, and ending the process is right.
    override on(event: string, listener: (...args: any[]) => void) {
      return super.on(event, event === 'error' ? (error: unknown) => !starting && listener(error) : listener);
    }
  };
  const cpus = saved.cpus.call(os);
  os.cpus = () => Array.from({ length: 2 * threads }, (_, i) => cpus[i % cpus.length]);
  setThreadsCount(threads);
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`its pthread workers did not load within ${timeoutMs / 1000} s`)), timeoutMs);
  });
  try {
    const ok = await Promise.race([tf.setBackend('wasm'), failure, timeout]);
    if (!ok) throw new Error('the threaded module failed to initialize');
    const running = getThreadsCount();
    if (running > 1) runSmallKernelsSerially(tf.backend() as BackendWasm);
    // Emscripten holds a reference on each pthread that runs, so the pool's idle threads would keep
    // a finished process alive.
    for (const worker of started) worker.unref();
    return running;
  } catch (error) {
    // Back to a 'wasm' backend that has not started, for the single-threaded build to start.
    await Promise.all(started.map((worker) => worker.terminate()));
    tf.removeBackend('wasm');
    tf.registerBackend('wasm', factory, 2);
    tf.env().set('WASM_HAS_MULTITHREAD_SUPPORT', false);
    throw error;
  } finally {
    starting = false;
    clearTimeout(timer);
    workerThreads.Worker = saved.Worker;
    os.cpus = saved.cpus;
    // Emscripten's node branch sets the global Worker to worker_threads' (Bun's own is a Web Worker).
    globalThis.Worker = saved.globalWorker;
  }
}

/**
 * Wraps every 'wasm' kernel so that a small one runs with XNNPACK's pool pointer nulled (see point 3
 * above). The pointer's address is read from the binary and checked against get_threads_count();
 * where the check fails, this throws and the caller falls back to one thread.
 */
function runSmallKernelsSerially(backend: BackendWasm): void {
  const module = backend.wasm as unknown as { HEAPU8: Uint8Array; _get_threads_count(): number };
  const address = threadPoolAddress(readFileSync(THREADED_BINARY));
  const heap = new Int32Array(module.HEAPU8.buffer, 0, address / 4 + 1);
  const pool = heap[address / 4]!;
  const threads = module._get_threads_count();
  heap[address / 4] = 0;
  const withoutPool = module._get_threads_count();
  heap[address / 4] = pool;
  if (pool === 0 || threads < 2 || withoutPool !== -1) throw new Error(`cannot find XNNPACK's thread pool in this build (at ${address}: ${pool})`);

  for (const config of tf.getKernelsForBackend('wasm')) {
    const stock = config.kernelFunc;
    const small: (args: Parameters<tf.KernelFunc>[0]) => boolean = PRODUCTS.has(config.kernelName)
      ? (args) => productFlops(args) < SERIAL_BELOW.productFlops
      : (args) => largestInput(args.inputs) < SERIAL_BELOW.elements;
    const kernelFunc: tf.KernelFunc = (args) => {
      if (!small(args)) return stock(args);
      heap[address / 4] = 0;
      try {
        return stock(args);
      } finally {
        heap[address / 4] = pool;
      }
    };
    tf.unregisterKernel(config.kernelName, 'wasm');
    tf.registerKernel({ ...config, kernelFunc });
  }
}

/** Multiply-adds x 2 of a (batched) matrix product. */
function productFlops({ inputs, attrs }: { inputs: tf.NamedTensorInfoMap; attrs?: tf.NamedAttrMap }): number {
  const a = inputs.a!.shape;
  const b = inputs.b!.shape;
  const [m, k] = attrs?.transposeA ? [a.at(-1)!, a.at(-2)!] : [a.at(-2)!, a.at(-1)!];
  const n = attrs?.transposeB ? b.at(-2)! : b.at(-1)!;
  const batch = Math.max(tf.util.sizeFromShape(a.slice(0, -2)), tf.util.sizeFromShape(b.slice(0, -2)));
  return 2 * batch * m * k * n;
}

function largestInput(inputs: tf.NamedTensorInfoMap): number {
  let largest = 0;
  for (const input of Object.values(inputs)) if (input) largest = Math.max(largest, tf.util.sizeFromShape(input.shape));
  return largest;
}

/**
 * The linear-memory address of tfjs's `threadpool` global, from the code of the exported
 * `get_threads_count`, which begins by loading it: `i32.const ADDRESS; i32.load`.
 */
export function threadPoolAddress(binary: Uint8Array): number {
  let at = 8;
  const u32 = () => {
    let value = 0;
    for (let shift = 0; ; shift += 7) {
      const byte = binary[at++]!;
      value += (byte & 0x7f) * 2 ** shift;
      if (byte < 0x80) return value;
    }
  };
  const name = () => {
    const length = u32();
    at += length;
    return new TextDecoder().decode(binary.subarray(at - length, at));
  };
  let importedFunctions = 0;
  let exported: number | undefined;
  while (at < binary.length) {
    const id = binary[at++]!;
    const size = u32();
    const end = at + size;
    if (id === 2) {
      for (let count = u32(); count > 0; count--) {
        name();
        name();
        const kind = binary[at++]!;
        if (kind === 0) (importedFunctions++, u32());
        else if (kind === 1) (at++, binary[at++]! & 1 ? (u32(), u32()) : u32());
        else if (kind === 2) binary[at++]! & 1 ? (u32(), u32()) : u32();
        else at += 2;
      }
    } else if (id === 7) {
      for (let count = u32(); count > 0; count--) {
        const exportName = name();
        const kind = binary[at++]!;
        const index = u32();
        if (kind === 0 && exportName === 'get_threads_count') exported = index;
      }
    } else if (id === 10 && exported !== undefined) {
      const wanted = exported - importedFunctions;
      for (let i = 0, count = u32(); i < count; i++) {
        const bodySize = u32();
        if (i !== wanted) {
          at += bodySize;
          continue;
        }
        for (let locals = u32(); locals > 0; locals--) (u32(), at++);
        if (binary[at++] !== 0x41) break;
        const address = u32();
        if (binary[at] !== 0x28 || address % 4 !== 0) break;
        return address;
      }
      break;
    }
    at = end;
  }
  throw new Error("cannot find XNNPACK's thread pool in this build");
}
