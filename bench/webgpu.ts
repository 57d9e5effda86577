/**
 * What the benches share about the webgpu tier: the shaders a piece of work launches (a GPU pays for
 * each launch, whatever its size), and two ways to run a bench on webgpu where there is no GPU:
 * --software-webgpu on Mesa's software renderer, whose launches are a GPU's and whose timings are
 * not, and --null-webgpu on Dawn's null device, which runs no shader, so that its timings are the
 * host's share of the work: with a GPU, an encode or a token cannot take less on this CPU. The null
 * device holds 512 MiB, and what it reads back is not the numbers a GPU would compute.
 */
import * as tf from '@tensorflow/tfjs-core';
import { startNullWebGPU, startSoftwareWebGPU } from '../src/backend/webgpu.ts';

/** The benches' flags for webgpu without a GPU, for parseArgs. */
export const WEBGPU_WITHOUT_GPU_FLAGS = {
  'software-webgpu': { type: 'boolean', default: false },
  'null-webgpu': { type: 'boolean', default: false },
} as const;

/**
 * After selectBackend: starts webgpu without a GPU where a flag asks for it, and returns a line that
 * says which; null where no flag does.
 */
export async function useWebGPUWithoutGPU(flags: { 'software-webgpu': boolean; 'null-webgpu': boolean }): Promise<string | null> {
  if (flags['software-webgpu'] && flags['null-webgpu']) throw new Error('--software-webgpu and --null-webgpu name two devices; give one');
  if (flags['software-webgpu']) {
    await startSoftwareWebGPU();
    return "webgpu on Mesa's software renderer (--software-webgpu): the launches are a GPU's, the timings are not";
  }
  if (flags['null-webgpu']) {
    await startNullWebGPU();
    return "webgpu on Dawn's null device (--null-webgpu): no shader runs, the timings are the host's share, a GPU's floor on this CPU; what it reads back is not numbers";
  }
  return null;
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

/**
 * Destroys the buffers the webgpu backend keeps for reuse, between parts of a bench: Dawn's null
 * device holds 512 MiB, less than the original configuration's encode and decode keep together.
 */
export function releaseBufferPool(): void {
  if (tf.getBackend() !== 'webgpu') return;
  type Pool = { freeBuffers: Map<string, { size: number; destroy(): void }[]>; numFreeBuffers: number; numBytesAllocated: number };
  const pool = (tf.backend() as unknown as { bufferManager: Pool }).bufferManager;
  for (const buffers of pool.freeBuffers.values()) {
    for (const buffer of buffers.splice(0)) {
      pool.numBytesAllocated -= buffer.size;
      buffer.destroy();
    }
  }
  pool.numFreeBuffers = 0;
}
