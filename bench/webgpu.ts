/**
 * What the benches share about the webgpu tier: the shaders a piece of work launches (a GPU pays for
 * each launch, whatever its size), and two ways to run a bench on webgpu where there is no GPU:
 * --software-webgpu on Mesa's software renderer, whose launches are a GPU's and whose timings are
 * not, and --null-webgpu on Dawn's null device, which runs no shader, so that its timings are the
 * host's share of the work: with a GPU, an encode or a token cannot take less on this CPU. The null
 * device holds 512 MiB, and what it reads back is not the numbers a GPU would compute.
 */
import * as tf from '@tensorflow/tfjs-core';
import { describeBackend, selectBackend, type BackendInfo } from '../src/backend/select.ts';
import { startNullWebGPU, startSoftwareWebGPU } from '../src/backend/webgpu.ts';

/** The benches' flags for webgpu without a GPU, for parseArgs. */
export const WEBGPU_WITHOUT_GPU_FLAGS = {
  'software-webgpu': { type: 'boolean', default: false },
  'null-webgpu': { type: 'boolean', default: false },
} as const;

/**
 * Starts a bench's backend: selectBackend's tier, or where a flag asks for it, webgpu without the
 * GPU after a tier that is not webgpu (a process has one webgpu backend, and on a GPU machine
 * selectBackend would start the GPU's). Returns what selectBackend started, and a line that says
 * what the bench runs on.
 */
export async function startBenchBackend(flags: { 'software-webgpu': boolean; 'null-webgpu': boolean }): Promise<{ info: BackendInfo; line: string }> {
  if (flags['software-webgpu'] && flags['null-webgpu']) throw new Error('--software-webgpu and --null-webgpu name two devices; give one');
  const withoutGpu = flags['software-webgpu'] || flags['null-webgpu'];
  const info = await selectBackend(withoutGpu ? { skip: { webgpu: 'the bench starts webgpu without the GPU' } } : {});
  if (!withoutGpu) return { info, line: describeBackend(info) };
  if (info.name === 'webgpu') throw new Error('MAC_BACKEND=webgpu started the GPU, and a process has one webgpu backend: leave MAC_BACKEND unset');
  if (flags['software-webgpu']) {
    await startSoftwareWebGPU();
    return { info, line: "webgpu on Mesa's software renderer (--software-webgpu): the launches are a GPU's, the timings are not" };
  }
  await startNullWebGPU();
  return { info, line: "webgpu on Dawn's null device (--null-webgpu): no shader runs, the timings are the host's share, a GPU's floor on this CPU; what it reads back is not numbers" };
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
