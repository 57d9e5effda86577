/**
 * GET /v1/training/jobs/:id/events through the real server: the stream of a job that is not running
 * ends with exactly one terminal `done` event (succeeded, failed, cancelled or interrupted, with the
 * reason), live or replayed, whatever Last-Event-ID says (issue 20, item 4); and an `event: error`
 * has the one shape of every error of the API (item 11).
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createParser } from 'eventsource-parser';
import { Hono } from 'hono';
import { trainingRouter } from '../../routes/training.ts';
import { JobStore, type Job, type JobEvent } from '../../src/jobs/store.ts';
import type { JobListener, TrainingJobs } from '../../src/jobs/training-jobs.ts';
import type { RunningServer } from '../../src/http/server.ts';
import { parseJobSpec } from '../../src/training/spec.ts';
import { tempDir, tinyJob } from '../src/training/helpers.ts';
import { makeCheckpoint, startTestServer } from './helpers.ts';

let server: RunningServer;
let dataDir: string;
/** A job that a process which died left `running`, made before the server opened its job store. */
let orphan: string;

beforeAll(async () => {
  dataDir = await tempDir('titans-events-');
  const store = new JobStore(join(dataDir, 'jobs.db'));
  orphan = store.create(parseJobSpec(tinyJob({ steps: 10 }))).id;
  store.update(orphan, { status: 'running', step: 2 });
  store.appendEvent(orphan, 'progress', { step: 1 });
  store.appendEvent(orphan, 'progress', { step: 2 });
  store.close();
  await writeFile(join(dataDir, 'broken.json'), '[{"image": 1}]');
  server = await startTestServer(await makeCheckpoint(), { INFERENCE_WORKERS: '1', DATA_DIR: dataDir });
});

afterAll(async () => {
  await server.shutdown();
});

type Event = { event: string; id: string; data: any };

async function events(id: string, lastEventId?: number): Promise<Event[]> {
  const response = await fetch(`${server.url}/v1/training/jobs/${id}/events`, { headers: lastEventId === undefined ? {} : { 'last-event-id': String(lastEventId) } });
  expect(response.headers.get('content-type')).toContain('text/event-stream');
  const list: Event[] = [];
  const parser = createParser({ onEvent: (e) => list.push({ event: e.event ?? 'message', id: e.id ?? '', data: JSON.parse(e.data) }) });
  parser.feed(await response.text());
  return list;
}

