/**
 * What the benches share about the webgpu tier: the shaders a piece of work launches (a GPU pays for
 * each launch, whatever its size), and --software-webgpu, which runs a bench on Mesa's software
 * renderer where there is no GPU: its launches are a GPU's, its timings are not.
 */
import * as tf from '@tensorflow/tfjs-core';
import { startSoftwareWebGPU } from '../src/backend/webgpu.ts';

/** For --software-webgpu, after selectBackend: webgpu on Mesa's renderer, and a line that says so. */
export async function useSoftwareWebGPU(): Promise<string> {
  await startSoftwareWebGPU();
  return "webgpu on Mesa's software renderer (--software-webgpu): the launches are a GPU's, the timings are not";
}

let launched: number | null = null;

/**
 * The shaders this thread's webgpu backend has launched since the first call (which starts the
 * count: it wraps the backend's `runWebGPUProgram`); null on any other backend.
 */
export function shaderLaunches(): number | null {
  if (tf.getBackend() !== 'webgpu') return null;
  if (launched === null) {
    launched = 0;
    const backend = tf.backend() as unknown as { runWebGPUProgram: (...args: unknown[]) => unknown };
    const run = backend.runWebGPUProgram.bind(backend);
    backend.runWebGPUProgram = (...args) => {
      launched!++;
      return run(...args);
    };
  }
  return launched;
}
