import { afterAll, describe, expect, test } from 'bun:test';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createParser } from 'eventsource-parser';
import { Hono } from 'hono';
import sharp from 'sharp';
import { trainingRouter } from '../../routes/training.ts';
import { loadServerConfig } from '../../src/http/settings.ts';
import { toApiError } from '../../src/http/errors.ts';
import { TrainingScheduler } from '../../src/jobs/scheduler.ts';
import type { Job } from '../../src/jobs/store.ts';
import { loadCheckpoint } from '../../src/multimodal-mac.ts';
import { startServer } from '../../src/http/server.ts';
import { tempDir, tinyJob } from '../src/training/helpers.ts';

const schedulers: TrainingScheduler[] = [];
afterAll(() => schedulers.forEach((s) => s.close()));

/** The training router alone, with the app's error shape, over a scheduler on `dataDir`. */
function trainingApp(dataDir: string, apiKey?: string) {
  const scheduler = new TrainingScheduler({ dataDir });
  schedulers.push(scheduler);
  const app = new Hono();
  app.route('/v1/training', trainingRouter(scheduler, { apiKey, heartbeatMs: 60_000 }));
  app.onError((error, c) => {
    const apiError = toApiError(error);
    return c.json(apiError.toJSON(), apiError.status);
  });
  const request = (path: string, init: RequestInit = {}) => app.request(`/v1/training${path}`, init);
  const post = (path: string, body: unknown, headers: Record<string, string> = {}) =>
    request(path, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) });
  return { scheduler, request, post };
}

type App = ReturnType<typeof trainingApp>;

async function waitFor(app: App, id: string, done: (job: Job) => boolean, timeoutMs = 60_000): Promise<Job> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const job = (await (await app.request(`/jobs/${id}`)).json()) as Job;
    if (done(job)) return job;
    if (Date.now() > deadline) throw new Error(`job ${id} still ${job.status} at step ${job.step}`);
    await Bun.sleep(50);
  }
}

const finished = (job: Job) => !['queued', 'running'].includes(job.status);

/** Every event of an SSE response until the server closes it. */
async function readEvents(response: Response): Promise<{ event: string; id: string; data: any }[]> {
  const events: { event: string; id: string; data: any }[] = [];
  const parser = createParser({ onEvent: (e) => events.push({ event: e.event ?? 'message', id: e.id ?? '', data: JSON.parse(e.data) }) });
  const decoder = new TextDecoder();
  const reader = response.body!.getReader();
  for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) parser.feed(decoder.decode(chunk.value, { stream: true }));
  return events;
}