async function submit(body: unknown): Promise<string> {
  const response = await fetch(`${server.url}/v1/training/jobs`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  expect(response.status).toBe(202);
  return ((await response.json()) as Job).id;
}

/** The stream ends with its one terminal event, of this status. */
function expectOneEnd(list: Event[], status: string): Event {
  expect(list.filter((e) => e.event === 'done')).toHaveLength(1);
  const end = list.at(-1)!;
  expect(end.event).toBe('done');
  expect(end.data.status).toBe(status);
  if (status !== 'succeeded') expect(end.data.reason).toEqual(expect.any(String));
  return end;
}

describe('every stream of a job that is not running ends with one terminal event', () => {
  test('a job interrupted by a process that died: replayed, and after its last event id', async () => {
    const replay = await events(orphan);
    expect(replay.map((e) => e.event)).toEqual(['progress', 'progress', 'done']);
    const end = expectOneEnd(replay, 'interrupted');
    expect(end.data).toMatchObject({ step: 2, reason: expect.stringContaining('the server stopped while the job was running') });
    // A client that already saw every event, even the end, is told the end again rather than left hanging.
    for (const last of [2, Number(end.id), Number(end.id) + 5]) expect(await events(orphan, last)).toEqual([end]);
  });

  test('a failed job: error, then done with the same error object', async () => {
    const id = await submit(tinyJob({}, { type: 'annotations', annotations_file: 'broken.json' }));
    const live = await events(id);
    const end = expectOneEnd(live, 'failed');
    const error = live.at(-2)!;
    expect(error.event).toBe('error');
    // Exactly the body of an HTTP error: { error: { code, message } }, nothing beside it.
    expect(Object.keys(error.data)).toEqual(['error']);
    expect(Object.keys(error.data.error).sort()).toEqual(['code', 'message']);
    expect(error.data.error.code).toBe('training_failed');
    expect(end.data.error).toEqual(error.data.error);
    expect(end.data.reason).toBe(error.data.error.message);
    expect(await events(id)).toEqual(live);
  }, 30_000);

  test('a cancelled job ends at the step reached, with a checkpoint of it; resumed, its stream has one end again', async () => {
    const id = await submit(tinyJob({ steps: 12 }));
    const following = events(id);
    for (let job: Job | undefined; !job || job.step < 2; await Bun.sleep(20)) {
      job = (await (await fetch(`${server.url}/v1/training/jobs/${id}`)).json()) as Job;
    }
    expect((await fetch(`${server.url}/v1/training/jobs/${id}/cancel`, { method: 'POST' })).status).toBe(202);
    const live = await following;
    const cancelled = expectOneEnd(live, 'cancelled');
    const lastProgress = live.filter((e) => e.event === 'progress').at(-1)!.data.step;
    expect(cancelled.data).toMatchObject({ step: lastProgress, checkpoint: join('jobs', id, `step-${String(lastProgress).padStart(6, '0')}`) });

    expect((await fetch(`${server.url}/v1/training/jobs/${id}/resume`, { method: 'POST' })).status).toBe(202);
    const resumed = await events(id);
    expectOneEnd(resumed, 'succeeded');
    expect(resumed.filter((e) => e.event === 'progress').map((e) => e.data.step)).toEqual(Array.from({ length: 12 }, (_, i) => i + 1));
    // From the old end on: the rest of the run, and its own end.
    const after = await events(id, Number(cancelled.id));
    expect(after[0]!.data.step).toBe(lastProgress + 1);
    expectOneEnd(after, 'succeeded');
  }, 60_000);
});

describe('the job systems of replicas', () => {
  // Replicas read a job's status and its history in two round trips to Redis; the runner, another
  // replica, may record the job's last events between them.
  function oneStepJob({ endsWhileStreamOpens }: { endsWhileStreamOpens: boolean }): TrainingJobs {
    const at = new Date().toISOString();
    const history: JobEvent[] = [];
    let status: Job['status'] = 'running';
    const listeners = new Set<JobListener>();
    const record = (type: JobEvent['type'], data: Record<string, unknown>) => {
      const event = { seq: history.length + 1, type, data, at };
      history.push(event);
      for (const listener of listeners) listener(event);
    };
    const end = () => {
      record('checkpoint', { step: 1, path: 'jobs/one/step-000001' });
      status = 'succeeded';
      record('done', { status: 'succeeded', step: 1 });
    };
    record('progress', { step: 1 });
    if (!endsWhileStreamOpens) end();
    let reads = 0;
    // The stream's first read is the route's second: the job ends while its reply travels back.
    const reply = <T>(value: T): T => {
      if (++reads === 2 && endsWhileStreamOpens) queueMicrotask(end);
      return value;
    };
    return {
      get: async (id: string) => reply({ id, status } as Job),
      // As Redis reads a list: from index `after`, where a negative index counts from the end.
      events: async (_id: string, after = 0) => reply(history.slice(after)),
      subscribe: (_id: string, listener: JobListener) => {
        listeners.add(listener);
        return () => listeners.delete(listener);
      },
    } as unknown as TrainingJobs;
  }

  async function follow(jobs: TrainingJobs, headers: Record<string, string> = {}): Promise<string[]> {
    const app = new Hono().route('/v1/training', trainingRouter(jobs, { apiKey: undefined, heartbeatMs: 60_000 }));
    const seen: string[] = [];
    createParser({ onEvent: (e) => seen.push(`${e.id} ${e.event}`) }).feed(await (await app.request('/v1/training/jobs/one/events', { headers })).text());
    return seen;
  }

  test('the follower of a job that ends while its stream opens still gets every event, in order, then the end', async () => {
    expect(await follow(oneStepJob({ endsWhileStreamOpens: true }))).toEqual(['1 progress', '2 checkpoint', '3 done']);
  });

  test('HEAD answers the headers and follows nothing: no subscription or heartbeat is left behind', async () => {
    const following = new Set<JobListener>();
    const running = {
      get: async (id: string) => ({ id, status: 'running' }) as Job,
      events: async () => [],
      subscribe: (_id: string, listener: JobListener) => {
        following.add(listener);
        return () => following.delete(listener);
      },
    } as unknown as TrainingJobs;
    const app = new Hono().route('/v1/training', trainingRouter(running, { apiKey: undefined, heartbeatMs: 10 }));
    const response = await app.request('/v1/training/jobs/one/events', { method: 'HEAD' });
    expect([response.status, response.headers.get('content-type')]).toEqual([200, 'text/event-stream']);
    await Bun.sleep(50);
    expect(following.size).toBe(0);
  });

  test('a Last-Event-ID below 0 replays from the start', async () => {
    expect(await follow(oneStepJob({ endsWhileStreamOpens: false }), { 'last-event-id': '-1' })).toEqual(['1 progress', '2 checkpoint', '3 done']);
  });
});
