/**
 * The inference pool's close (src/inference/pool.ts) while a model swap runs: the swap fails as the
 * shutdown it met (503), not as a bad checkpoint, and a worker reading the checkpoint ends once it has
 * read it rather than in the middle of the read.
 */
import { expect, test } from 'bun:test';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { PoolClosingError } from '../../../src/inference/errors.ts';
import { InferencePool } from '../../../src/inference/pool.ts';
import { makeCheckpoint } from '../../routes/helpers.ts';

/** The ids of this process's threads that run a Bun Worker, by their name (Linux). */
const workerThreads = () => readdirSync('/proc/self/task').filter((task) => readFileSync(`/proc/self/task/${task}/comm`, 'utf8').trim() === 'Worker');

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
  const alive = () => its.filter((task) => existsSync(`/proc/self/task/${task}`));
  for (let i = 0; i < 200 && alive().length > 0; i++) await Bun.sleep(25);
  expect(alive()).toEqual([]);
});
