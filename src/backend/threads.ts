/**
 * MAC_THREADS: compute threads per backend instance (a process, or a Bun Worker with its own
 * backend). `auto` (the default) shares the machine's cores among the instances that run side by
 * side, so that instances x threads never exceeds the cores: a spinning thread pool that has to share
 * a core with another one waits for it at every product (docs/performance.md, "CPU threads and a
 * native BLAS").
 */
import { availableParallelism } from 'node:os';

/** The Emscripten build starts 8 pthread workers and tfjs caps XNNPACK's pool at 8 threads. */
export const MAX_THREADS = 8;

/** What a pthread worker (wasm-pthread-worker.ts) posts when it cannot load the module. */
export const PTHREAD_LOAD_FAILED = 'titans-mm-pthread-load-failed';

export type ThreadsSetting = 'auto' | number;

/** MAC_THREADS as written: 'auto' (or unset) or a whole number from 1 to MAX_THREADS. */
export function parseThreadsSetting(raw: string | undefined): ThreadsSetting {
  const value = (raw ?? '').trim().toLowerCase();
  if (value === '' || value === 'auto') return 'auto';
  const threads = Number(value);
  if (!/^\d+$/.test(value) || threads < 1 || threads > MAX_THREADS) {
    throw new Error(`MAC_THREADS must be 'auto' or a whole number from 1 to ${MAX_THREADS}; got '${raw}'`);
  }
  return threads;
}

/** Threads for each of `instances` backends that run at once: auto divides the cores among them. */
export function threadsPerInstance(setting: ThreadsSetting, instances = 1, cores = availableParallelism()): number {
  if (setting !== 'auto') return setting;
  return Math.min(MAX_THREADS, Math.max(1, Math.floor(cores / Math.max(1, instances))));
}

/**
 * The environment for a Bun Worker that starts its own backend with `threads` threads (MAC_THREADS
 * resolved where the number of siblings is known).
 */
export function backendWorkerEnv(threads: number, env: Record<string, string | undefined> = process.env): Record<string, string> {
  const inherited = Object.fromEntries(Object.entries(env).filter((entry): entry is [string, string] => entry[1] !== undefined));
  return { ...inherited, MAC_THREADS: String(threads) };
}
