import { describe, expect, test } from 'bun:test';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { readTrainingState } from '../../model/checkpoint.ts';
import { Replica } from '../../src/training/replica.ts';
import { runTraining } from '../../src/training/run.ts';
import { parseJobSpec } from '../../src/training/spec.ts';
import { MAX_NONFINITE_STEPS, trainLoop, type ReplicaHandle, type TrainingEvent } from '../../src/training/trainer.ts';
import { tempDir, tinyJob } from './training-helpers.ts';

describe('Replica', () => {
  test('a training step leaves no tensor behind', async () => {
    const replica = await Replica.create(parseJobSpec(tinyJob({ grad_accum: 2 })));
    const baseline = tf.memory().numTensors;
    for (let step = 1; step <= 3; step++) {
      const { grads } = await replica.gradients(step, 0, 1);
      replica.apply(grads, 1e-3);
      expect(tf.memory().numTensors).toBe(baseline);
    }
    await replica.evalLoss();
    expect(tf.memory().numTensors).toBe(baseline);
    replica.dispose();
  }, 60_000);
});

async function run(train: Record<string, unknown>, outDir: string, resumeFrom?: string) {
  const events: TrainingEvent[] = [];
  const result = await runTraining(parseJobSpec(tinyJob(train)), { outDir, resumeFrom, onEvent: (e) => events.push(e) });
  return { result, events };
}

const bytes = (dir: string, file: string) => readFile(join(dir, file));

describe('resume', () => {
  for (const workers of [1, 2]) {
    test(`${workers} worker(s): 3 steps + checkpoint + 3 resumed steps = 6 uninterrupted steps, bit for bit`, async () => {
      const dir = await tempDir();
      const train = { steps: 6, checkpoint_every: 3, grad_accum: 2, workers, keep_checkpoints: 5 };
      const whole = await run(train, join(dir, 'whole'));
      const half = join(dir, 'whole', 'step-000003');
      const resumed = await run(train, join(dir, 'resumed'), half);
      expect(resumed.events.filter((e) => e.type === 'progress').map((e) => e.step)).toEqual([4, 5, 6]);
      const end = (r: typeof whole) => r.result.checkpoint!;
      expect(Buffer.compare(await bytes(end(whole), 'model.safetensors'), await bytes(end(resumed), 'model.safetensors'))).toBe(0);
      expect(Buffer.compare(await bytes(end(whole), 'optimizer.safetensors'), await bytes(end(resumed), 'optimizer.safetensors'))).toBe(0);
      expect((await readTrainingState(end(resumed)))!.trainer).toMatchObject({ step: 6, workers });
      const losses = (r: typeof whole) => r.events.flatMap((e) => (e.type === 'progress' && e.step > 3 ? [e.loss] : []));
      expect(losses(resumed)).toEqual(losses(whole));
    }, 60_000);
  }

  test('checkpoints every N steps keep only the last K', async () => {
    const dir = await tempDir();
    const { events } = await run({ steps: 5, checkpoint_every: 1, keep_checkpoints: 2 }, dir);
    expect(events.filter((e) => e.type === 'checkpoint').map((e) => e.step)).toEqual([1, 2, 3, 4, 5]);
    const { readdir } = await import('node:fs/promises');
    expect((await readdir(dir)).sort()).toEqual(['step-000004', 'step-000005']);
  }, 60_000);
});

describe('divergence', () => {
  // A stand-in replica whose loss is NaN at the given steps; the real one skips such updates the same way.
  const replicaNaNAt = (bad: (step: number) => boolean): ReplicaHandle => ({
    gradients: async (step) => ({ grads: [Float32Array.of(bad(step) ? NaN : 1)], loss: bad(step) ? NaN : 1, skippedImages: [] }),
    apply: ([grad]) => ({ norm: Math.abs(grad![0]!), applied: Number.isFinite(grad![0]!) }),
    evalLoss: async () => null,
    save: async () => {},
  });
  const train = parseJobSpec(tinyJob({ steps: 100 })).train;

  test(`a run fails at the ${MAX_NONFINITE_STEPS}th update in a row with non-finite gradients, not at a few apart`, async () => {
    const events: TrainingEvent[] = [];
    // Three bad steps, a recovery, then NaN for good from step 8.
    const replica = replicaNaNAt((step) => (step >= 3 && step <= 5) || step >= 8);
    const run = trainLoop([replica], { train, outDir: await tempDir(), startStep: 0, onEvent: (e) => events.push(e) });
    await expect(run).rejects.toThrow(`training diverged: the gradients of the last ${MAX_NONFINITE_STEPS} updates (to step ${7 + MAX_NONFINITE_STEPS})`);
    expect(events.filter((e) => e.type === 'progress').at(-1)).toMatchObject({ step: 7 + MAX_NONFINITE_STEPS });
  });
});
