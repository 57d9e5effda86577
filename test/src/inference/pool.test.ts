/**
 * The inference pool (src/inference/pool.ts) when its threads end: its close while a model swap runs
 * fails the swap as the shutdown it met (503), not as a bad checkpoint, and a worker reading the
 * checkpoint ends once it has read it rather than in the middle of the read; a worker whose thread
 * ends with no error event fails its generations and is replaced.
 */
import { describe, expect, test } from 'bun:test';
import { dirname } from 'node:path';
import { PoolClosingError, WorkerFailedError } from '../../../src/inference/errors.ts';
import { InferencePool } from '../../../src/inference/pool.ts';
import { TINY_MODEL, eventually, makeCheckpoint } from '../../routes/helpers.ts';
import { stillRunning, workerThreads } from '../../worker-threads.ts';

/** Resolves once a worker has been sent a checkpoint to load. */
function loadSent(): { sent: Promise<void>; restore: () => void } {
  const post = Worker.prototype.postMessage;
  const { promise, resolve } = Promise.withResolvers<void>();
  Worker.prototype.postMessage = function (this: Worker, message: unknown, ...rest: unknown[]) {
    (post as (...args: unknown[]) => void).call(this, message, ...rest);
    if ((message as { type?: string }).type === 'load') resolve();
  };
  return { sent: promise, restore: () => (Worker.prototype.postMessage = post) };
}

test.each(['before a worker is sent the checkpoint', 'while a worker reads it'])('closed during a swap, %s: the swap fails with PoolClosingError, and the workers end', async (when) => {
  const checkpoint = await makeCheckpoint();
  const others = new Set(workerThreads());
  const pool = await InferencePool.start({ workers: 2, threads: 1, source: { checkpoint }, maxStreams: 4, maxBatch: 1, joinRunning: false, maxImageBytes: 1 << 20, prefillProgressMs: 1000 });
  const its = workerThreads().filter((task) => !others.has(task));
  expect(its.length).toBeGreaterThan(0);
  const { sent, restore } = loadSent();
  try {
    const swap = pool.loadModel(checkpoint);
    if (when === 'while a worker reads it') await sent;
    await pool.close();
    await expect(swap).rejects.toThrow(new PoolClosingError('the server shut down before the model was loaded'));
  } finally {
    restore();
  }
  expect(await stillRunning(its)).toEqual([]);
});

test('a worker whose thread ends with no error (an exit, a native crash) fails its generation, and a fresh one serves the next', async () => {
  const pool = await InferencePool.start({ workers: 1, threads: 1, source: { checkpoint: await makeCheckpoint() }, maxStreams: 4, maxBatch: 1, joinRunning: false, maxImageBytes: 1 << 20, prefillProgressMs: 1000 });
  const generate = async (maxLength: number, started: () => void = () => {}) => {
    const admission = pool.admit('client');
    try {
      let tokens = 0;
      for await (const event of admission.run([{ prompt: [65, 66, 67], images: [], imagePositions: [], maxLength, stop: [], temperature: 1, seed: 1 }], new AbortController().signal)) {
        if (event.type === 'token' && ++tokens === 1) started();
      }
      return tokens;
    } finally {
      admission.release();
    }
  };
  try {
    const worker = () => (pool as unknown as { slots: { worker: Worker }[] }).slots[0]!.worker;
    const ended = worker();
    // Ended from outside, as an exit would end it: its 'close' comes with no 'error'. (Awaited
    // before expect sees it: Bun's expect().rejects waits without taking the worker's messages.)
    const failure = await generate(100_000, () => ended.terminate()).then(() => null, (error: unknown) => error);
    expect(failure).toBeInstanceOf(WorkerFailedError);
    expect(await generate(3)).toBeGreaterThan(0);
    expect(worker()).not.toBe(ended);
    expect(pool.stats()).toMatchObject({ running: 0, queued: 0 });
  } finally {
    await pool.close();
  }
}, 30_000);

