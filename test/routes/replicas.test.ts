/**
 * Replicas on one Redis and one DATA_DIR, as real server processes (`bun src/http/server.ts`), so that one
 * can be killed with SIGKILL: A runs jobs, B only serves (TRAINING_SLOTS=0) and answers for every
 * job; C joins later to take over. A job posted to A is followed from B; a cancel sent to B stops it
 * on A; activation reaches every replica; A killed in the middle of a job, C finishes it from A's
 * last checkpoint with the weights of an uninterrupted run (the takeover time is printed); and a
 * lost Redis makes B's training routes 503 while its captions go on.
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Job } from '../../src/jobs/store.ts';
import { REDIS_SERVER, startRedis, type TestRedis } from '../redis.ts';
import { tempDir, tinyJob } from '../src/training/helpers.ts';
import { chunks, form, imageBlob, jpeg, makeCheckpoint, sse } from './helpers.ts';

const ROOT = join(import.meta.dir, '..', '..');

interface Replica {
  name: string;
  url: string;
  process: Bun.Subprocess<'ignore', 'pipe', 'inherit'>;
  /** What it printed so far. */
  output: () => string;
}

describe.skipIf(!REDIS_SERVER)('replicas on one Redis and one DATA_DIR', () => {
  let redis: TestRedis;
  let dataDir: string;
  let modelDir: string;
  const replicas: Replica[] = [];
  let a: Replica;
  let b: Replica;

  /** `bun src/http/server.ts` with the cluster's settings; resolves once it listens. */
  async function startReplica(name: string, slots: number): Promise<Replica> {
    const child = Bun.spawn([process.execPath, 'src/http/server.ts'], {
      cwd: ROOT,
      env: {
        ...process.env,
        PORT: '0',
        HOST: '127.0.0.1',
        MODEL_DIR: modelDir,
        DATA_DIR: dataDir,
        INFERENCE_WORKERS: '1',
        REDIS_URL: redis.url,
        REPLICA_ID: name,
        TRAINING_SLOTS: String(slots),
        TRAINING_LOCK_MS: '1000',
      },
      stdin: 'ignore',
      stdout: 'pipe',
      stderr: 'inherit',
    });
    let output = '';
    const listening = new Promise<string>((resolve, reject) => {
      void (async () => {
        const decoder = new TextDecoder();
        for await (const chunk of chunks(child.stdout)) {
          output += decoder.decode(chunk, { stream: true });
          const url = /listening on (http:\/\/\S+)/.exec(output)?.[1];
          if (url) resolve(url);
        }
        reject(new Error(`replica ${name} exited before it listened:\n${output}`));
      })();
    });
    const replica = { name, url: await listening, process: child, output: () => output };
    replicas.push(replica);
    return replica;
  }

  beforeAll(async () => {
    redis = await startRedis();
    dataDir = await tempDir('titans-replicas-');
    modelDir = await makeCheckpoint();
    [a, b] = await Promise.all([startReplica('a', 1), startReplica('b', 0)]);
  }, 60_000);

  afterAll(async () => {
    for (const replica of replicas) replica.process.kill('SIGKILL');
    await Promise.all(replicas.map((replica) => replica.process.exited));
    await redis.kill();
  });

  async function post(replica: Replica, body: unknown): Promise<Job> {
    const response = await fetch(`${replica.url}/v1/training/jobs`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    expect(response.status).toBe(202);
    return (await response.json()) as Job;
  }

  async function job(replica: Replica, id: string): Promise<Job> {
    return (await (await fetch(`${replica.url}/v1/training/jobs/${id}`)).json()) as Job;
  }

  async function until(replica: Replica, id: string, done: (job: Job) => boolean, timeoutMs = 60_000): Promise<Job> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const current = await job(replica, id);
      if (done(current)) return current;
      if (Date.now() > deadline) throw new Error(`job ${id} still ${current.status} at step ${current.step}`);
      await Bun.sleep(25);
    }
  }

  type Event = { event: string; data: any; at: number };

  /** Follows the job's events on `replica` until the stream ends; `onEvent` sees each as it comes. */
  async function follow(replica: Replica, id: string, onEvent: (event: Event) => void = () => {}): Promise<Event[]> {
    const events: Event[] = [];
    for await (const item of sse(await fetch(`${replica.url}/v1/training/jobs/${id}/events`))) {
      if (item.type !== 'event') continue;
      const event = { event: item.event, data: item.data, at: Date.now() };
      events.push(event);
      onEvent(event);
    }
    return events;
  }

  async function servedCheckpoint(replica: Replica): Promise<string> {
    return ((await (await fetch(`${replica.url}/v1/models`)).json()) as { data: { checkpoint: string }[] }).data[0]!.checkpoint;
  }

  test('a job posted to A is followed from B; activate: true reaches both, and GET /v1/models on each says so', async () => {
    const { id } = await post(a, { ...tinyJob({ steps: 2 }), activate: true });
    const events = await follow(b, id);
    expect(events.map((e) => e.event)).toEqual(['progress', 'progress', 'eval', 'checkpoint', 'done']);
    expect(events.at(-1)!.data).toMatchObject({ status: 'succeeded', step: 2, activated: true });
    const done = await job(b, id);
    expect(done).toEqual(await job(a, id));
    expect(await servedCheckpoint(a)).toBe(done.checkpoint!);
    const deadline = Date.now() + 10_000;
    while ((await servedCheckpoint(b)) !== done.checkpoint && Date.now() < deadline) await Bun.sleep(25);
    expect(await servedCheckpoint(b)).toBe(done.checkpoint!);
    expect(b.output()).toContain(`activated ${done.checkpoint}`);
  }, 60_000);

  test('a cancel sent to B stops the job running on A within a step', async () => {
    // Steps of a larger batch: long beside the time a step's record takes to reach Redis.
    const { id } = await post(b, tinyJob({ steps: 2000, batch_size: 16 }));
    const following = follow(b, id);
    await until(b, id, (j) => j.step >= 1);
    const response = await fetch(`${b.url}/v1/training/jobs/${id}/cancel`, { method: 'POST' });
    expect(response.status).toBe(202);
    const asked = ((await response.json()) as Job).step;
    const events = await following;
    const end = events.at(-1)!;
    expect(end).toMatchObject({ event: 'done', data: { status: 'cancelled' } });
    expect(end.data.step).toBeLessThanOrEqual(asked + 1);
    expect(end.data.checkpoint).toBe(join('jobs', id, `step-${String(end.data.step).padStart(6, '0')}`));
  }, 60_000);

  test('A killed with SIGKILL mid-job: C takes the job over from A\'s last checkpoint and ends it with the weights of an uninterrupted run', async () => {
    const spec = tinyJob({ steps: 24, checkpoint_every: 4 });
    const { id } = await post(a, spec);
    await until(b, id, (j) => j.status === 'running');
    // C joins once A holds the job: it takes only what A leaves behind.
    const c = await startReplica('c', 1);
    let killedAt = 0;
    let checkpointAtKill: Job | undefined;
    let killing: Promise<void> | undefined;
    const events = await follow(b, id, (event) => {
      if (event.event !== 'checkpoint' || killing) return;
      killing = (async () => {
        a.process.kill('SIGKILL');
        await a.process.exited;
        killedAt = Date.now();
        checkpointAtKill = await job(b, id);
      })();
    });
    await killing;
    expect(events.at(-1)).toMatchObject({ event: 'done', data: { status: 'succeeded', step: 24 } });
    expect(events.filter((e) => e.event === 'done')).toHaveLength(1);
    // The taker's first step is the one after A's last checkpoint.
    const lastStep = Number(/step-(\d+)$/.exec(checkpointAtKill!.checkpoint!)![1]);
    const afterKill = events.filter((e) => e.at > killedAt && e.event === 'progress');
    expect(afterKill[0]!.data.step).toBe(lastStep + 1);
    const done = await job(b, id);
    const takenAt = Date.parse(done.started_at!);
    console.log(`takeover after kill -9: C's run started ${takenAt - killedAt} ms after A died, its first step arrived at ${afterKill[0]!.at - killedAt} ms (TRAINING_LOCK_MS=1000; resumed at step ${lastStep + 1})`);
    expect(c.output()).toContain(`taking over training job ${id} from a, from its checkpoint at step`);

    const reference = await post(c, spec);
    const uninterrupted = await until(c, reference.id, (j) => j.status === 'succeeded');
    for (const file of ['model.safetensors', 'optimizer.safetensors']) {
      const [taken, straight] = await Promise.all([readFile(join(dataDir, done.checkpoint!, file)), readFile(join(dataDir, uninterrupted.checkpoint!, file))]);
      expect(Buffer.compare(taken, straight)).toBe(0);
    }
  }, 120_000);

  test('without Redis, B\'s training routes answer 503 and its captions go on; /readyz says why; back, the jobs are all there', async () => {
    const before = await (await fetch(`${b.url}/v1/training/jobs`)).json();
    expect(await (await fetch(`${b.url}/readyz`)).json()).toEqual({ ready: true, replica: 'b', training: { queue: 'redis', reachable: true } });
    expect(await (await fetch(`${b.url}/metrics`)).text()).toContain('http_requests_total{route="/readyz",method="GET",status="200",replica="b"}');
    await redis.kill();
    const deadline = Date.now() + 10_000;
    let ready: any;
    do {
      await Bun.sleep(25);
      ready = await (await fetch(`${b.url}/readyz`)).json();
    } while (ready.training.reachable && Date.now() < deadline);
    expect(ready).toEqual({ ready: true, replica: 'b', training: { queue: 'redis', reachable: false } });
    const refused = await fetch(`${b.url}/v1/training/jobs`);
    expect(refused.status).toBe(503);
    expect(((await refused.json()) as any).error).toMatchObject({ code: 'not_ready', message: expect.stringContaining('the training job queue (Redis) cannot be reached') });
    const caption = await fetch(`${b.url}/v1/captions`, { method: 'POST', headers: { accept: 'application/json' }, body: form({ image: imageBlob(await jpeg()), max_tokens: '3' }) });
    expect(caption.status).toBe(200);
    expect(((await caption.json()) as { text: string }).text).toEqual(expect.any(String));

    await redis.restart();
    const back = Date.now() + 10_000;
    let list: Response;
    do {
      await Bun.sleep(50);
      list = await fetch(`${b.url}/v1/training/jobs`);
    } while (list.status !== 200 && Date.now() < back);
    expect(await list.json()).toEqual(before);
  }, 60_000);
});
