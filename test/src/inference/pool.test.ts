/**
 * The inference pool (src/inference/pool.ts) when its threads end or its model changes: a close
 * during a swap fails the swap as the shutdown it met (503) and ends each worker once it has read
 * the checkpoint; a worker whose thread ends, with or without an error event, fails its generations
 * and is replaced, and a swap that meets a crash or a respawn still leaves every worker on one model.
 * Workers are ended from outside (terminate), as an exit or a native crash would end them, and a
 * slow checkpoint read is a worker's 'loaded' message held back.
 */
import { describe, expect, test } from 'bun:test';
import { rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { ModelLoadingError, PoolBusyError, PoolClosingError, WorkerFailedError } from '../../../src/inference/errors.ts';
import { InferencePool } from '../../../src/inference/pool.ts';
import { TINY_MODEL, eventually, jpeg, makeCheckpoint } from '../../routes/helpers.ts';
import { stillRunning, workerThreads } from '../../worker-threads.ts';

type Slots = { slots: { worker: Worker; loading: boolean; crashed?: boolean; source?: unknown }[] };

/** A pool of `workers` serving `checkpoint`, one generation a batch, closed after `use`. */
async function withPool(checkpoint: string, workers: number, use: (pool: InferencePool, slots: Slots['slots']) => Promise<void>): Promise<void> {
  const pool = await InferencePool.start({ workers, threads: 1, source: { checkpoint }, maxStreams: 8, maxBatch: 1, joinRunning: false, maxImageBytes: 1 << 20, prefillProgressMs: 1000 });
  try {
    await use(pool, (pool as unknown as Slots).slots);
  } finally {
    await pool.close();
  }
}

/**
 * A text generation of `maxLength` tokens (end of text banned), or until `signal`: its tokens, or
 * the error it met. Settled before any expect sees it: Bun's expect().rejects waits on a pending
 * promise without delivering the workers' messages.
 */
async function generate(pool: InferencePool, maxLength: number, { signal = new AbortController().signal, onToken = () => {}, admission = pool.admit('client') } = {}): Promise<number | Error> {
  let tokens = 0;
  try {
    const job = { prompt: [65, 66, 67], images: [], imagePositions: [], maxLength, stop: [], temperature: 1, seed: 1, logitBias: { 254: -100 } };
    for await (const event of admission.run([job], signal)) {
      if (event.type !== 'token') continue;
      tokens++;
      onToken();
    }
    return tokens;
  } catch (error) {
    return error as Error;
  } finally {
    admission.release();
  }
}

/** Holds a worker's 'loaded' message until release(): a checkpoint that takes long to read. */
function holdLoaded(worker: Worker): { held: () => number; release: () => void } {
  const deliver = worker.onmessage!.bind(worker);
  const held: MessageEvent[] = [];
  let open = false;
  worker.onmessage = (event: MessageEvent) => (event.data?.type === 'loaded' && !open ? void held.push(event) : deliver(event));
  return { held: () => held.length, release: () => ((open = true), held.splice(0).forEach(deliver)) };
}

/** A checkpoint to serve, and beside it a deeper model to swap in. */
async function servedAndDeeper(): Promise<{ served: string; deeper: string }> {
  const served = await makeCheckpoint();
  return { served, deeper: await makeCheckpoint({ ...TINY_MODEL, depth: 2 }, 'deeper', dirname(served)) };
}

/** Each worker's tensors once loaded: a deeper model has more, which tells which model a worker serves. */
const baselines = (pool: InferencePool) => pool.stats().workers.map((worker) => worker.baselineTensors);

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

test('a request whose jobs have all finished holds no place, though its client has yet to read their events; its answer still counts until released', async () => {
  await withPool(await makeCheckpoint(), 1, async (pool) => {
    const admission = pool.admit('client', 2);
    const job = { prompt: [65, 66, 67], images: [], imagePositions: [], maxLength: 6, stop: [], temperature: 1, seed: 1, logitBias: { 254: -100 } };
    const events = admission.run([job, job], new AbortController().signal);
    // The client reads the first event, then stops reading, as one whose connection stalls.
    expect((await events.next()).value).toMatchObject({ type: 'started' });
    expect(() => pool.checkRoom(7)).toThrow(PoolBusyError);
    const room = async () => pool.checkRoom(8) === undefined;
    expect(await eventually(() => room().catch(() => false), Boolean)).toBe(true);
    // All 8 places are free again, the jobs having ended; a shutdown still waits for the answer being written.
    expect(pool.stats()).toMatchObject({ running: 0, queued: 0, streams: 2 });
    // Nothing of its answer is lost meanwhile.
    let tokens = 0;
    for await (const event of events) if (event.type === 'token') tokens++;
    expect(tokens).toBe(12);
    admission.release();
    expect(pool.stats().streams).toBe(0);
    expect(() => pool.checkRoom(8)).not.toThrow();
  });
});

test('a load asked for during another is refused; one asked for in turn (a job\'s activation) waits, and is served last', async () => {
  const { served, deeper } = await servedAndDeeper();
  await withPool(served, 1, async (pool, slots) => {
    const slow = holdLoaded(slots[0]!.worker);
    const first = pool.loadModel(deeper);
    const refused = await pool.loadModel(served).then(() => undefined, (error: unknown) => error);
    expect(refused).toBeInstanceOf(ModelLoadingError);
    const inTurn = [pool.loadModelInTurn(served), pool.loadModelInTurn(deeper)];
    await eventually(async () => slow.held(), (held) => held === 1);
    slow.release();
    const [a, b, c] = await Promise.all([first, ...inTurn]);
    expect([a!.checkpoint, b!.checkpoint, c!.checkpoint]).toEqual([deeper, served, deeper]);
    expect(pool.model.checkpoint).toBe(deeper);
  });
});

test('a full pool\'s Retry-After is when a place frees, not when its whole queue would have run', async () => {
  await withPool(await makeCheckpoint(), 1, async (pool) => {
    // One worker, one generation at a time: one runs, seven wait.
    const stop = new AbortController();
    const running = Array.from({ length: 8 }, () => generate(pool, 100_000, { signal: stop.signal }));
    await eventually(async () => pool.stats(), (stats) => stats.running === 1 && stats.queued === 7);
    const busy = (() => {
      try {
        pool.checkRoom();
      } catch (error) {
        return error;
      }
    })();
    stop.abort();
    await Promise.all(running);
    expect(busy).toBeInstanceOf(PoolBusyError);
    // Before any job has ended the pool takes a job for a second: one place frees within about that.
    expect((busy as PoolBusyError).retryAfterSeconds).toBeLessThanOrEqual(2);
  });
});

describe('a worker that dies', () => {
  test('with no error event (an exit, a native crash) fails its generation, and a fresh one serves the next', async () => {
    await withPool(await makeCheckpoint(), 1, async (pool, slots) => {
      const ended = slots[0]!;
      expect(await generate(pool, 100_000, { onToken: () => ended.worker.terminate() })).toBeInstanceOf(WorkerFailedError);
      expect(await generate(pool, 3)).toBe(3);
      expect(slots[0]).not.toBe(ended);
      expect(pool.stats()).toMatchObject({ running: 0, queued: 0 });
    });
  }, 30_000);

  /** A request admitted, then the drain, then the first worker's end (not replaced while draining). */
  const dieWhileDraining = async (pool: InferencePool, slots: Slots['slots']) => {
    const admission = pool.admit('client');
    pool.stopAdmitting();
    slots[0]!.worker.terminate();
    await eventually(async () => slots[0]!.crashed, Boolean, 5000);
    return admission;
  };

  test('while the server drains is not replaced, and a request admitted before runs on another', async () => {
    await withPool(await makeCheckpoint(), 2, async (pool, slots) => {
      expect(await generate(pool, 5, { admission: await dieWhileDraining(pool, slots) })).toBe(5);
    });
  }, 30_000);

  test('while the server drains, where it was the last: a request admitted before fails at once, not at the end of the drain', async () => {
    await withPool(await makeCheckpoint(), 1, async (pool, slots) => {
      const failed = await generate(pool, 5, { admission: await dieWhileDraining(pool, slots) });
      expect(failed).toBeInstanceOf(WorkerFailedError);
      expect((failed as Error).message).toStartWith('no inference worker serves the model');
    });
  }, 30_000);

  /** The served checkpoint deleted, then the first worker's end: its replacement tries to load it, and fails. */
  const dieWithoutModel = async (served: string, slots: Slots['slots']) => {
    await rm(served, { recursive: true });
    const dead = slots[0]!;
    dead.worker.terminate();
    await eventually(async () => slots[0] !== dead && !slots[0]!.loading, Boolean, 5000);
  };

  test('and whose replacement cannot load the model serves nothing: every job goes to the workers that can', async () => {
    const served = await makeCheckpoint();
    await withPool(served, 2, async (pool, slots) => {
      await dieWithoutModel(served, slots);
      expect(await Promise.all([1, 2, 3, 4].map(() => generate(pool, 3)))).toEqual([3, 3, 3, 3]);
    });
  }, 30_000);

  test('and whose replacement cannot load the model, where no other serves it: requests are refused, and those waiting fail, rather than wait for ever', async () => {
    const served = await makeCheckpoint();
    await withPool(served, 1, async (pool, slots) => {
      const waiting = pool.admit('client');
      await dieWithoutModel(served, slots);
      const failed = await generate(pool, 3, { admission: waiting });
      expect(failed).toBeInstanceOf(WorkerFailedError);
      expect((failed as Error).message).toStartWith('no inference worker serves the model');
      expect(() => pool.admit('client')).toThrow('no inference worker serves the model');
    });
  }, 30_000);
});

describe('a swap that meets a crash', () => {
  test('of a later worker while the first loads fails, and puts every worker back on the old model, instead of waiting for ever', async () => {
    const served = await makeCheckpoint();
    const other = await makeCheckpoint(undefined, 'other', dirname(served));
    await withPool(served, 2, async (pool, slots) => {
      const slow = holdLoaded(slots[0]!.worker);
      const swap = pool.loadModel(other).then(() => null, (error: unknown) => error);
      await eventually(async () => slow.held(), (held) => held === 1, 5000);
      const dead = slots[1]!;
      dead.worker.terminate();
      await eventually(async () => dead.crashed, Boolean, 5000);
      slow.release();
      const failure = await swap;
      expect(failure).toBeInstanceOf(WorkerFailedError);
      expect((failure as Error).message).toBe('a worker could not load the checkpoint (the worker crashed); every worker serves the previous model again');
      expect(pool.model.checkpoint).toBe(served);
    });
  }, 30_000);

  test('whose rollback fails too: the worker left on the new model takes no job, and the error does not claim a rollback', async () => {
    const { served, deeper } = await servedAndDeeper();
    await withPool(served, 2, async (pool, slots) => {
      const old = baselines(pool)[0]!;
      const slow = holdLoaded(slots[1]!.worker);
      const swap = pool.loadModel(deeper).then(() => null, (error: unknown) => error);
      await eventually(async () => slow.held(), (held) => held === 1, 10_000);
      // The first has the new model; the old one is gone before the second dies.
      expect(baselines(pool)[0]).not.toBe(old);
      await rm(served, { recursive: true });
      const dead = slots[1]!;
      dead.worker.terminate();
      const failure = (await swap) as Error;
      expect(failure).toBeInstanceOf(WorkerFailedError);
      expect(failure.message).toEndWith('the previous model is served again, by the workers that could go back to it');
      expect(pool.model.checkpoint).toBe(served);
      // The second's replacement cannot load the old model either: no worker serves it.
      await eventually(async () => slots[1] !== dead && !slots[1]!.loading, Boolean, 5000);
      expect(() => pool.admit('client')).toThrow('no inference worker serves the model');
    });
  }, 30_000);

  test('of its first worker fails as a worker failure, not as a bad checkpoint', async () => {
    const served = await makeCheckpoint();
    await withPool(served, 2, async (pool, slots) => {
      holdLoaded(slots[0]!.worker);
      const swap = pool.loadModel(await makeCheckpoint(undefined, 'other', dirname(served))).then(() => null, (error: unknown) => error);
      await eventually(async () => slots[0]!.loading, Boolean, 5000);
      slots[0]!.worker.terminate();
      expect(await swap).toBeInstanceOf(WorkerFailedError);
    });
  }, 30_000);
});

describe('a swap that meets a worker being respawned', () => {
  test('loads the new model after the respawn\'s load of the old, and is not answered by it', async () => {
    const { served, deeper } = await servedAndDeeper();
    await withPool(served, 2, async (pool, slots) => {
      const old = baselines(pool)[0]!;
      slots[1]!.worker.terminate();
      await eventually(async () => slots[1]!.loading, Boolean, 5000);
      await pool.loadModel(deeper);
      const after = baselines(pool);
      expect(after[0]).not.toBe(old);
      expect(after[1]).toBe(after[0]);
    });
  }, 30_000);

  test('of a worker that had taken the new model and died before the swap ended: its replacement loads it once the swap ends', async () => {
    const { served, deeper } = await servedAndDeeper();
    await withPool(served, 3, async (pool, slots) => {
      const old = baselines(pool)[0]!;
      // The second worker reads the checkpoint slowly; the third has it, and then dies.
      const slow = holdLoaded(slots[1]!.worker);
      const swap = pool.loadModel(deeper);
      await eventually(async () => baselines(pool)[2], (tensors) => tensors !== old, 10_000);
      const dead = slots[2]!;
      dead.worker.terminate();
      await eventually(async () => dead.crashed, Boolean, 5000);
      slow.release();
      await swap;
      const loaded = baselines(pool)[0]!;
      expect(await eventually(async () => baselines(pool), (all) => all.every((tensors) => tensors === loaded), 10_000)).toEqual([loaded, loaded, loaded]);
    });
  }, 30_000);

  test('whose replacement takes no job until it has loaded the new model, after its load of the old', async () => {
    const served = await makeCheckpoint();
    const bigger = await makeCheckpoint({ ...TINY_MODEL, imageSize: 32 }, 'bigger', dirname(served));
    await withPool(served, 3, async (pool, slots) => {
      const slow = holdLoaded(slots[1]!.worker);
      const swap = pool.loadModel(bigger);
      // The third worker loads the new model, then dies; its replacement reads the old one, slowly.
      const before = slots[2]!.source;
      await eventually(async () => slots[2]!.source !== before, Boolean, 10_000);
      const dead = slots[2]!;
      dead.worker.terminate();
      await eventually(async () => slots[2] !== dead, Boolean, 5000);
      const respawn = holdLoaded(slots[2]!.worker);
      await eventually(async () => respawn.held(), (held) => held === 1, 10_000);
      slow.release();
      expect((await swap).imageProcessor.options.imageSize).toBe(32);
      // The other two run endless generations; a caption admitted under the new model waits.
      const stop = new AbortController();
      const busy = [0, 1].map(() => generate(pool, 100_000, { signal: stop.signal }));
      await eventually(async () => pool.stats().running, (running) => running === 2, 5000);
      const admission = pool.admit('client');
      const pixels = await admission.model.imageProcessor.decode(await jpeg());
      const captioned = (async () => {
        try {
          for await (const event of admission.run([{ prompt: [65, 255], images: [pixels], imagePositions: [1], maxLength: 3, stop: [], temperature: 0 }], new AbortController().signal)) {
            if (event.type === 'finished') return 'finished';
          }
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
    });
  }, 60_000);
});
