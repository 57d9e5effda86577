import { afterAll, describe, expect, test } from 'bun:test';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { JobStore } from '../../src/jobs/store.ts';
import { TrainingScheduler } from '../../src/jobs/scheduler.ts';
import { parseJobSpec } from '../../src/training/spec.ts';
import { tempDir, tinyJob } from './training-helpers.ts';

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
    expect(reopened.list().map((j) => j.id)).toEqual([a.id, b.id]);
    expect(reopened.events(a.id).map((e) => e.data)).toEqual([{ step: 1 }, { step: 2 }]);
    expect(reopened.events(a.id, 1).map((e) => e.seq)).toEqual([2]);
    expect(reopened.get(b.id)!.spec.train.steps).toBe(20);
    reopened.close();
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
    await Bun.sleep(10);
    expect(scheduler.get(first.id)!.status).toBe('running');
    expect(scheduler.get(second.id)!.status).toBe('queued');
    expect(await settled(first.id)).toBe('succeeded');
    expect(await settled(second.id)).toBe('succeeded');
    expect(scheduler.get(second.id)!.started_at! >= scheduler.get(first.id)!.finished_at!).toBe(true);
    expect(activated).toEqual([scheduler.get(first.id)!.checkpoint!]);
    expect(scheduler.events(first.id).at(-1)!.data).toMatchObject({ status: 'succeeded', activated: true });
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

  test('a model too large for memory fails its job with the reason; the server side carries on', async () => {
    const huge = await scheduler.submit(parseJobSpec({ ...tinyJob(), model: { ...tinyJob().model, textDim: 1 << 15, ffMult: 64 } }));
    expect(await settled(huge.id)).toBe('failed');
    expect(scheduler.get(huge.id)!.error).toBeTruthy();
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
