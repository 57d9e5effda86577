/**
 * A training job's thread (src/jobs/training-thread.ts) ended from the HTTP thread: at once for its
 * owner, and for the thread itself where nothing of its run is in flight, between two steps.
 */
import { expect, test } from 'bun:test';
import { readdir } from 'node:fs/promises';
import { TrainingThread } from '../../../src/jobs/training-thread.ts';
import { parseJobSpec } from '../../../src/training/spec.ts';
import { tempDir, tinyJob } from '../training/helpers.ts';
import { stillRunning, workerThreads } from '../../worker-threads.ts';

test('a run terminated mid-way ends at once for its owner, writes no checkpoint more, and its thread ends', async () => {
  const outDir = await tempDir();
  const others = new Set(workerThreads());
  const checkpointed = Promise.withResolvers<void>();
  const thread = new TrainingThread((event) => event.type === 'checkpoint' && event.step === 2 && checkpointed.resolve());
  thread.start({ type: 'start', spec: parseJobSpec(tinyJob({ steps: 500, checkpoint_every: 1, keep_checkpoints: 100 })), outDir });
  await checkpointed.promise;
  const its = workerThreads().filter((task) => !others.has(task));
  expect(its.length).toBeGreaterThan(0);
  // In its third step, or further by the time the event arrived: a tiny model's steps are milliseconds.
  thread.terminate();
  expect(await thread.ended).toEqual({ type: 'terminated' });
  expect(await stillRunning(its)).toEqual([]);
  const written = (await readdir(outDir)).sort();
  expect(written.slice(0, 2)).toEqual(['step-000001', 'step-000002']);
  // Nothing more once it has ended.
  await Bun.sleep(300);
  expect((await readdir(outDir)).sort()).toEqual(written);
}, 30_000);