test('a worker that crashes while a swap loads the first fails the swap, which puts every worker back on the old model, instead of waiting for ever', async () => {
  const served = await makeCheckpoint();
  const other = await makeCheckpoint(undefined, 'other', dirname(served));
  const pool = await InferencePool.start({ workers: 2, threads: 1, source: { checkpoint: served }, maxStreams: 4, maxBatch: 1, joinRunning: false, maxImageBytes: 1 << 20, prefillProgressMs: 1000 });
  try {
    const slots = (pool as unknown as { slots: { worker: Worker; loading: boolean }[] }).slots;
    // A checkpoint that takes a while to read: the first worker's 'loaded' comes half a second late.
    const deliver = slots[0]!.worker.onmessage!.bind(slots[0]!.worker);
    slots[0]!.worker.onmessage = (event: MessageEvent) => (event.data?.type === 'loaded' ? setTimeout(() => deliver(event), 500) : deliver(event));
    const swap = pool.loadModel(other).then(() => null, (error: unknown) => error);
    while (!slots[0]!.loading) await Bun.sleep(1);
    slots[1]!.worker.terminate();
    const failure = await swap;
    expect(failure).toBeInstanceOf(WorkerFailedError);
    expect((failure as Error).message).toBe('a worker could not load the checkpoint (the worker crashed); every worker serves the previous model again');
    expect(pool.model.checkpoint).toBe(served);
  } finally {
    await pool.close();
  }
}, 30_000);

describe('a swap that meets a worker being respawned', () => {
  const options = (checkpoint: string, workers: number) => ({ workers, threads: 1, source: { checkpoint }, maxStreams: 4, maxBatch: 1, joinRunning: false, maxImageBytes: 1 << 20, prefillProgressMs: 1000 });
  type Slots = { slots: { worker: Worker; loading: boolean; baselineTensors: number }[] };
  /** Each worker's tensors once loaded: a deeper model has more, which tells which model a worker serves. */
  const baselines = (pool: InferencePool) => pool.stats().workers.map((worker) => worker.baselineTensors);

  test('its load of the new model follows the respawn\'s load of the old, and is not answered by it', async () => {
    const served = await makeCheckpoint();
    const deeper = await makeCheckpoint({ ...TINY_MODEL, depth: 2 }, 'deeper', dirname(served));
    const pool = await InferencePool.start(options(served, 2));
    try {
      const old = baselines(pool)[0]!;
      (pool as unknown as Slots).slots[1]!.worker.terminate();
      await eventually(async () => (pool as unknown as Slots).slots[1]!.loading, Boolean, 5000);
      await pool.loadModel(deeper);
      const after = baselines(pool);
      expect(after[0]).not.toBe(old);
      expect(after[1]).toBe(after[0]);
    } finally {
      await pool.close();
    }
  }, 30_000);

  test('a worker respawned after it took the new model, with the swap still running, loads it again once the swap ends', async () => {
    const served = await makeCheckpoint();
    const deeper = await makeCheckpoint({ ...TINY_MODEL, depth: 2 }, 'deeper', dirname(served));
    const pool = await InferencePool.start(options(served, 3));
    try {
      const old = baselines(pool)[0]!;
      const slots = (pool as unknown as Slots).slots;
      // The second worker reads the checkpoint slowly; the third has it, and then dies.
      const deliver = slots[1]!.worker.onmessage!.bind(slots[1]!.worker);
      slots[1]!.worker.onmessage = (event: MessageEvent) => (event.data?.type === 'loaded' ? setTimeout(() => deliver(event), 800) : deliver(event));
      const swap = pool.loadModel(deeper);
      await eventually(async () => baselines(pool)[2], (tensors) => tensors !== old, 10_000);
      slots[2]!.worker.terminate();
      await swap;
      const loaded = baselines(pool)[0]!;
      expect(await eventually(async () => baselines(pool), (all) => all.every((tensors) => tensors === loaded), 10_000)).toEqual([loaded, loaded, loaded]);
    } finally {
      await pool.close();
    }
  }, 30_000);
});
