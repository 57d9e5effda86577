/**
 * GELU and its two derivatives (model/layers.ts GELU_KERNEL, GELU_DERIVATIVE_KERNEL,
 * GELU_SECOND_DERIVATIVE_KERNEL) for the WASM backend, as one SIMD loop each over its heap:
 * wasm-gelu.wat, compiled here by wabt when the backend starts and given the backend's own memory.
 * Written out, GELU is six WASM kernels, each a pass over the tensor: ViT-B/16's twelve
 * [197, 3072] GELUs took 25 ms of a 195 ms encode. JavaScript loops were slower than those kernels
 * (3.1 ms against 2.4 a GELU; JavaScriptCore does not vectorise them), hence a WASM module of
 * our own.
 */
import { readFileSync } from 'node:fs';
import * as tf from '@tensorflow/tfjs-core';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';
import wabt from 'wabt';
import { GELU_DERIVATIVE_KERNEL, GELU_KERNEL, GELU_SECOND_DERIVATIVE_KERNEL } from '../../model/layers.ts';

type Elementwise = (x: number, out: number, n: number) => void;
type GeluExports = Record<'gelu' | 'geluDerivative' | 'geluSecondDerivative', Elementwise>;

/** Registers GELU and its derivatives for 'wasm'; call once, after it is registered. */
export async function registerWasmGeluKernels(): Promise<void> {
  const backend = tf.findBackend('wasm') as BackendWasm;
  const gelus = await instantiate(heapOf(backend));
  const kernels = { [GELU_KERNEL]: gelus.gelu, [GELU_DERIVATIVE_KERNEL]: gelus.geluDerivative, [GELU_SECOND_DERIVATIVE_KERNEL]: gelus.geluSecondDerivative };
  for (const [kernelName, apply] of Object.entries(kernels)) {
    const kernelFunc = ({ inputs: { x } }: { inputs: tf.NamedTensorInfoMap }): tf.TensorInfo => {
      const out = backend.makeOutput(x!.shape, 'float32');
      // Addresses are read after makeOutput, which may move nothing but may grow the heap.
      const [xs, outs] = [x!, out].map((t) => backend.typedArrayFromHeap(t));
      apply(xs!.byteOffset, outs!.byteOffset, xs!.length);
      return out;
    };
    tf.registerKernel({ kernelName, backendName: 'wasm', kernelFunc: kernelFunc as unknown as tf.KernelFunc });
  }
}

/** The backend's WebAssembly.Memory: the threaded build keeps it on the module, the single-threaded one exports it. */
function heapOf(backend: BackendWasm): WebAssembly.Memory {
  const module = backend.wasm as unknown as { wasmMemory?: WebAssembly.Memory; asm?: { memory?: WebAssembly.Memory } };
  const memory = module.wasmMemory ?? module.asm?.memory;
  if (!memory) throw new Error('the WASM backend exposes no WebAssembly.Memory');
  return memory;
}

async function instantiate(memory: WebAssembly.Memory): Promise<GeluExports> {
  const shared = typeof SharedArrayBuffer !== 'undefined' && memory.buffer instanceof SharedArrayBuffer;
  const source = readFileSync(new URL('./wasm-gelu.wat', import.meta.url), 'utf8').replace('SHARED', shared ? 'shared' : '');
  const module = (await wabt()).parseWat('wasm-gelu.wat', source, { simd: true, threads: shared });
  try {
    const { buffer } = module.toBinary({});
    const { instance } = await WebAssembly.instantiate(buffer, { env: { memory } });
    return instance.exports as unknown as GeluExports;
  } finally {
    module.destroy();
  }
}