describe('POST /v1/training/jobs', async () => {
  const dataDir = await tempDir();
  const app = trainingApp(dataDir);

  test('a tiny job runs to success; its checkpoint loads and generates', async () => {
    const response = await app.post('/jobs', tinyJob({ steps: 4, checkpoint_every: 2, eval_every: 2 }));
    expect(response.status).toBe(202);
    const created = (await response.json()) as Job;
    expect(response.headers.get('location')).toBe(`/v1/training/jobs/${created.id}`);
    expect(['queued', 'running']).toContain(created.status);
    expect(created.steps).toBe(4);

    const job = await waitFor(app, created.id, finished);
    expect(job).toMatchObject({ status: 'succeeded', step: 4, steps: 4, error: null });
    expect(job.loss).toBeGreaterThan(0);
    expect(job.eval_loss).toBeGreaterThan(0);
    expect(job.samples_per_sec).toBeGreaterThan(0);
    // Relative to DATA_DIR: the API shows no absolute server path.
    expect(job.checkpoint).toBe(join('jobs', job.id, 'step-000004'));

    const model = await loadCheckpoint(join(dataDir, job.checkpoint!));
    const image = await model.imageProcessor.preprocess(await sharp({ create: { width: 20, height: 20, channels: 3, background: 'red' } }).png().toBuffer());
    const prompt = [...model.tokenizer.encode('This is an image of '), model.imageTokenId];
    let tokens = 0;
    for await (const _ of model.generate(prompt, { images: [image], imagePositions: [prompt.length - 1], maxLength: 5, seed: 1 })) tokens++;
    expect(tokens).toBeGreaterThan(0);
    image.dispose();
    model.dispose();

    const list = (await (await app.request('/jobs')).json()) as { data: Job[] };
    expect(list.data.map((j) => j.id)).toContain(job.id);
  }, 60_000);

  test('events follow a running job live, in order, and replay the same history afterwards', async () => {
    const created = (await (await app.post('/jobs', tinyJob({ steps: 3, checkpoint_every: 2, eval_every: 2 }))).json()) as Job;
    const live = await readEvents(await app.request(`/jobs/${created.id}/events`));
    const types = live.map((e) => e.event);
    expect(types).toEqual(['progress', 'progress', 'eval', 'checkpoint', 'progress', 'eval', 'checkpoint', 'done']);
    expect(live.map((e) => Number(e.id))).toEqual(live.map((_, i) => i + 1));
    expect(live.filter((e) => e.event === 'progress').map((e) => e.data.step)).toEqual([1, 2, 3]);
    expect(live[0]!.data).toMatchObject({ steps: 3 });
    expect(live[0]!.data).toContainKeys(['loss', 'lr', 'samples_per_sec', 'eta_s']);
    expect(live.at(-1)!.data).toMatchObject({ status: 'succeeded', step: 3 });

    const replay = await readEvents(await app.request(`/jobs/${created.id}/events`));
    expect(replay).toEqual(live);
    // A reconnecting client gets only what followed the last event it saw.
    const resumed = await readEvents(await app.request(`/jobs/${created.id}/events`, { headers: { 'last-event-id': '5' } }));
    expect(resumed).toEqual(live.slice(5));
  }, 60_000);

  test('a two-stage job streams its vision pretraining first, then the caption steps', async () => {
    const body = { ...tinyJob({ steps: 1 }), vision_pretraining: { steps: 2, batch_size: 2 } };
    const created = (await (await app.post('/jobs', body)).json()) as Job;
    const live = await readEvents(await app.request(`/jobs/${created.id}/events`));
    expect(live.map((e) => e.event)).toEqual(['pretraining', 'pretraining', 'pretraining_eval', 'progress', 'eval', 'checkpoint', 'done']);
    expect(live[0]!.data).toMatchObject({ step: 1, steps: 2 });
    expect(live[0]!.data).toContainKeys(['loss', 'lr', 'samples_per_sec', 'eta_s']);
    expect(live[2]!.data).toMatchObject({ step: 2, accuracy: { shape: expect.any(Number), color: expect.any(Number), size: expect.any(Number), tokens: expect.any(Number) } });
    expect(await waitFor(app, created.id, finished)).toMatchObject({ status: 'succeeded', stage: 'captions', vision_step: 2, step: 1, steps: 1 });
  }, 60_000);

  test('cancel stops a running job within a step', async () => {
    const created = (await (await app.post('/jobs', tinyJob({ steps: 500 }))).json()) as Job;
    await waitFor(app, created.id, (job) => job.step >= 1);
    const cancelled = await app.post(`/jobs/${created.id}/cancel`, {});
    expect(cancelled.status).toBe(202);
    const job = await waitFor(app, created.id, finished, 10_000);
    expect(job.status).toBe('cancelled');
    expect(job.step).toBeLessThan(500);
    expect((await app.post(`/jobs/${created.id}/cancel`, {})).status).toBe(409);
  }, 60_000);

  test('unknown jobs are 404; only stopped jobs resume (409)', async () => {
    expect((await app.request('/jobs/nope')).status).toBe(404);
    expect((await app.request('/jobs/nope/events')).status).toBe(404);
    const done = app.scheduler.list({ limit: 1000 })!.find((j) => j.status === 'succeeded')!;
    const response = await app.post(`/jobs/${done.id}/resume`, {});
    expect(response.status).toBe(409);
    expect(((await response.json()) as any).error.code).toBe('conflict');
  });
});

