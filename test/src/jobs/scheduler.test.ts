import { Database } from 'bun:sqlite';
import { afterAll, describe, expect, test } from 'bun:test';
import { readdirSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { JobStore } from '../../../src/jobs/store.ts';
import { QueueFullError } from '../../../src/jobs/errors.ts';
import { TrainingScheduler } from '../../../src/jobs/scheduler.ts';
import { parseJobSpec, SpecError } from '../../../src/training/spec.ts';
import { tempDir, tinyJob } from '../training/helpers.ts';

/** Resolves once `condition` holds: a job's row changes when its worker thread reports, so it is polled. */
async function until(condition: () => boolean): Promise<void> {
  while (!condition()) await Bun.sleep(5);
}

describe('JobStore', () => {
  test('keeps jobs and their ordered history; running jobs become interrupted on reopening', async () => {
    const path = join(await tempDir(), 'jobs.db');
    const store = new JobStore(path);
    const a = store.create(parseJobSpec(tinyJob({ steps: 10 })));
    const b = store.create(parseJobSpec(tinyJob({ steps: 20 })));
    expect(a).toMatchObject({ status: 'queued', step: 0, steps: 10, checkpoint: null });
    expect(store.nextQueued()!.id).toBe(a.id);
    store.update(a.id, { status: 'running', step: 3, loss: 2.5 });
    expect(store.appendEvent(a.id, 'progress', { step: 1 }).seq).toBe(1);
    expect(store.appendEvent(a.id, 'progress', { step: 2 }).seq).toBe(2);
    expect(store.appendEvent(b.id, 'done', { status: 'cancelled' }).seq).toBe(1);
    store.close();

    const reopened = new JobStore(path);
    expect(reopened.interruptRunning()).toEqual([a.id]);
    expect(reopened.get(a.id)).toMatchObject({ status: 'interrupted', step: 3, loss: 2.5 });
    // Newest first, a page at a time.
    expect(reopened.list(10)!.map((j) => j.id)).toEqual([b.id, a.id]);
    expect(reopened.list(1)!.map((j) => j.id)).toEqual([b.id]);
    expect(reopened.list(10, b.id)!.map((j) => j.id)).toEqual([a.id]);
    expect(reopened.list(10, a.id)).toEqual([]);
    expect(reopened.list(10, 'nope')).toBeUndefined();
    expect(reopened.events(a.id).map((e) => e.data)).toEqual([{ step: 1 }, { step: 2 }]);
    expect(reopened.events(a.id, 1).map((e) => e.seq)).toEqual([2]);
    expect(reopened.get(b.id)!.spec.train.steps).toBe(20);
    reopened.close();
  });

  test('a database made before job stages gains their columns, and its jobs read as before', async () => {
    const path = join(await tempDir(), 'jobs.db');
    const old = new Database(path, { create: true });
    old.exec(`CREATE TABLE jobs (id TEXT PRIMARY KEY, created_order INTEGER NOT NULL, status TEXT NOT NULL, step INTEGER NOT NULL DEFAULT 0,
      steps INTEGER NOT NULL, loss REAL, eval_loss REAL, samples_per_sec REAL, eta_s REAL, checkpoint TEXT, skipped_images INTEGER NOT NULL DEFAULT 0,
      error TEXT, spec TEXT NOT NULL, created_at TEXT NOT NULL, started_at TEXT, finished_at TEXT)`);
    old.query("INSERT INTO jobs (id, created_order, status, step, steps, spec, created_at) VALUES ('old', 1, 'succeeded', 5, 5, $spec, '2026-01-01T00:00:00.000Z')")
      .run({ $spec: JSON.stringify(parseJobSpec(tinyJob({ steps: 5 }))) });
    old.close();

    const store = new JobStore(path);
    expect(store.get('old')).toMatchObject({ status: 'succeeded', stage: null, vision_step: 0, step: 5 });
    const added = store.create(parseJobSpec(tinyJob({ steps: 2 })));
    expect(store.update(added.id, { stage: 'vision', vision_step: 1 })).toMatchObject({ stage: 'vision', vision_step: 1, step: 0 });
    store.close();
  });
});

describe('TrainingScheduler limits', async () => {
  test('a job over MAX_JOB_MEMORY_BYTES is refused at submission, naming the field, the need and the limit', async () => {
    const scheduler = new TrainingScheduler({ dataDir: await tempDir(), maxJobMemoryBytes: 256 * 1024 * 1024 });
    try {
      const refused = async (body: unknown) => scheduler.submit(parseJobSpec(body)).then(() => undefined, (e: unknown) => e as SpecError);
      const wide = await refused({ model: { textDim: 4096, depth: 24 }, data: { type: 'synthetic-shapes' } });
      expect(wide).toBeInstanceOf(SpecError);
      expect(wide!.field).toBe('model');
      expect(wide!.message).toMatch(/^model: the job would need about \d+(\.\d)? GiB, more than MAX_JOB_MEMORY_BYTES \(256 MiB\): [\d,]+ parameters/);
      const batch = await refused(tinyJob({ batch_size: 1024 }, { type: 'synthetic-shapes', max_tokens: 4096 }));
      expect(batch!.field).toBe('train.batch_size');
      expect(batch!.message).toContain('of activations for one batch');
      expect(scheduler.list({ limit: 10 })).toEqual([]);
      const accepted = await scheduler.submit(parseJobSpec(tinyJob({ steps: 1 })));
      // Nothing else waits, so it starts at once.
      expect(scheduler.list({ limit: 10 })!.map((job) => [job.id, job.status])).toEqual([[accepted.id, 'running']]);
    } finally {
      scheduler.close();
    }
  });

  test('past MAX_QUEUED_JOBS waiting jobs, submit and resume throw QueueFullError', async () => {
    const scheduler = new TrainingScheduler({ dataDir: await tempDir(), maxQueuedJobs: 1 });
    try {
      const first = await scheduler.submit(parseJobSpec(tinyJob({ steps: 500 })));
      await until(() => scheduler.get(first.id)!.status === 'running');
      const second = await scheduler.submit(parseJobSpec(tinyJob({ steps: 1 })));
      const full = await scheduler.submit(parseJobSpec(tinyJob({ steps: 1 }))).then(() => undefined, (e: unknown) => e as QueueFullError);
      expect(full).toBeInstanceOf(QueueFullError);
      expect(full!.retryAfterSeconds).toBeGreaterThanOrEqual(10);
      // A cancelled job frees its place; resuming it again needs one.
      scheduler.cancel(second.id);
      expect((await scheduler.submit(parseJobSpec(tinyJob({ steps: 1 })))).status).toBe('queued');
      expect(() => scheduler.resume(second.id)).toThrow(QueueFullError);
    } finally {
      scheduler.close();
    }
  }, 30_000);

  test('a job left running by a process that died ends its history with done: interrupted, and why', async () => {
    const dataDir = await tempDir();
    const store = new JobStore(join(dataDir, 'jobs.db'));
    const job = store.create(parseJobSpec(tinyJob({ steps: 10 })));
    store.update(job.id, { status: 'running', step: 3, checkpoint: join(dataDir, 'jobs', job.id, 'step-000002') });
    store.appendEvent(job.id, 'progress', { step: 3 });
    store.close();
    const scheduler = new TrainingScheduler({ dataDir });
    try {
      const events = scheduler.events(job.id);
      expect(events.map((e) => e.type)).toEqual(['progress', 'done']);
      expect(events[1]!.data).toMatchObject({ status: 'interrupted', step: 3, checkpoint: join('jobs', job.id, 'step-000002'), reason: expect.stringContaining('the server stopped') });
      expect(scheduler.get(job.id)).toMatchObject({ status: 'interrupted', checkpoint: join('jobs', job.id, 'step-000002') });
    } finally {
      scheduler.close();
    }
  });
});

describe('TrainingScheduler', async () => {
  const dataDir = await tempDir();
  const activated: string[] = [];
  const scheduler = new TrainingScheduler({ dataDir, onActivate: async (dir) => activated.push(dir) });
  afterAll(() => scheduler.close());

  const settled = (id: string) =>
    new Promise<string>((resolve) => {
      const check = () => {
        const job = scheduler.get(id)!;
        if (!['queued', 'running'].includes(job.status)) resolve(job.status);
        else setTimeout(check, 25);
      };
      check();
    });

  test('one job runs at a time, the others wait in order; activate loads the final checkpoint', async () => {
    const first = await scheduler.submit(parseJobSpec({ ...tinyJob({ steps: 3 }), activate: true }));
    const second = await scheduler.submit(parseJobSpec(tinyJob({ steps: 2 })));
    await until(() => scheduler.get(first.id)!.status === 'running');
    expect(scheduler.get(second.id)!.status).toBe('queued');
    expect(await settled(first.id)).toBe('succeeded');
    expect(await settled(second.id)).toBe('succeeded');
    expect(Date.parse(scheduler.get(second.id)!.started_at!)).toBeGreaterThanOrEqual(Date.parse(scheduler.get(first.id)!.finished_at!));
    // The API shows checkpoints relative to DATA_DIR; activation gets the folder itself.
    expect(scheduler.get(first.id)!.checkpoint).toBe(join('jobs', first.id, 'step-000003'));
    expect(activated).toEqual([join(dataDir, 'jobs', first.id, 'step-000003')]);
    expect(scheduler.events(first.id).at(-1)!.data).toMatchObject({ status: 'succeeded', activated: true });
  }, 60_000);

  test('a job keeps its train.keep_checkpoints latest checkpoints, each pruned once the next is recorded', async () => {
    const job = await scheduler.submit(parseJobSpec(tinyJob({ steps: 5, checkpoint_every: 1, keep_checkpoints: 2 })));
    expect(await settled(job.id)).toBe('succeeded');
    const folder = join(dataDir, 'jobs', job.id);
    await until(() => readdirSync(folder).length === 2);
    expect(readdirSync(folder).sort()).toEqual(['step-000004', 'step-000005']);
  }, 60_000);

  test('the job row follows a two-stage job through both stages', async () => {
    const job = await scheduler.submit(parseJobSpec({ ...tinyJob({ steps: 2 }), vision_pretraining: { steps: 3, batch_size: 2 } }));
    const rows: string[] = [];
    // A listener runs right after the row is updated for its event, so each row is the one of that event.
    const unsubscribe = scheduler.subscribe(job.id, (event) => {
      if (event?.type !== 'pretraining' && event?.type !== 'progress') return;
      const { stage, vision_step, step, loss } = scheduler.get(job.id)!;
      rows.push(`${event.type} ${event.data.step}: ${stage} ${vision_step} ${step} ${loss === null ? 'no loss' : 'loss'}`);
    });
    expect(await settled(job.id)).toBe('succeeded');
    unsubscribe();
    expect(rows).toEqual([
      'pretraining 1: vision 1 0 no loss',
      'pretraining 2: vision 2 0 no loss',
      'pretraining 3: vision 3 0 no loss',
      'progress 1: captions 3 1 loss',
      'progress 2: captions 3 2 loss',
    ]);
  }, 60_000);

  test('an error in the worker fails the job with its reason; the next job still runs', async () => {
    await writeFile(join(dataDir, 'broken.json'), '[{"image": 1}]');
    const broken = await scheduler.submit(parseJobSpec(tinyJob({}, { type: 'annotations', annotations_file: 'broken.json' })));
    const next = await scheduler.submit(parseJobSpec(tinyJob({ steps: 1 })));
    expect(await settled(broken.id)).toBe('failed');
    expect(scheduler.get(broken.id)!.error).toContain('broken.json');
    const types = scheduler.events(broken.id).map((e) => e.type);
    expect(types).toEqual(['error', 'done']);
    expect(scheduler.events(broken.id)[0]!.data).toMatchObject({ error: { code: 'training_failed', message: expect.stringContaining('broken.json') } });
    expect(await settled(next.id)).toBe('succeeded');
  }, 60_000);

  test('a model that runs out of memory fails its job as training_failed, "out of memory" with the sizes; the server side carries on', async () => {
    // This scheduler has no memory limit, so the job reaches its worker, where WebAssembly cannot hold it.
    const huge = await scheduler.submit(parseJobSpec({ ...tinyJob(), model: { ...tinyJob().model, textDim: 1 << 15, ffMult: 64 } }));
    expect(await settled(huge.id)).toBe('failed');
    const message = scheduler.get(huge.id)!.error!;
    expect(message).toStartWith('training ran out of memory: ');
    expect(message).toMatch(/[\d,]{13,} parameters x 4 bytes x \(weights, gradients and AdamW's two moments\) = \d+(\.\d)? [GT]iB/);
    expect(message).not.toMatch(/Aborted|ASSERTIONS|RangeError/);
    const [error, done] = scheduler.events(huge.id).slice(-2);
    expect(error).toMatchObject({ type: 'error', data: { error: { code: 'training_failed', message } } });
    expect(done).toMatchObject({ type: 'done', data: { status: 'failed', reason: message, error: { code: 'training_failed', message } } });
    const next = await scheduler.submit(parseJobSpec(tinyJob({ steps: 1 })));
    expect(await settled(next.id)).toBe('succeeded');
  }, 60_000);

  test('a queued job is cancelled at once; a cancelled job resumes to the end', async () => {
    const running = await scheduler.submit(parseJobSpec(tinyJob({ steps: 400 })));
    const queued = await scheduler.submit(parseJobSpec(tinyJob({ steps: 2 })));
    expect(scheduler.cancel(queued.id).status).toBe('cancelled');
    scheduler.cancel(running.id);
    expect(await settled(running.id)).toBe('cancelled');
    expect(['queued', 'running']).toContain(scheduler.resume(queued.id).status);
    expect(await settled(queued.id)).toBe('succeeded');
  }, 60_000);
});

describe('a cancel', () => {
  // A grace far shorter than a step: the cancel must still wait for the step's end once the loop runs.
  const graceMs = 20;

  test('waits for the end of the step however long, once the worker has reported a step; the job keeps a checkpoint of it', async () => {
    const scheduler = new TrainingScheduler({ dataDir: await tempDir(), cancelGraceMs: graceMs });
    try {
      const job = await scheduler.submit(parseJobSpec(tinyJob({ steps: 50, batch_size: 32 }, { type: 'synthetic-shapes', val_size: 0, max_tokens: 256 })));
      await until(() => scheduler.get(job.id)!.step >= 1);
      scheduler.cancel(job.id);
      await until(() => scheduler.get(job.id)!.status !== 'running');
      const cancelled = scheduler.get(job.id)!;
      expect(cancelled).toMatchObject({ status: 'cancelled', checkpoint: join('jobs', job.id, `step-${String(cancelled.step).padStart(6, '0')}`) });
      expect(cancelled.step).toBeGreaterThanOrEqual(1);
    } finally {
      scheduler.close();
    }
  }, 60_000);

  test('ends a worker that has reported no step yet after the grace, and says so', async () => {
    const scheduler = new TrainingScheduler({ dataDir: await tempDir(), cancelGraceMs: graceMs });
    try {
      const job = await scheduler.submit(parseJobSpec(tinyJob({ steps: 50 })));
      await until(() => scheduler.get(job.id)!.status === 'running');
      scheduler.cancel(job.id);
      await until(() => scheduler.get(job.id)!.status !== 'running');
      expect(scheduler.get(job.id)).toMatchObject({ status: 'cancelled', step: 0, checkpoint: null });
      expect(scheduler.events(job.id).at(-1)!.data).toMatchObject({ status: 'cancelled', reason: 'cancelled before its first step; its worker, still preparing the run, was ended' });
    } finally {
      scheduler.close();
    }
  }, 60_000);
});

describe('activate: true', () => {
  /** An onActivate that holds each load until the test lets it end, as a slow load of a large model. */
  function heldActivation() {
    const loads: { dir: string; end: (error?: Error) => void }[] = [];
    const onActivate = (dir: string) => new Promise<void>((resolve, reject) => loads.push({ dir, end: (error) => (error ? reject(error) : resolve()) }));
    return { loads, onActivate };
  }

  test('a cancel that comes during the last step wins: the job ends cancelled at it, and nothing is activated', async () => {
    const dataDir = await tempDir();
    const { loads, onActivate } = heldActivation();
    const scheduler = new TrainingScheduler({ dataDir, onActivate });
    try {
      const job = await scheduler.submit(parseJobSpec({ ...tinyJob({ steps: 2, eval_every: 1 }), activate: true }));
      // The last step's evaluation comes after the loop last looked for a cancel.
      const unsubscribe = scheduler.subscribe(job.id, (event) => event?.type === 'eval' && event.data.step === 2 && scheduler.cancel(job.id));
      await until(() => !['queued', 'running'].includes(scheduler.get(job.id)!.status));
      unsubscribe();
      expect(scheduler.get(job.id)).toMatchObject({ status: 'cancelled', step: 2, checkpoint: join('jobs', job.id, 'step-000002') });
      expect(scheduler.events(job.id).at(-1)!.data).toMatchObject({ status: 'cancelled', reason: 'cancelled at step 2, after a checkpoint of it' });
      expect(loads).toEqual([]);
    } finally {
      scheduler.close();
    }
  }, 60_000);

  test('a shutdown waits for the activation of a job that has just finished', async () => {
    const dataDir = await tempDir();
    const { loads, onActivate } = heldActivation();
    const scheduler = new TrainingScheduler({ dataDir, onActivate });
    const job = await scheduler.submit(parseJobSpec({ ...tinyJob({ steps: 2 }), activate: true }));
    await until(() => loads.length === 1);
    const stopped = scheduler.shutdown(60_000);
    loads[0]!.end();
    await stopped;
    const reopened = new TrainingScheduler({ dataDir });
    try {
      expect(reopened.get(job.id)).toMatchObject({ status: 'succeeded', error: null });
      expect(reopened.events(job.id).at(-1)!.data).toMatchObject({ status: 'succeeded', activated: true });
    } finally {
      reopened.close();
    }
  }, 60_000);

  test('a job stopped by a shutdown during its activation is interrupted, and its resume activates its final checkpoint', async () => {
    const dataDir = await tempDir();
    const first = heldActivation();
    const scheduler = new TrainingScheduler({ dataDir, onActivate: first.onActivate });
    const job = await scheduler.submit(parseJobSpec({ ...tinyJob({ steps: 2 }), activate: true }));
    await until(() => first.loads.length === 1);
    await scheduler.shutdown(0);
    const finalCheckpoint = join('jobs', job.id, 'step-000002');

    const activated: string[] = [];
    const restarted = new TrainingScheduler({ dataDir, onActivate: async (dir) => void activated.push(dir) });
    try {
      expect(restarted.get(job.id)).toMatchObject({ status: 'interrupted', step: 2, checkpoint: finalCheckpoint });
      expect(restarted.get(job.id)!.error).toBe("the server stopped while the job's final checkpoint was being activated; resume it to activate it");
      restarted.resume(job.id);
      await until(() => restarted.get(job.id)!.status !== 'queued' && restarted.get(job.id)!.status !== 'running');
      expect(restarted.get(job.id)).toMatchObject({ status: 'succeeded', step: 2, checkpoint: finalCheckpoint });
      expect(activated).toEqual([join(dataDir, finalCheckpoint)]);
      expect(restarted.events(job.id).at(-1)!.data).toMatchObject({ status: 'succeeded', activated: true });
    } finally {
      restarted.close();
    }
  }, 60_000);

  test('a job cannot be cancelled once its checkpoint is being activated, and is told so', async () => {
    const { loads, onActivate } = heldActivation();
    const scheduler = new TrainingScheduler({ dataDir: await tempDir(), onActivate });
    try {
      const job = await scheduler.submit(parseJobSpec({ ...tinyJob({ steps: 1 }), activate: true }));
      await until(() => loads.length === 1);
      expect(() => scheduler.cancel(job.id)).toThrow(`job ${job.id} has finished training and its checkpoint is being activated; it can no longer be cancelled`);
      loads[0]!.end();
      await until(() => scheduler.get(job.id)!.status === 'succeeded');
    } finally {
      scheduler.close();
    }
  }, 60_000);

  test('a checkpoint that cannot be activated: the job succeeds, and its done event and row carry the activation_failed error', async () => {
    const { loads, onActivate } = heldActivation();
    const scheduler = new TrainingScheduler({ dataDir: await tempDir(), onActivate });
    try {
      const job = await scheduler.submit(parseJobSpec({ ...tinyJob({ steps: 1 }), activate: true }));
      await until(() => loads.length === 1);
      loads[0]!.end(new Error('another model is being loaded'));
      await until(() => scheduler.get(job.id)!.status === 'succeeded');
      const message = 'the job succeeded but its checkpoint could not be activated: another model is being loaded';
      const error = { code: 'activation_failed', message };
      const [failure, done] = scheduler.events(job.id).slice(-2);
      expect(failure).toMatchObject({ type: 'error', data: { error } });
      expect(done).toMatchObject({ type: 'done', data: { status: 'succeeded', activated: false, error } });
      expect(done!.data.reason).toBeUndefined();
      expect(scheduler.get(job.id)!.error).toBe(message);
    } finally {
      scheduler.close();
    }
  }, 60_000);
});

test('a job cancelled during vision pretraining says that it kept no checkpoint, and that a resume starts the pretraining over', async () => {
  const scheduler = new TrainingScheduler({ dataDir: await tempDir() });
  try {
    const job = await scheduler.submit(parseJobSpec({ ...tinyJob({ steps: 2 }), vision_pretraining: { steps: 500, batch_size: 2 } }));
    await until(() => scheduler.get(job.id)!.vision_step >= 1);
    scheduler.cancel(job.id);
    await until(() => scheduler.get(job.id)!.status === 'cancelled');
    expect(scheduler.events(job.id).at(-1)!.data).toMatchObject({
      status: 'cancelled',
      step: 0,
      checkpoint: null,
      reason: 'cancelled during vision pretraining, which keeps no checkpoint before it ends; resume starts the pretraining over',
    });
  } finally {
    scheduler.close();
  }
}, 60_000);
