/**
 * The inference pool (src/inference/pool.ts) when its threads end: its close while a model swap runs
 * fails the swap as the shutdown it met (503), not as a bad checkpoint, and a worker reading the
 * checkpoint ends once it has read it rather than in the middle of the read; a worker whose thread
 * ends with no error event fails its generations and is replaced.
 */
import { describe, expect, test } from 'bun:test';
import { rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { PoolClosingError, WorkerFailedError } from '../../../src/inference/errors.ts';
import { InferencePool } from '../../../src/inference/pool.ts';
import { TINY_MODEL, eventually, jpeg, makeCheckpoint } from '../../routes/helpers.ts';
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

describe('a worker that dies or cannot load', () => {
  const options = (checkpoint: string, workers: number) => ({ workers, threads: 1, source: { checkpoint }, maxStreams: 8, maxBatch: 1, joinRunning: false, maxImageBytes: 1 << 20, prefillProgressMs: 1000 });
  type Slots = { slots: { worker: Worker; loading: boolean; crashed?: boolean; source?: unknown }[] };
  /** A text job that runs until `signal` (end of text banned), or for `maxLength` tokens: its tokens, or the error it met. */
  const generate = async (pool: InferencePool, maxLength: number, signal = new AbortController().signal, admission = pool.admit('client')) => {
    let tokens = 0;
    try {
      for await (const event of admission.run([{ prompt: [65, 66, 67], images: [], imagePositions: [], maxLength, stop: [], temperature: 1, seed: 1, logitBias: { 254: -100 } }], signal)) if (event.type === 'token') tokens++;
      return tokens;
    } catch (error) {
      return error as Error;
    } finally {
      admission.release();
    }
  };
  /** Holds a worker's 'loaded' message until release(): a checkpoint that takes long to read. */
  const holdLoaded = (worker: Worker) => {
    const deliver = worker.onmessage!.bind(worker);
    const held: MessageEvent[] = [];
    let open = false;
    worker.onmessage = (event: MessageEvent) => (event.data?.type === 'loaded' && !open ? void held.push(event) : deliver(event));
    return { held: () => held.length, release: () => ((open = true), held.splice(0).forEach(deliver)) };
  };

  test('one that dies while the server drains is not replaced, and a request admitted before runs on another', async () => {
    const pool = await InferencePool.start(options(await makeCheckpoint(), 2));
    try {
      const admission = pool.admit('client');
      pool.stopAdmitting();
      const slots = (pool as unknown as Slots).slots;
      slots[0]!.worker.terminate();
      await eventually(async () => slots[0]!.crashed, Boolean, 5000);
      expect(await generate(pool, 5, undefined, admission)).toBe(5);
    } finally {
      await pool.close();
    }
  }, 30_000);

  test('the first worker of a swap crashing fails the swap as a worker failure, not as a bad checkpoint', async () => {
    const served = await makeCheckpoint();
    const pool = await InferencePool.start(options(served, 2));
    try {
      const slots = (pool as unknown as Slots).slots;
      holdLoaded(slots[0]!.worker);
      const swap = pool.loadModel(await makeCheckpoint(undefined, 'other', dirname(served))).then(() => null, (error: unknown) => error);
      await eventually(async () => slots[0]!.loading, Boolean, 5000);
      slots[0]!.worker.terminate();
      expect(await swap).toBeInstanceOf(WorkerFailedError);
    } finally {
      await pool.close();
    }
  }, 30_000);

  test('a replacement that cannot load the model serves nothing: every job goes to the workers that can', async () => {
    const served = await makeCheckpoint();
    const pool = await InferencePool.start(options(served, 2));
    try {
      await rm(served, { recursive: true });
      const slots = (pool as unknown as Slots).slots;
      const dead = slots[0]!;
      dead.worker.terminate();
      // Its replacement has tried to load the model, and failed.
      await eventually(async () => slots[0] !== dead && !slots[0]!.loading, Boolean, 5000);
      expect(await Promise.all([1, 2, 3, 4].map(() => generate(pool, 3)))).toEqual([3, 3, 3, 3]);
    } finally {
      await pool.close();
    }
  }, 30_000);

  test('one respawned during a swap takes no job until it has loaded the new model, after its load of the old', async () => {
    const served = await makeCheckpoint();
    const bigger = await makeCheckpoint({ ...TINY_MODEL, imageSize: 32 }, 'bigger', dirname(served));
    const pool = await InferencePool.start(options(served, 3));
    try {
      const slots = (pool as unknown as Slots).slots;
      const slow = holdLoaded(slots[1]!.worker);
      const swap = pool.loadModel(bigger);
      // The third worker loads the new model, then dies; its replacement reads the old one, slowly.
      const before = slots[2]!.source;
      await eventually(async () => slots[2]!.source !== before, Boolean, 10_000);
      const dead = slots[2]!;
      dead.worker.terminate();
      await eventually(async () => slots[2] !== dead, Boolean, 5000);
      const respawn = holdLoaded(slots[2]!.worker);
      await eventually(async () => respawn.held() === 1, Boolean, 10_000);
      slow.release();
      expect((await swap).imageProcessor.options.imageSize).toBe(32);
      // The other two run endless generations; a caption admitted under the new model waits.
      const stop = new AbortController();
      const busy = [0, 1].map(() => generate(pool, 100_000, stop.signal));
      await eventually(async () => pool.stats().running, (running) => running === 2, 5000);
      const admission = pool.admit('client');
      const pixels = await admission.model.imageProcessor.decode(await jpeg());
      const caption = admission.run([{ prompt: [65, 255], images: [pixels], imagePositions: [1], maxLength: 3, stop: [], temperature: 0 }], new AbortController().signal);
      const captioned = (async () => {
        try {
          for await (const event of caption) if (event.type === 'finished') return 'finished';
          return 'ended';
        } catch (error) {
          return (error as Error).name;
        } finally {
          admission.release();
        }
      })();
      await eventually(async () => pool.stats().queued, (queued) => queued === 1, 5000);
      respawn.release();
      expect(await captioned).toBe('finished');
      stop.abort();
      await Promise.all(busy);
    } finally {
      await pool.close();
    }
  }, 60_000);
});