describe('invalid bodies', async () => {
  const dataDir = await tempDir();
  const app = trainingApp(dataDir);

  const cases: [string, unknown, string][] = [
    ['missing data', { train: { steps: 1 } }, 'data'],
    ['unknown data type', { data: { type: 'imagenet' } }, 'data.type'],
    ['negative steps', tinyJob({ steps: -1 }), 'train.steps'],
    ['fractional lr type', tinyJob({ lr: 'fast' }), 'train.lr'],
    ['unknown train field', tinyJob({ epochs: 3 }), 'train.epochs'],
    ['batch not divisible by workers', tinyJob({ batch_size: 3, workers: 2 }), 'train.batch_size'],
    ['bad model option', { model: { patchSize: 5 }, data: { type: 'synthetic-shapes' } }, 'model.patchSize'],
    ['bad memory option', { model: { neuralMemoryKwargs: { maxLr: 'fast' } }, data: { type: 'synthetic-shapes' } }, 'model.neuralMemoryKwargs.maxLr'],
    // patchSize is the default's, which the imageSize given makes wrong: the field is the model's options.
    ['model options that do not fit together', { model: { imageSize: 20 }, data: { type: 'synthetic-shapes' } }, 'model'],
    ['model changes to a missing base checkpoint', { model: {}, base_checkpoint: 'x', data: { type: 'synthetic-shapes' } }, 'base_checkpoint'],
    ['annotations without file', { data: { type: 'annotations' } }, 'data.annotations_file'],
    ['escaping path', { data: { type: 'annotations', annotations_file: '../../etc/passwd' } }, 'data.annotations_file'],
    ['absolute escaping path', { data: { type: 'coco', captions_file: '/etc/passwd', image_dir: '.' } }, 'data.captions_file'],
    ['escaping base checkpoint', { base_checkpoint: '../elsewhere', data: { type: 'synthetic-shapes' } }, 'base_checkpoint'],
  ];
  for (const [name, body, field] of cases) {
    test(`${name}: 400 naming ${field}`, async () => {
      const response = await app.post('/jobs', body);
      expect(response.status).toBe(400);
      const { error } = (await response.json()) as { error: { code: string; message: string; field: string } };
      expect(error.code).toBe('invalid_request');
      expect(error.field).toBe(field);
      expect(error.message).toContain(field);
    });
  }

  test('a path longer than any system\'s is refused: a job\'s spec is stored as given and listed with every page of jobs', async () => {
    const response = await app.post('/jobs', { data: { type: 'annotations', annotations_file: './'.repeat(31_000) + 'a.json' } });
    expect(response.status).toBe(400);
    expect(((await response.json()) as any).error.message).toBe('data.annotations_file must be a non-empty path of at most 4096 characters');
  });

  test('a missing file is named', async () => {
    const response = await app.post('/jobs', { data: { type: 'annotations', annotations_file: 'nowhere/annotations.json' } });
    expect(response.status).toBe(400);
    const { error } = (await response.json()) as { error: { message: string } };
    expect(error.message).toBe("data.annotations_file: 'nowhere/annotations.json' does not exist");
    expect(error.message).not.toContain(dataDir);
  });

  test('not JSON: 400; wrong content type: 415; a body over 64 KB: 413', async () => {
    expect((await app.request('/jobs', { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{' })).status).toBe(400);
    expect((await app.request('/jobs', { method: 'POST', headers: { 'content-type': 'text/plain' }, body: '{}' })).status).toBe(415);
    // The type before the size, as on the generation routes: a large body of the wrong type is told what type to send.
    expect((await app.request('/jobs', { method: 'POST', headers: { 'content-type': 'text/plain', 'content-length': '100000' }, body: 'x'.repeat(100_000) })).status).toBe(415);
    const huge = JSON.stringify({ data: { type: 'synthetic-shapes', prompts: ['x'.repeat(100_000)] } });
    const tooLarge = await app.request('/jobs', { method: 'POST', headers: { 'content-type': 'application/json' }, body: huge });
    expect(tooLarge.status).toBe(413);
    // Not MAX_UPLOAD_BYTES, which bounds uploads of images and is 20 MB by default.
    expect(await tooLarge.text()).toContain('larger than the limit of 65536 bytes (the fixed limit of a job or model request)');
    expect(app.scheduler.list({ limit: 10 })).toEqual([]);
  });
});

test('closing the scheduler (server shutdown) ends the streams that follow its jobs', async () => {
  const app = trainingApp(await tempDir());
  const created = (await (await app.post('/jobs', tinyJob({ steps: 500 }))).json()) as Job;
  await waitFor(app, created.id, (job) => job.step >= 1);
  const following = readEvents(await app.request(`/jobs/${created.id}/events`));
  await Bun.sleep(50);
  app.scheduler.close();
  // The stream ends, instead of waiting forever, and says how: interrupted, and why.
  const events = await following;
  expect(events.some((e) => e.event === 'progress')).toBe(true);
  expect(events.filter((e) => e.event === 'done')).toHaveLength(1);
  expect(events.at(-1)).toMatchObject({ event: 'done', data: { status: 'interrupted', reason: expect.stringContaining('resume') } });
}, 60_000);

test('through the real server: a shutdown ends the stream of a queued job with an error event, since the job has not ended', async () => {
  const dataDir = await tempDir();
  const server = await startServer(loadServerConfig({ PORT: '0', INFERENCE_WORKERS: '1', MODEL_DIR: join(dataDir, 'none'), DATA_DIR: dataDir }), () => {});
  const submit = async (body: unknown) => {
    const response = await fetch(`${server.url}/v1/training/jobs`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    return (await response.json()) as Job;
  };
  const running = await submit(tinyJob({ steps: 100_000 }));
  const queued = await submit(tinyJob({ steps: 1 }));
  const following = readEvents(await fetch(`${server.url}/v1/training/jobs/${queued.id}/events`));
  await Bun.sleep(50);
  expect(((await (await fetch(`${server.url}/v1/training/jobs/${running.id}`)).json()) as Job).status).toBe('running');
  await server.shutdown();
  expect(await following).toEqual([
    { event: 'error', id: '', data: { error: { code: 'not_ready', type: 'server_error', param: null, message: 'the server is shutting down; follow the job again (with Last-Event-ID) on a server that is up' } } },
  ]);
}, 60_000);

test('GET /jobs gives the jobs newest first, a page at a time: limit, after, has_more; a bad limit or an unknown after is a 400', async () => {
  const app = trainingApp(await tempDir());
  const ids: string[] = [];
  for (let i = 0; i < 3; i++) ids.push(((await (await app.post('/jobs', tinyJob({ steps: 100_000 }))).json()) as Job).id);
  try {
    const page = async (query: string) => {
      const { data, has_more } = (await (await app.request(`/jobs${query}`)).json()) as { data: Job[]; has_more: boolean };
      return { ids: data.map((job) => job.id), has_more };
    };
    const [first, second, third] = ids as [string, string, string];
    expect(await page('')).toEqual({ ids: [third, second, first], has_more: false });
    expect(await page('?limit=2')).toEqual({ ids: [third, second], has_more: true });
    expect(await page(`?limit=2&after=${second}`)).toEqual({ ids: [first], has_more: false });
    expect(await page(`?after=${first}`)).toEqual({ ids: [], has_more: false });
    for (const [query, field] of [['?limit=0', 'limit'], ['?limit=1001', 'limit'], ['?limit=two', 'limit'], ['?after=nope', 'after']]) {
      const response = await app.request(`/jobs${query}`);
      expect({ status: response.status, field: ((await response.json()) as { error: { field: string } }).error.field }).toEqual({ status: 400, field: field! });
    }
  } finally {
    for (const id of ids) app.scheduler.cancel(id);
  }
});

test('with API_KEY set, every training route needs the bearer token', async () => {
  const app = trainingApp(await tempDir(), 'sesame');
  expect((await app.request('/jobs')).status).toBe(401);
  expect((await app.post('/jobs', tinyJob())).status).toBe(401);
  expect((await app.post('/jobs', tinyJob(), { authorization: 'Bearer wrong' })).status).toBe(401);
  expect((await app.request('/jobs', { headers: { authorization: 'Bearer sesame' } })).status).toBe(200);
  const response = await app.post('/jobs', tinyJob({ steps: 1 }), { authorization: 'Bearer sesame' });
  expect(response.status).toBe(202);
  const { id } = (await response.json()) as Job;
  app.scheduler.cancel(id);
});

test('after a restart a running job is interrupted; resumed, it ends with the weights of an uninterrupted run', async () => {
  const dataDir = await tempDir();
  const job = tinyJob({ steps: 6, checkpoint_every: 2 });
  const first = trainingApp(dataDir);
  const { id } = (await (await first.post('/jobs', job)).json()) as Job;
  await waitFor(first, id, (j) => j.checkpoint !== null);
  first.scheduler.close(); // as if the process died: the job is left `running`

  const second = trainingApp(dataDir);
  const interrupted = (await (await second.request(`/jobs/${id}`)).json()) as Job;
  expect(interrupted.status).toBe('interrupted');
  expect(interrupted.step).toBeLessThan(6);
  const resumed = await second.post(`/jobs/${id}/resume`, {});
  expect(resumed.status).toBe(202);
  const done = await waitFor(second, id, finished);
  expect(done.status).toBe('succeeded');
  const replay = await readEvents(await second.request(`/jobs/${id}/events`));
  const progress = replay.filter((e) => e.event === 'progress');
  // Steps after the checkpoint appear twice (run, then rerun after the resume); step 6 once.
  expect(progress.at(-1)!.data.step).toBe(6);
  // The end of the interrupted run is in the history, but the stream has one end: the last.
  expect(replay.filter((e) => e.event === 'done')).toHaveLength(1);
  expect(replay.at(-1)).toMatchObject({ event: 'done', data: { status: 'succeeded', step: 6 } });

  const { id: reference } = (await (await second.post('/jobs', job)).json()) as Job;
  const uninterrupted = await waitFor(second, reference, finished);
  const weights = (j: Job) => readFile(join(dataDir, j.checkpoint!, 'model.safetensors'));
  expect(Buffer.compare(await weights(done), await weights(uninterrupted))).toBe(0);
  const optimizer = (j: Job) => readFile(join(dataDir, j.checkpoint!, 'optimizer.safetensors'));
  expect(Buffer.compare(await optimizer(done), await optimizer(uninterrupted))).toBe(0);
}, 120_000);

test('base_checkpoint starts a job from another job\'s weights', async () => {
  const dataDir = await tempDir();
  const app = trainingApp(dataDir);
  const { id } = (await (await app.post('/jobs', tinyJob({ steps: 1 }))).json()) as Job;
  const base = await waitFor(app, id, finished);
  const response = await app.post('/jobs', { base_checkpoint: base.checkpoint, data: { type: 'synthetic-shapes', val_size: 2 }, train: { steps: 1, batch_size: 2 } });
  expect(response.status).toBe(202);
  const job = await waitFor(app, ((await response.json()) as Job).id, finished);
  expect(job.status).toBe('succeeded');
  const config = JSON.parse(await readFile(join(dataDir, job.checkpoint!, 'config.json'), 'utf8'));
  expect(config.model.textDim).toBe(32);
}, 60_000);

test('through the real server: activate: true serves the job\'s checkpoint when it succeeds', async () => {
  const dataDir = await tempDir();
  const config = loadServerConfig({ PORT: '0', INFERENCE_WORKERS: '1', MODEL_DIR: join(dataDir, 'none'), DATA_DIR: dataDir });
  const server = await startServer(config, () => {});
  try {
    const response = await fetch(`${server.url}/v1/training/jobs`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ ...tinyJob({ steps: 2 }), activate: true }),
    });
    expect(response.status).toBe(202);
    const location = response.headers.get('location')!;
    const events = await readEvents(await fetch(`${server.url}${location}/events`));
    expect(events.at(-1)!.data).toMatchObject({ status: 'succeeded', activated: true });
    const job = (await (await fetch(`${server.url}${location}`)).json()) as Job;
    const models = (await (await fetch(`${server.url}/v1/models`)).json()) as { data: { checkpoint: string; card: Record<string, string> }[] };
    expect(models.data[0]!.checkpoint).toBe(job.checkpoint!);
    // The job wrote the card of its checkpoint: what it was trained on.
    expect(models.data[0]!.card).toMatchObject({ summary: expect.stringContaining('step 2 of 2'), trained_on: 'the synthetic shape scenes of docs/shapes.md.' });
  } finally {
    await server.shutdown();
  }
}, 60_000);
