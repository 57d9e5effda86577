/**
 * The Redis job system (src/jobs/redis-queue.ts) with several replicas in one process, on a real
 * redis-server: one queues, another runs, any answers and cancels; the queue cap holds for the
 * cluster; a job whose runners keep dying fails after TRAINING_MAX_ATTEMPTS; activation reaches
 * every replica; a lost Redis makes the job routes' calls fail as unavailable, and a restarted Redis
 * has lost nothing. The two-process test with kill -9 is test/routes/replicas.test.ts.
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import { Redis } from 'ioredis';
import { existsSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { loadServerConfig } from '../../../src/http/settings.ts';
import { JobStateError, QueueFullError, QueueUnavailableError } from '../../../src/jobs/errors.ts';
import { RedisTrainingQueue, type RedisQueueOptions } from '../../../src/jobs/redis-queue.ts';
import type { Job, JobEvent } from '../../../src/jobs/store.ts';
import { checkpointFolders, checkpointStep } from '../../../src/training/checkpoint-folders.ts';
import { parseJobSpec } from '../../../src/training/spec.ts';
import { REDIS_SERVER, startRedis, type TestRedis } from '../../redis.ts';
import { tempDir, tinyJob } from '../training/helpers.ts';

test('a replica whose Redis cannot be reached still shuts down: it stops waiting for BullMQ and drops its connections', async () => {
  const queue = new RedisTrainingQueue({ url: 'redis://127.0.0.1:1', dataDir: await tempDir('titans-redis-data-'), replicaId: 'alone', slots: 1, lockMs: 600, maxAttempts: 3, maxQueuedJobs: 16, log: () => {} });
  // Once BullMQ has tried to connect for a while, its close waits for a Redis that never answers.
  await Bun.sleep(3000);
  await queue.shutdown(2500);
  expect(queue.state().reachable).toBe(false);
}, 15_000);

describe.skipIf(!REDIS_SERVER)('RedisTrainingQueue', () => {
  let redis: TestRedis;
  let dataDir: string;
  const open: RedisTrainingQueue[] = [];
  let cluster = 0;

  beforeAll(async () => {
    redis = await startRedis();
    dataDir = await tempDir('titans-redis-data-');
  });

  afterAll(async () => {
    await Promise.all(open.map((queue) => queue.close()));
    await redis.kill();
  });

  /** A replica of cluster `prefix` on the test Redis and data folder. */
  async function replica(replicaId: string, options: Partial<RedisQueueOptions> & { prefix: string }): Promise<RedisTrainingQueue> {
    const queue = new RedisTrainingQueue({ url: redis.url, dataDir, replicaId, slots: 1, lockMs: 600, maxAttempts: 3, maxQueuedJobs: 16, log: () => {}, ...options });
    open.push(queue);
    await queue.ready();
    return queue;
  }

  /** Each test its own cluster: a key prefix of its own on the one Redis. */
  const newCluster = () => `test${++cluster}`;

  async function until(queue: RedisTrainingQueue, id: string, done: (job: Job) => boolean, timeoutMs = 30_000): Promise<Job> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const job = (await queue.get(id))!;
      if (done(job)) return job;
      if (Date.now() > deadline) throw new Error(`job ${id} still ${job.status} at step ${job.step}`);
      await Bun.sleep(25);
    }
  }

  const ended = (job: Job) => !['queued', 'running'].includes(job.status);

  /** The job's events as a follower on `queue` sees them, until its terminal `done`. */
  function follow(queue: RedisTrainingQueue, id: string): Promise<JobEvent[]> {
    return new Promise((resolve) => {
      const seen: JobEvent[] = [];
      const unsubscribe = queue.subscribe(id, (event) => {
        if (event) seen.push(event);
        if (!event || event.type === 'done') {
          unsubscribe();
          resolve(seen);
        }
      });
    });
  }

  test('a job queued on one replica runs on another; a third follows it live and replays the same history', async () => {
    const prefix = newCluster();
    const front = await replica('front', { prefix, slots: 0 });
    const runner = await replica('runner', { prefix });
    const watcher = await replica('watcher', { prefix, slots: 0 });
    const job = await front.submit(parseJobSpec(tinyJob({ steps: 3, checkpoint_every: 2, eval_every: 2 })));
    expect(job).toMatchObject({ status: 'queued', step: 0, steps: 3, checkpoint: null });
    const live = follow(watcher, job.id);
    const done = await until(front, job.id, ended);
    expect(done).toMatchObject({ status: 'succeeded', step: 3, checkpoint: `jobs/${job.id}/step-000003`, error: null });
    const events = await live;
    expect(events.map((e) => e.type)).toEqual(['progress', 'progress', 'eval', 'checkpoint', 'progress', 'eval', 'checkpoint', 'done']);
    expect(events.map((e) => e.seq)).toEqual(events.map((_, i) => i + 1));
    expect(await runner.events(job.id)).toEqual(events);
    expect(await front.events(job.id, 5)).toEqual(events.slice(5));
    // The API's job, field for field as the SQLite store gives it, on every replica.
    expect(Object.keys(done)).toEqual(['id', 'status', 'step', 'steps', 'loss', 'eval_loss', 'samples_per_sec', 'eta_s', 'checkpoint', 'skipped_images', 'error', 'spec', 'created_at', 'started_at', 'finished_at', 'stage', 'vision_step']);
    expect(await watcher.get(job.id)).toEqual(done);
    // An id names a job, never another of its keys in Redis.
    expect(await watcher.get(`${job.id}:events`)).toBeUndefined();
    expect((await runner.list({ limit: 10 }))!.map((j) => j.id)).toEqual([job.id]);
  }, 60_000);

  test('a cancel sent to one replica stops the job running on another within a step; a queued job is cancelled at once', async () => {
    const prefix = newCluster();
    const front = await replica('front', { prefix, slots: 0 });
    const runner = await replica('runner', { prefix });
    // Steps of a larger batch: long beside the time a step's record takes to reach Redis, so that the
    // step the cancel reads is the one under way.
    const long = await front.submit(parseJobSpec(tinyJob({ steps: 500, batch_size: 16 })));
    const waiting = await front.submit(parseJobSpec(tinyJob({ steps: 2 })));
    const running = await until(front, long.id, (job) => job.step >= 1);
    expect((await front.cancel(waiting.id)).status).toBe('cancelled');
    const asked = (await front.cancel(long.id)).step;
    const cancelled = await until(runner, long.id, ended, 10_000);
    expect(cancelled.status).toBe('cancelled');
    // Within one step of the cancel: the step under way when it arrived is the last.
    expect(cancelled.step).toBeLessThanOrEqual(asked + 1);
    expect(cancelled.step).toBeGreaterThanOrEqual(running.step);
    expect(cancelled.checkpoint).toBe(`jobs/${long.id}/step-${String(cancelled.step).padStart(6, '0')}`);
    const end = (await front.events(long.id)).at(-1)!;
    expect(end).toMatchObject({ type: 'done', data: { status: 'cancelled', step: cancelled.step, reason: `cancelled at step ${cancelled.step}, after a checkpoint of it` } });
    // The job cancelled while it waited never ran, though the runner was free.
    await Bun.sleep(300);
    expect(await runner.get(waiting.id)).toMatchObject({ status: 'cancelled', started_at: null });
    await expect(Promise.resolve().then(() => front.cancel(long.id))).rejects.toThrow('only a queued or running job can be cancelled');
    // Resumed from another replica, it goes on from its checkpoint to the end.
    expect((await runner.resume(long.id)).status).toBe('queued');
    await until(front, long.id, (job) => job.status === 'running' && job.step > cancelled.step);
    await front.cancel(long.id);
    expect((await until(front, long.id, ended)).status).toBe('cancelled');
  }, 60_000);

  test('a cancel waits for the end of a step longer than the cancel grace, once the worker has reported a step', async () => {
    const runner = await replica('slow', { prefix: newCluster(), cancelGraceMs: 20 });
    const job = await runner.submit(parseJobSpec(tinyJob({ steps: 50, batch_size: 32 }, { type: 'synthetic-shapes', val_size: 0, max_tokens: 256 })));
    await until(runner, job.id, (j) => j.step >= 1);
    await runner.cancel(job.id);
    const cancelled = await until(runner, job.id, ended);
    expect(cancelled.status).toBe('cancelled');
    expect(cancelled.checkpoint).toBe(`jobs/${job.id}/step-${String(cancelled.step).padStart(6, '0')}`);
  }, 60_000);

  test('MAX_QUEUED_JOBS holds for the cluster: the second job queued on another replica is refused', async () => {
    const prefix = newCluster();
    // No replica with a slot: jobs stay queued.
    const a = await replica('a', { prefix, slots: 0, maxQueuedJobs: 1 });
    const b = await replica('b', { prefix, slots: 0, maxQueuedJobs: 1 });
    const first = await a.submit(parseJobSpec(tinyJob({ steps: 1 })));
    const refused = await b.submit(parseJobSpec(tinyJob({ steps: 1 }))).then(() => undefined, (e: unknown) => e);
    expect(refused).toBeInstanceOf(QueueFullError);
    expect((refused as QueueFullError).retryAfterSeconds).toBeGreaterThanOrEqual(10);
    // A cancelled job frees its place, cluster wide; resuming it needs one again.
    await b.cancel(first.id);
    const second = await b.submit(parseJobSpec(tinyJob({ steps: 1 })));
    expect(second.status).toBe('queued');
    // The list, newest first, a page at a time, as the SQLite store gives it.
    expect((await a.list({ limit: 10 }))!.map((job) => job.id)).toEqual([second.id, first.id]);
    expect((await a.list({ limit: 1 }))!.map((job) => job.id)).toEqual([second.id]);
    expect((await a.list({ limit: 10, after: second.id }))!.map((job) => job.id)).toEqual([first.id]);
    expect(await a.list({ limit: 10, after: first.id })).toEqual([]);
    expect(await a.list({ limit: 10, after: 'nope' })).toBeUndefined();
    await expect(a.resume(first.id)).rejects.toBeInstanceOf(QueueFullError);
    await a.cancel(second.id);
    expect((await a.resume(first.id)).status).toBe('queued');
  });

  test('a job recorded but never added to BullMQ (its replica died between the two) is added again, and runs', async () => {
    const prefix = newCluster();
    const front = await replica('front', { prefix, slots: 0 });
    const job = await front.submit(parseJobSpec(tinyJob({ steps: 1 })));
    // What a replica killed after the record and before the add leaves: a queued record, no BullMQ job.
    await (front as unknown as { queue: { remove(id: string): Promise<number> } }).queue.remove(`${job.id}-1`);
    await replica('trainer', { prefix });
    expect((await until(front, job.id, ended)).status).toBe('succeeded');
  }, 60_000);

  test('a submit whose add to BullMQ fails or hangs once the job is recorded (a shutdown, an outage) is accepted, not a 503 or a wait that a retry would double', async () => {
    const prefix = newCluster();
    const front = await replica('front', { prefix, slots: 0 });
    const queue = (front as unknown as { queue: { add: () => Promise<unknown> } }).queue;
    const add = queue.add;
    queue.add = () => Promise.reject(new Error('Connection is closed.'));
    const refused = await front.submit(parseJobSpec(tinyJob({ steps: 1 })));
    // In an outage BullMQ waits for Redis to come back: the answer does not wait with it.
    queue.add = () => new Promise(() => {});
    const unanswered = await front.submit(parseJobSpec(tinyJob({ steps: 1 })));
    queue.add = add;
    expect([refused.status, unanswered.status]).toEqual(['queued', 'queued']);
    await replica('trainer', { prefix });
    for (const job of [refused, unanswered]) expect((await until(front, job.id, ended)).status).toBe('succeeded');
    expect((await front.list({ limit: 10 }))!.map((listed) => listed.id).sort()).toEqual([refused.id, unanswered.id].sort());
  }, 60_000);

  test('a job whose runners keep dying is taken over each time, then fails after TRAINING_MAX_ATTEMPTS runs, saying why', async () => {
    const prefix = newCluster();
    const front = await replica('front', { prefix, slots: 0, maxAttempts: 2 });
    const job = await front.submit(parseJobSpec(tinyJob({ steps: 500, checkpoint_every: 1 })));
    let started: string | null = null;
    for (const name of ['first', 'second']) {
      const runner = await replica(name, { prefix, maxAttempts: 2 });
      // Its own run: started anew, and past a checkpoint of its own.
      const running = await until(front, job.id, (j) => j.started_at !== started && j.step > (j.checkpoint === null ? Infinity : 0) && j.step >= 2);
      started = running.started_at;
      // As if it died: its threads end and its lock is no longer renewed.
      await runner.close();
    }
    await replica('third', { prefix, maxAttempts: 2 });
    const failed = await until(front, job.id, ended);
    expect(failed.status).toBe('failed');
    expect(failed.error).toMatch(/^the replicas that ran the job stopped 2 times before it ended \(the last: second, at step \d+\); TRAINING_MAX_ATTEMPTS is 2/);
    const [error, done] = (await front.events(job.id)).slice(-2);
    expect(error).toMatchObject({ type: 'error', data: { error: { code: 'training_failed', message: failed.error } } });
    expect(done).toMatchObject({ type: 'done', data: { status: 'failed', reason: failed.error } });
  }, 60_000);

  test('a job cancelled while its runner is dead ends at its last checkpoint\'s step, not at the last step it reported', async () => {
    const prefix = newCluster();
    const front = await replica('front', { prefix, slots: 0 });
    const cancelledWhileDead = async (checkpointEvery: number, reportedPast: (job: Job) => boolean) => {
      const runner = await replica('dying', { prefix });
      const job = await front.submit(parseJobSpec(tinyJob({ steps: 500, checkpoint_every: checkpointEvery })));
      await until(front, job.id, reportedPast);
      await runner.close(); // as if it died
      const reported = (await front.get(job.id))!;
      await front.cancel(job.id);
      // The replica that takes the job over finds it cancelled.
      const taker = await replica('taker', { prefix });
      const cancelled = await until(front, job.id, ended);
      await taker.close();
      return { reported, cancelled, done: (await front.events(job.id)).at(-1)! };
    };

    const past = await cancelledWhileDead(3, (job) => job.checkpoint !== null && job.step % 3 === 1);
    const checkpointStep = Number(past.reported.checkpoint!.slice(-6));
    expect(past.reported.step).toBeGreaterThan(checkpointStep);
    expect(past.cancelled).toMatchObject({ status: 'cancelled', step: checkpointStep, checkpoint: past.reported.checkpoint });
    expect(past.done.data).toMatchObject({ status: 'cancelled', step: checkpointStep, checkpoint: past.reported.checkpoint, reason: `cancelled at step ${checkpointStep}, after a checkpoint of it` });

    const before = await cancelledWhileDead(1000, (job) => job.step >= 2);
    expect(before.cancelled).toMatchObject({ status: 'cancelled', step: 0, checkpoint: null });
    expect(before.done.data).toMatchObject({ status: 'cancelled', step: 0, checkpoint: null, reason: 'cancelled before its first checkpoint; resume starts it from step 1' });
  }, 60_000);

  test('a job cancelled once its dead runner\'s lock has lapsed ends at once, though no replica has a free slot to take it over', async () => {
    const prefix = newCluster();
    const front = await replica('front', { prefix, slots: 0 });
    const runner = await replica('dying', { prefix });
    const job = await front.submit(parseJobSpec(tinyJob({ steps: 500, checkpoint_every: 2 })));
    await until(front, job.id, (j) => j.checkpoint !== null && j.step > checkpointStep(j.checkpoint));
    await runner.close(); // as if it died
    await Bun.sleep(1500); // past its 600 ms lock
    const cancelled = await front.cancel(job.id);
    expect(cancelled.status).toBe('cancelled');
    expect(cancelled.step).toBe(checkpointStep(cancelled.checkpoint!));
    expect((await front.events(job.id)).at(-1)).toMatchObject({ type: 'done', data: { status: 'cancelled', step: cancelled.step } });
    // A replica that comes later finds the job ended, and lets it go.
    await replica('late', { prefix });
    await Bun.sleep(1000);
    expect((await front.get(job.id))!.status).toBe('cancelled');
  }, 60_000);

  test('a replica that shuts down hands its running job back at the end of a step; another goes on from there', async () => {
    const prefix = newCluster();
    const leaving = await replica('leaving', { prefix });
    const job = await leaving.submit(parseJobSpec(tinyJob({ steps: 12, checkpoint_every: 100 })));
    await until(leaving, job.id, (j) => j.step >= 2);
    await leaving.shutdown(10_000);
    const handedBack = (await (await replica('watcher', { prefix, slots: 0 })).get(job.id))!;
    // Queued again, with a checkpoint of the step it reached, and no end in its history.
    expect(handedBack).toMatchObject({ status: 'queued', checkpoint: `jobs/${job.id}/step-${String(handedBack.step).padStart(6, '0')}` });
    const staying = await replica('staying', { prefix });
    const done = await until(staying, job.id, ended);
    expect(done).toMatchObject({ status: 'succeeded', step: 12 });
    const events = await staying.events(job.id);
    expect(events.filter((e) => e.type === 'done')).toHaveLength(1);
    const steps = events.filter((e) => e.type === 'progress').map((e) => e.data.step);
    expect(steps).toEqual(Array.from({ length: 12 }, (_, i) => i + 1));
  }, 60_000);

  test('activate: true loads the checkpoint on every replica, and on one that connects later', async () => {
    const prefix = newCluster();
    const loaded: Record<string, string[]> = { runner: [], other: [], late: [] };
    const onActivate = (name: string) => async (dir: string) => loaded[name]!.push(dir);
    const runner = await replica('runner', { prefix, onActivate: onActivate('runner') });
    await replica('other', { prefix, slots: 0, onActivate: onActivate('other') });
    const job = await runner.submit(parseJobSpec({ ...tinyJob({ steps: 2 }), activate: true }));
    const done = await until(runner, job.id, ended);
    expect(done.status).toBe('succeeded');
    expect((await runner.events(job.id)).at(-1)!.data).toMatchObject({ status: 'succeeded', activated: true });
    const checkpoint = `${dataDir}/${done.checkpoint}`;
    for (let i = 0; i < 100 && loaded.other!.length === 0; i++) await Bun.sleep(20);
    expect(loaded).toMatchObject({ runner: [checkpoint], other: [checkpoint] });
    await replica('late', { prefix, slots: 0, onActivate: onActivate('late') });
    for (let i = 0; i < 100 && loaded.late!.length === 0; i++) await Bun.sleep(20);
    expect(loaded.late).toEqual([checkpoint]);
  }, 60_000);

  test('two jobs that end together on two replicas: every replica ends on the same model, the cluster\'s active one', async () => {
    const prefix = newCluster();
    const served: Record<string, string[]> = { a: [], b: [] };
    // Loads that take a while, so that each replica's activation overlaps the other's.
    const onActivate = (name: string) => async (dir: string) => {
      await Bun.sleep(300);
      served[name]!.push(dir);
    };
    const a = await replica('a', { prefix, onActivate: onActivate('a') });
    const b = await replica('b', { prefix, onActivate: onActivate('b') });
    const jobs = await Promise.all([a, b].map((queue) => queue.submit(parseJobSpec({ ...tinyJob({ steps: 2 }), activate: true }))));
    for (const job of jobs) expect((await until(a, job.id, ended)).status).toBe('succeeded');
    const client = new Redis(redis.url);
    try {
      const active = async () => `${dataDir}/${await client.get(`${prefix}:active-checkpoint`)}`;
      for (let i = 0; i < 100 && !(served.a!.at(-1) === (await active()) && served.b!.at(-1) === (await active())); i++) await Bun.sleep(50);
      expect([served.a!.at(-1), served.b!.at(-1)]).toEqual([await active(), await active()]);
    } finally {
      client.disconnect();
    }
  }, 60_000);

  test('a cluster whose active checkpoint was recorded without a version (an earlier release) still follows the next activation', async () => {
    const prefix = newCluster();
    const client = new Redis(redis.url);
    await client.set(`${prefix}:active-checkpoint`, 'old/checkpoint');
    const loaded: Record<string, string[]> = { runner: [], other: [] };
    const onActivate = (name: string) => async (dir: string) => void loaded[name]!.push(dir);
    const other = await replica('other', { prefix, slots: 0, onActivate: onActivate('other') });
    await replica('runner', { prefix, onActivate: onActivate('runner') });
    const job = await other.submit(parseJobSpec({ ...tinyJob({ steps: 2 }), activate: true }));
    const done = await until(other, job.id, ended);
    const checkpoint = `${dataDir}/${done.checkpoint}`;
    for (let i = 0; i < 100 && loaded.other!.at(-1) !== checkpoint; i++) await Bun.sleep(20);
    client.disconnect();
    expect(loaded).toEqual({ runner: [`${dataDir}/old/checkpoint`, checkpoint], other: [`${dataDir}/old/checkpoint`, checkpoint] });
  }, 60_000);

  test('a replica that reconnects loads the checkpoint the cluster records, though a replica of an earlier release changed it without a new version', async () => {
    const prefix = newCluster();
    const client = new Redis(redis.url);
    await client.mset(`${prefix}:active-checkpoint`, 'w/checkpoint', `${prefix}:active-version`, '3');
    const loaded: string[] = [];
    const queue = await replica('c', { prefix, slots: 0, onActivate: async (dir) => void loaded.push(dir) });
    for (let i = 0; i < 100 && loaded.length < 1; i++) await Bun.sleep(20);
    await client.set(`${prefix}:active-checkpoint`, 'z/checkpoint');
    // Away from Redis while the message went by: it comes back and reads the record.
    (queue as unknown as { redis: Redis }).redis.disconnect(true);
    for (let i = 0; i < 100 && loaded.length < 2; i++) await Bun.sleep(20);
    client.disconnect();
    expect(loaded).toEqual([`${dataDir}/w/checkpoint`, `${dataDir}/z/checkpoint`]);
  }, 60_000);

  test('a job whose checkpoint is being activated can no longer be cancelled, from any replica', async () => {
    const prefix = newCluster();
    const activating = Promise.withResolvers<void>();
    const loaded = Promise.withResolvers<void>();
    const runner = await replica('runner', { prefix, onActivate: async () => {
      activating.resolve();
      await loaded.promise;
    } });
    const other = await replica('other', { prefix, slots: 0 });
    const job = await runner.submit(parseJobSpec({ ...tinyJob({ steps: 1 }), activate: true }));
    await activating.promise;
    for (const replica of [other, runner]) {
      await expect(replica.cancel(job.id)).rejects.toThrow(new JobStateError(`job ${job.id} has finished training and its checkpoint is being activated; it can no longer be cancelled`));
    }
    loaded.resolve();
    expect((await until(other, job.id, ended)).status).toBe('succeeded');
    expect((await other.events(job.id)).at(-1)!.data).toMatchObject({ status: 'succeeded', activated: true });
  }, 60_000);

  test('a cancel that comes during the last step and the activation: one of them wins, never a cancel accepted and ignored', async () => {
    const prefix = newCluster();
    const loaded: string[] = [];
    const runner = await replica('runner', { prefix, onActivate: async (dir) => void loaded.push(dir) });
    const job = await runner.submit(parseJobSpec({ ...tinyJob({ steps: 2, eval_every: 1 }), activate: true }));
    let answer: Promise<string> | undefined;
    // The last step's evaluation comes after the loop last looked for a cancel.
    const unsubscribe = runner.subscribe(job.id, (event) => {
      if (event?.type === 'eval' && event.data.step === 2) answer = runner.cancel(job.id).then(() => 'accepted', (error: Error) => error.message);
    });
    const done = await until(runner, job.id, ended);
    unsubscribe();
    if ((await answer) === 'accepted') {
      expect(done).toMatchObject({ status: 'cancelled', step: 2 });
      expect(loaded).toEqual([]);
    } else {
      expect(await answer).toBe(`job ${job.id} has finished training and its checkpoint is being activated; it can no longer be cancelled`);
      expect(done.status).toBe('succeeded');
      expect(loaded).toHaveLength(1);
    }
  }, 60_000);

  test('a replica whose shutdown runs past its timeout leaves its job to another replica, not running for ever', async () => {
    const prefix = newCluster();
    const leaving = await replica('leaving', { prefix });
    const job = await leaving.submit(parseJobSpec(tinyJob({ steps: 500, checkpoint_every: 1 })));
    const first = await until(leaving, job.id, (j) => j.step >= 2);
    await leaving.shutdown(1);
    const next = await replica('next', { prefix });
    // Its run there: started anew, past the step the leaving replica reached.
    const taken = await until(next, job.id, (j) => j.started_at !== first.started_at && j.step > first.step);
    expect(taken.status).toBe('running');
    await next.cancel(job.id);
    expect((await until(next, job.id, ended)).status).toBe('cancelled');
  }, 60_000);

  test('a checkpoint that cannot be activated: the job succeeds, and its done event and record carry the activation_failed error', async () => {
    const prefix = newCluster();
    const runner = await replica('runner', { prefix, onActivate: async () => Promise.reject(new Error('another model is being loaded')) });
    const job = await runner.submit(parseJobSpec({ ...tinyJob({ steps: 1 }), activate: true }));
    const done = await until(runner, job.id, ended);
    const error = { code: 'activation_failed', message: 'the job succeeded but its checkpoint could not be activated: another model is being loaded' };
    expect(done).toMatchObject({ status: 'succeeded', error: error.message });
    const [failure, end] = (await runner.events(job.id)).slice(-2);
    expect(failure).toMatchObject({ type: 'error', data: { error } });
    expect(end).toMatchObject({ type: 'done', data: { status: 'succeeded', activated: false, error } });
  }, 60_000);

  test('a takeover resumes from the checkpoint the record names once the taker runs the job, though the old runner recorded a newer one and pruned the one first read', async () => {
    const prefix = newCluster();
    const runner = await replica('runner', { prefix, lockMs: 5000 });
    const job = await runner.submit(parseJobSpec(tinyJob({ steps: 100_000, checkpoint_every: 1, keep_checkpoints: 1 })));
    const first = await until(runner, job.id, (j) => j.checkpoint !== null);
    const taker = await replica('taker', { prefix, slots: 0 });
    // The taker's first read of the record is answered only once the runner has recorded past it.
    const store = (taker as unknown as { store: { get(id: string): Promise<{ checkpoint: string | null; runs: number } | null> } }).store;
    const read = store.get.bind(store);
    let held = false;
    store.get = async (id) => {
      const record = await read(id);
      if (!held && record?.checkpoint) {
        held = true;
        await until(runner, id, (j) => j.checkpoint !== record.checkpoint && !existsSync(join(dataDir, record.checkpoint!)));
      }
      return record;
    };
    // What BullMQ does once the runner's lock lapses: hands the job to another replica.
    const runs = (await read(job.id))!.runs;
    const process = (taker as unknown as { process(bullJob: unknown, token: string): Promise<void> }).process;
    void process.call(taker, { data: { id: job.id }, id: `${job.id}-${runs}` }, 'stalled').catch(() => {});
    const resumed = await until(taker, job.id, (j) => j.started_at !== first.started_at && checkpointStep(j.checkpoint!) > checkpointStep(first.checkpoint!) + 2);
    expect(resumed).toMatchObject({ status: 'running', error: null });
    await taker.cancel(job.id);
  }, 60_000);

  test('without Redis the job calls fail as unavailable; a restarted Redis has kept every job and event', async () => {
    const prefix = newCluster();
    const a = await replica('a', { prefix, slots: 0 });
    const job = await a.submit(parseJobSpec(tinyJob({ steps: 1 })));
    await a.cancel(job.id);
    const before = { job: await a.get(job.id), events: await a.events(job.id) };
    await redis.kill();
    for (let i = 0; i < 100 && a.state().reachable; i++) await Bun.sleep(20);
    expect(a.state()).toEqual({ queue: 'redis', reachable: false });
    const calls: (() => Promise<unknown>)[] = [() => a.get(job.id), () => a.list({ limit: 10 }), () => a.submit(parseJobSpec(tinyJob())), () => a.cancel(job.id)];
    for (const call of calls) {
      await expect(Promise.resolve().then(call)).rejects.toBeInstanceOf(QueueUnavailableError);
    }
    await redis.restart();
    for (let i = 0; i < 250 && !a.state().reachable; i++) await Bun.sleep(20);
    expect(a.state().reachable).toBe(true);
    expect({ job: await a.get(job.id), events: await a.events(job.id) }).toEqual(before);
  }, 30_000);

  test('a job that trains on while Redis is away keeps the checkpoint its record names, and a replica takes it over from there', async () => {
    const prefix = newCluster();
    const runner = await replica('runner', { prefix });
    const job = await runner.submit(parseJobSpec(tinyJob({ steps: 100_000, checkpoint_every: 1, keep_checkpoints: 1 })));
    const first = await until(runner, job.id, (j) => j.step >= 3 && j.checkpoint !== null);
    const recorded = first.checkpoint!;
    await redis.kill();
    // The run goes on writing checkpoints whose events cannot be recorded: none is pruned, so the one
    // the record names (this one, or one the run recorded just before Redis went) stays.
    const folder = join(dataDir, 'jobs', job.id);
    for (let i = 0; i < 400 && Math.max(...checkpointFolders(await readdir(folder)).map(checkpointStep)) < checkpointStep(recorded) + 3; i++) await Bun.sleep(25);
    expect(checkpointFolders(await readdir(folder)).map(checkpointStep).filter((step) => step > checkpointStep(recorded)).length).toBeGreaterThanOrEqual(3);
    await redis.restart();
    for (let i = 0; i < 250 && !runner.state().reachable; i++) await Bun.sleep(20);
    await runner.close(); // as if it died
    const taker = await replica('taker', { prefix });
    // Its own run, started anew: past the recorded checkpoint, and past one of its own.
    const resumed = await until(taker, job.id, (j) => j.started_at !== first.started_at && j.checkpoint !== null && checkpointStep(j.checkpoint) > checkpointStep(recorded));
    expect(resumed).toMatchObject({ status: 'running', error: null });
    await taker.cancel(job.id);
    expect((await until(taker, job.id, ended)).status).toBe('cancelled');
  }, 60_000);
});

