/**
 * A training job's thread (src/jobs/training-thread.ts) ended from the HTTP thread: at once for its
 * owner, and for the thread itself where nothing of its run is in flight, between two steps.
 */
import { expect, test } from 'bun:test';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { TrainingThread } from '../../../src/jobs/training-thread.ts';
import { parseJobSpec } from '../../../src/training/spec.ts';
import { tempDir, tinyJob } from '../training/helpers.ts';

/** The ids of this process's threads that run a Bun Worker, by their name (Linux). */
const workerThreads = () => readdirSync('/proc/self/task').filter((task) => readFileSync(`/proc/self/task/${task}/comm`, 'utf8').trim() === 'Worker');

test('a run terminated mid-way ends at once for its owner, writes no checkpoint more, and its thread ends', async () => {
  const outDir = await tempDir();
  const others = new Set(workerThreads());
  const checkpointed = Promise.withResolvers<void>();
  const thread = new TrainingThread((event) => event.type === 'checkpoint' && event.step === 2 && checkpointed.resolve());
  thread.start({ type: 'start', spec: parseJobSpec(tinyJob({ steps: 500, checkpoint_every: 1, keep_checkpoints: 100 })), outDir });
  await checkpointed.promise;
  const its = workerThreads().filter((task) => !others.has(task));
  expect(its.length).toBeGreaterThan(0);
  // In its third step, whose checkpoint it would write next.
  thread.terminate();
  expect(await thread.ended).toEqual({ type: 'terminated' });
  const alive = () => its.filter((task) => existsSync(`/proc/self/task/${task}`));
  for (let i = 0; i < 200 && alive().length > 0; i++) await Bun.sleep(25);
  expect(alive()).toEqual([]);
  expect((await readdir(outDir)).sort()).toEqual(['step-000001', 'step-000002']);
}, 30_000);
