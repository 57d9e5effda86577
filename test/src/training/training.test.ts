import { describe, expect, test } from 'bun:test';
import { mkdir, readdir, readFile, rm, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { loadCheckpoint, readTrainingState } from '../../../model/checkpoint.ts';
import { MultimodalMACNetwork } from '../../../model/multimodal.ts';
import { Replica } from '../../../src/training/replica.ts';
import { jobModelOptions, resolveJobPaths } from '../../../src/training/resolve.ts';
import { PRETRAINED_DIR } from '../../../src/training/checkpoint-folders.ts';
import { runTraining } from '../../../src/training/run.ts';
import { parseJobSpec, SpecError } from '../../../src/training/spec.ts';
import type { TrainingEvent } from '../../../src/training/events.ts';
import { MAX_NONFINITE_STEPS, RunAbandonedError, trainLoop, type ReplicaHandle } from '../../../src/training/trainer.ts';
import { tempDir, TINY_MODEL, tinyJob } from './helpers.ts';

describe('Replica', () => {
  test('a training step leaves no tensor behind', async () => {
    const replica = await Replica.create(parseJobSpec(tinyJob({ grad_accum: 2 })));
    const baseline = tf.memory().numTensors;
    for (let step = 1; step <= 3; step++) {
      const { grads } = await replica.gradients(step, 0, 1);
      await replica.apply(grads, 1e-3);
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
      // What a save cut short in the folder left: the resumed run clears it before it writes.
      await mkdir(join(dir, 'resumed', '.step-000004.tmp-7-1'), { recursive: true });
      const resumed = await run(train, join(dir, 'resumed'), half);
      expect((await readdir(join(dir, 'resumed'))).filter((name) => name.startsWith('.'))).toEqual([]);
      expect(resumed.events.filter((e) => e.type === 'progress').map((e) => e.step)).toEqual([4, 5, 6]);
      const end = (r: typeof whole) => r.result.checkpoint!;
      expect(Buffer.compare(await bytes(end(whole), 'model.safetensors'), await bytes(end(resumed), 'model.safetensors'))).toBe(0);
      expect(Buffer.compare(await bytes(end(whole), 'optimizer.safetensors'), await bytes(end(resumed), 'optimizer.safetensors'))).toBe(0);
      const network = await loadCheckpoint(end(resumed));
      expect((await readTrainingState(end(resumed), network))!.trainer).toMatchObject({ step: 6, workers });
      network.dispose();
      const losses = (r: typeof whole) => r.events.flatMap((e) => (e.type === 'progress' && e.step > 3 ? [e.loss] : []));
      expect(losses(resumed)).toEqual(losses(whole));
    }, 60_000);
  }

  test('a resume is refused, naming the field, when the job asks for another schedule or other data than the checkpoint\'s run', async () => {
    const dir = await tempDir();
    const { result } = await run({ steps: 4, checkpoint_every: 2 }, dir);
    const checkpoint = join(dir, 'step-000002');
    expect(result.status).toBe('succeeded');
    const resume = (train: Record<string, unknown>, data: Record<string, unknown> = {}) =>
      Replica.create(parseJobSpec(tinyJob({ steps: 4, ...train }, { type: 'synthetic-shapes', val_size: 4, ...data })), checkpoint);
    await expect(resume({ lr: 0.5 })).rejects.toThrow(`cannot resume ${checkpoint} exactly: train.lr was 0.0003, now 0.5`);
    await expect(resume({ warmup: 1 })).rejects.toThrow('train.warmup was 0, now 1');
    await expect(resume({}, { max_tokens: 40 })).rejects.toThrow('data.max_tokens was 128, now 40');
    await expect(resume({}, { text_data_path: 'x', text_ratio: 0.5 })).rejects.toThrow('data.text_ratio was 0, now 0.5');
    (await resume({})).dispose();
  }, 60_000);

  test('a run abandoned between two steps ends there and writes nothing more, not even a checkpoint of the step it reached', async () => {
    const dir = await tempDir();
    let steps = 0;
    const onEvent = (event: TrainingEvent) => event.type === 'progress' && steps++;
    const abandoned = runTraining(parseJobSpec(tinyJob({ steps: 6, checkpoint_every: 2 })), { outDir: dir, onEvent, shouldAbandon: () => steps === 3 });
    await expect(abandoned).rejects.toBeInstanceOf(RunAbandonedError);
    expect(steps).toBe(3);
    expect(await readdir(dir)).toEqual(['step-000002']);
  }, 60_000);
});

describe('divergence', () => {
  // A stand-in replica whose gradient is NaN at the given steps, and which counts the updates it is given.
  const replicaNaNAt = (bad: (step: number) => boolean, applied: number[] = []): ReplicaHandle => ({
    gradients: async (step) => ({ grads: [Float32Array.of(bad(step) ? NaN : 1)], loss: bad(step) ? NaN : 1, skippedImages: [] }),
    apply: ([grad]) => void applied.push(grad![0]!),
    evalLoss: async () => null,
    save: async () => {},
  });
  const train = parseJobSpec(tinyJob({ steps: 100 })).train;

  test(`a run fails at the ${MAX_NONFINITE_STEPS}th update in a row with non-finite gradients, not at a few apart`, async () => {
    const events: TrainingEvent[] = [];
    // Three bad steps, a recovery, then NaN for good from step 8.
    const applied: number[] = [];
    const replica = replicaNaNAt((step) => (step >= 3 && step <= 5) || step >= 8, applied);
    const run = trainLoop([replica], { train, outDir: await tempDir(), onEvent: (e) => events.push(e) });
    await expect(run).rejects.toThrow(`training diverged: the gradients of the last ${MAX_NONFINITE_STEPS} updates (to step ${7 + MAX_NONFINITE_STEPS})`);
    expect(events.filter((e) => e.type === 'progress').at(-1)).toMatchObject({ step: 7 + MAX_NONFINITE_STEPS });
    expect(applied).toHaveLength(4); // steps 1, 2, 6 and 7
  });
});

describe('clipping', () => {
  test('the averaged gradient is clipped once, to train.clip, and every replica applies the same clipped gradient', async () => {
    const applied: number[][] = [[], []];
    const replica = (shard: number): ReplicaHandle => ({
      gradients: async () => ({ grads: [Float32Array.of(shard === 0 ? 6 : 10, 0), null], loss: 1, skippedImages: [] }),
      apply: ([grad, none]) => void applied[shard]!.push(...grad!, none === null ? 0 : NaN),
      evalLoss: async () => null,
      save: async () => {},
    });
    const events: TrainingEvent[] = [];
    const train = parseJobSpec(tinyJob({ steps: 1, clip: 2 })).train;
    await trainLoop([replica(0), replica(1)], { train, outDir: await tempDir(), onEvent: (e) => events.push(e) });
    // The mean of the two shards' sums is [8, 0] / grad_accum; its norm is reported before clipping.
    const norm = 8 / train.grad_accum;
    expect(events.find((e) => e.type === 'progress')).toMatchObject({ grad_norm: norm });
    expect(applied[0]![0]).toBeCloseTo(2, 5);
    expect(applied[1]).toEqual(applied[0]!);
    expect(applied[0]!.slice(1)).toEqual([0, 0]);
  });
});

describe('vision pretraining', () => {
  const model = { ...TINY_MODEL, numImageTokens: 4 };
  const job = (train: Record<string, unknown> = {}) =>
    parseJobSpec({ ...tinyJob({ steps: 2, ...train }), model, vision_pretraining: { steps: 3, batch_size: 2, eval_every: 2 } });
  const collect = (events: TrainingEvent[]) => (event: TrainingEvent) => events.push(event);
  const weightsOf = (network: MultimodalMACNetwork) => new Map(network.namedParameters().map(([name, v]) => [name, Array.from(v.dataSync())]));
  const weights = async (dir: string) => {
    const network = await loadCheckpoint(dir);
    const values = weightsOf(network);
    network.dispose();
    return values;
  };
  /** For each parameter whose name passes `which`: are its values in a and b the same? */
  const sameness = (a: Map<string, number[]>, b: Map<string, number[]>, which: (name: string) => boolean) =>
    [...a].filter(([name]) => which(name)).map(([name, values]) => values.every((v, i) => v === b.get(name)![i]));
  const vision = (name: string) => name.startsWith('vision.');

  test('first the image encoder learns what each token shows, then captioning trains the rest with it frozen', async () => {
    const dir = await tempDir();
    const baseline = tf.memory().numTensors;
    const events: TrainingEvent[] = [];
    const result = await runTraining(job(), { outDir: dir, onEvent: collect(events) });
    expect(tf.memory().numTensors).toBe(baseline);
    expect(events.map((e) => e.type)).toEqual(['pretraining', 'pretraining', 'pretraining_eval', 'pretraining', 'pretraining_eval', 'progress', 'progress', 'eval', 'checkpoint']);
    const evaluation = events.find((e) => e.type === 'pretraining_eval')!;
    if (evaluation.type !== 'pretraining_eval') throw new Error('unreachable');
    expect(Object.keys(evaluation.accuracy).sort()).toEqual(['color', 'shape', 'size', 'tokens']);
    for (const share of Object.values(evaluation.accuracy)) expect(share).toBeWithin(0, 1.0000001);

    const fresh = new MultimodalMACNetwork(model);
    const initial = weightsOf(fresh);
    fresh.dispose();
    const pretrained = await weights(join(dir, PRETRAINED_DIR));
    const final = await weights(result.checkpoint!);
    // Pretraining moved the encoder and nothing else; captioning moved everything but the encoder.
    expect(sameness(initial, pretrained, vision)).toContain(false);
    expect(sameness(initial, pretrained, (name) => !vision(name))).not.toContain(false);
    expect(sameness(pretrained, final, vision)).not.toContain(false);
    expect(sameness(pretrained, final, (name) => !vision(name))).toContain(false);
  }, 60_000);

  test('a run started again in the same folder skips a finished pretraining; a resumed one keeps the encoder frozen', async () => {
    const dir = await tempDir();
    const first = await runTraining(job({ checkpoint_every: 1 }), { outDir: join(dir, 'a'), onEvent: () => {} });
    const again: TrainingEvent[] = [];
    const second = await runTraining(job({ checkpoint_every: 1 }), { outDir: join(dir, 'a'), onEvent: collect(again) });
    expect(again.map((e) => e.type)).not.toContain('pretraining');
    const resumed: TrainingEvent[] = [];
    const third = await runTraining(job({ checkpoint_every: 1 }), { outDir: join(dir, 'b'), resumeFrom: join(dir, 'a', 'step-000001'), onEvent: collect(resumed) });
    expect(resumed.filter((e) => e.type !== 'checkpoint').map((e) => [e.type, e.step])).toEqual([['progress', 2], ['eval', 2]]);
    for (const run of [second, third]) {
      expect(Buffer.compare(await bytes(first.checkpoint!, 'model.safetensors'), await bytes(run.checkpoint!, 'model.safetensors'))).toBe(0);
      // The card too: the resumed caption stage starts from the pretrained model as well.
      expect(JSON.parse(await readFile(join(run.checkpoint!, 'card.json'), 'utf8')).trained_on).toEndWith(`starting from the checkpoint ${PRETRAINED_DIR}.`);
    }
  }, 60_000);

  test('stopped during pretraining: cancelled with nothing kept, and the next run starts it over', async () => {
    const dir = await tempDir();
    const stopped: TrainingEvent[] = [];
    const result = await runTraining(job(), { outDir: dir, onEvent: collect(stopped), shouldStop: () => stopped.length >= 2 });
    expect(result).toEqual({ status: 'cancelled', step: 0 });
    expect(stopped.map((e) => e.type)).toEqual(['pretraining', 'pretraining', 'pretraining_eval']);
    expect(await readdir(dir)).toEqual([]);
    const events: TrainingEvent[] = [];
    await runTraining(job(), { outDir: dir, onEvent: collect(events) });
    expect(events.filter((e) => e.type === 'pretraining').map((e) => e.step)).toEqual([1, 2, 3]);
  }, 60_000);

  test.each([2, 3])('abandoned after pretraining step %p of 3: it ends there, with nothing kept', async (step) => {
    const dir = await tempDir();
    const events: TrainingEvent[] = [];
    const pretrained = () => events.filter((e) => e.type === 'pretraining').length;
    await expect(runTraining(job(), { outDir: dir, onEvent: collect(events), shouldAbandon: () => pretrained() >= step })).rejects.toBeInstanceOf(RunAbandonedError);
    expect(pretrained()).toBe(step);
    expect(await readdir(dir)).toEqual([]);
  }, 60_000);

  test('train.freeze_vision keeps the encoder of a base checkpoint as it is while the rest learns', async () => {
    const dir = await tempDir();
    const base = await runTraining(parseJobSpec({ ...tinyJob({ steps: 1 }), model }), { outDir: join(dir, 'base'), onEvent: () => {} });
    const continued = (freeze_vision: boolean) =>
      runTraining(parseJobSpec({ base_checkpoint: base.checkpoint, data: { type: 'synthetic-shapes', val_size: 4 }, train: { steps: 2, batch_size: 2, seed: 4, freeze_vision } }), {
        outDir: join(dir, String(freeze_vision)),
        onEvent: () => {},
      });
    const before = await weights(base.checkpoint!);
    const frozen = await weights((await continued(true)).checkpoint!);
    expect(sameness(before, frozen, vision)).not.toContain(false);
    expect(sameness(before, frozen, (name) => !vision(name))).toContain(false);
    const trained = await weights((await continued(false)).checkpoint!);
    expect(sameness(before, trained, vision)).toContain(false);
  }, 60_000);

  test('train.freeze_vision defaults to true after vision pretraining, false otherwise, and is checked', () => {
    expect(parseJobSpec(tinyJob()).train.freeze_vision).toBe(false);
    expect(job().train.freeze_vision).toBe(true);
    expect(job({ freeze_vision: false }).train.freeze_vision).toBe(false);
    expect(() => parseJobSpec(tinyJob({ freeze_vision: 'yes' }))).toThrow(new SpecError('train.freeze_vision', 'train.freeze_vision must be true or false'));
  });

  test('needs the synthetic scenes, whose descriptions are its labels; its fields are checked', () => {
    const body = (vision_pretraining: unknown, data: Record<string, unknown> = { type: 'synthetic-shapes' }) => () => parseJobSpec({ data, vision_pretraining });
    expect(body({}, { type: 'text', text_data_path: 'a.txt' })).toThrow(new SpecError('vision_pretraining', 'vision_pretraining needs data.type "synthetic-shapes", got "text"'));
    expect(body({ steps: 0 })).toThrow('vision_pretraining.steps must be a whole number in [1, 10000000], got 0');
    expect(body({ steps: 10, warmup: 20 })).toThrow('vision_pretraining.warmup (20) must be at most vision_pretraining.steps (10)');
    expect(body({ epochs: 2 })).toThrow("unknown field 'vision_pretraining.epochs'");
    expect(body([])).toThrow('vision_pretraining must be a JSON object');
    expect(parseJobSpec({ data: { type: 'synthetic-shapes' }, vision_pretraining: {} }).vision_pretraining).toEqual({ steps: 400, batch_size: 32, lr: 2e-3, warmup: 40, eval_every: 0 });
  });
});

test('model with base_checkpoint changes options of the checkpoint that keep every weight; others are refused', async () => {
  const dir = await tempDir();
  const base = await runTraining(parseJobSpec(tinyJob({ steps: 1 })), { outDir: join(dir, 'base'), onEvent: () => {} });
  const changed = (changes: Record<string, unknown>) => resolveJobPaths(parseJobSpec({ base_checkpoint: base.checkpoint, model: changes, data: { type: 'synthetic-shapes', val_size: 4 }, train: { steps: 1, batch_size: 2 } }), dir);
  const changes = { slidingWindowAttn: true, neuralMemoryKwargs: { minStepSize: 0.01 } };
  const result = await runTraining(await changed(changes), { outDir: join(dir, 'changed'), onEvent: () => {} });
  const config = JSON.parse(await readFile(join(result.checkpoint!, 'config.json'), 'utf8')).model;
  expect(config.slidingWindowAttn).toBe(true);
  expect(config.neuralMemoryKwargs.minStepSize).toBe(0.01);
  expect(config.textDim).toBe(TINY_MODEL.textDim);
  await expect(changed({ heads: 0 })).rejects.toThrow("model.heads: option 'heads'");
  await expect(runTraining(await changed({ textDim: 48 }), { outDir: join(dir, 'wider'), onEvent: () => {} })).rejects.toThrow('the model expects');
}, 60_000);

test('a base_checkpoint whose files are links to files elsewhere is refused before any is read', async () => {
  const dir = await tempDir();
  const base = await runTraining(parseJobSpec(tinyJob({ steps: 1 })), { outDir: join(dir, 'base'), onEvent: () => {} });
  await rm(join(base.checkpoint!, 'model.safetensors'));
  await symlink('/etc/passwd', join(base.checkpoint!, 'model.safetensors'));
  const spec = parseJobSpec({ base_checkpoint: 'base/step-000001', data: { type: 'synthetic-shapes', val_size: 4 }, train: { steps: 1, batch_size: 2 } });
  await expect(resolveJobPaths(spec, dir)).rejects.toThrow("base_checkpoint 'base/step-000001/model.safetensors' leads outside the data folder");
});

test('a resume whose own checkpoint is gone says so, and does not blame its base_checkpoint, which it does not read', async () => {
  const dir = await tempDir();
  const base = await runTraining(parseJobSpec(tinyJob({ steps: 1 })), { outDir: join(dir, 'base'), onEvent: () => {} });
  const spec = await resolveJobPaths(parseJobSpec({ base_checkpoint: base.checkpoint, model: {}, data: { type: 'synthetic-shapes', val_size: 4 }, train: { steps: 2, batch_size: 2 } }), dir);
  const gone = join(dir, 'run', 'step-000001');
  await expect(jobModelOptions(spec, 'base', {}, gone)).rejects.toThrow(`cannot read ${join(gone, 'config.json')}`);
});