describe('the settings of replicas', () => {
  test('REDIS_URL turns them on; without it they are a startup error, and a URL that is not redis:// is refused', () => {
    expect(loadServerConfig({ PORT: '8080' })).toMatchObject({ redisUrl: undefined, trainingSlots: 1, replicaId: `${hostname()}:8080` });
    expect(loadServerConfig({ REDIS_URL: 'redis://queue:6379', TRAINING_SLOTS: '0', REPLICA_ID: 'web-1', TRAINING_LOCK_MS: '5000', TRAINING_MAX_ATTEMPTS: '2' }))
      .toMatchObject({ redisUrl: 'redis://queue:6379', trainingSlots: 0, replicaId: 'web-1', trainingLockMs: 5000, trainingMaxAttempts: 2 });
    expect(() => loadServerConfig({ TRAINING_SLOTS: '2' })).toThrow('TRAINING_SLOTS needs REDIS_URL');
    // Not echoed: a URL that did not parse may hold a password.
    expect(() => loadServerConfig({ REDIS_URL: 'admin:hunter2@queue:6379' })).toThrow('REDIS_URL must be a redis:// or rediss:// URL, got a value that is not one');
    expect(() => loadServerConfig({ REDIS_URL: 'redis://:hunter2@queue:notaport' })).toThrow('REDIS_URL must be a redis:// or rediss:// URL, got a value that is not one');
    expect(() => loadServerConfig({ REDIS_URL: 'redis://queue', TRAINING_SLOTS: '-1' })).toThrow('TRAINING_SLOTS must be a whole number in [0, 64]');
  });
});
