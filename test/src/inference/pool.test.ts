/**
 * The inference pool's close (src/inference/pool.ts) while a model swap runs: the swap fails as the
 * shutdown it met (503), not as a bad checkpoint, and a worker reading the checkpoint ends once it has
 * read it rather than in the middle of the read.
 */
import { expect, test } from 'bun:test';
import { PoolClosingError } from '../../../src/inference/errors.ts';
import { InferencePool } from '../../../src/inference/pool.ts';
import { makeCheckpoint } from '../../routes/helpers.ts';
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
