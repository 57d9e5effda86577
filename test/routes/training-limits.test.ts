/**
 * What POST /v1/training/jobs refuses, through the real server: jobs too large for the machine,
 * fields out of bounds, a full queue (issue 20, item 1), and data paths that are not data files
 * inside DATA_DIR (item 2); and that nothing it answers shows an absolute server path (item 7).
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import { mkdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Job } from '../../src/jobs/store.ts';
import type { RunningServer } from '../../src/http/server.ts';
import { loadServerConfig } from '../../src/http/settings.ts';
import { tempDir, tinyJob } from '../src/training/helpers.ts';
import { makeCheckpoint, startTestServer } from './helpers.ts';

let server: RunningServer;
let dataDir: string;

beforeAll(async () => {
  dataDir = await tempDir('titans-limits-');
  await writeFile(join(dataDir, 'corpus.txt'), 'The quick brown fox jumps over the lazy dog. '.repeat(20));
  await mkdir(join(dataDir, 'images'));
  await symlink('/etc/hostname', join(dataDir, 'link.txt'));
  server = await startTestServer(await makeCheckpoint(), { INFERENCE_WORKERS: '1', DATA_DIR: dataDir, MAX_JOB_MEMORY_BYTES: String(512 * 1024 * 1024), MAX_QUEUED_JOBS: '2' });
});

afterAll(async () => {
  await server.shutdown();
});

async function submit(body: unknown): Promise<{ status: number; headers: Headers; body: any }> {
  const response = await fetch(`${server.url}/v1/training/jobs`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return { status: response.status, headers: response.headers, body: await response.json() };
}

async function expectRefused(body: unknown, field: string, message: string | RegExp): Promise<string> {
  const answer = await submit(body);
  expect({ status: answer.status, code: answer.body.error.code, field: answer.body.error.field }).toEqual({ status: 400, code: 'invalid_request', field });
  expect(answer.body.error.message).toMatch(message);
  expect(answer.body.error.message).not.toContain(dataDir);
  return answer.body.error.message;
}

describe('sizes (item 1)', () => {
  test('a 4096-wide, 24-layer model is refused at submission, naming the field, its need and the limit', async () => {
    const message = await expectRefused({ model: { textDim: 4096, depth: 24 }, data: { type: 'synthetic-shapes' } }, 'model', /^model: the job would need about \d+(\.\d)? GiB, more than MAX_JOB_MEMORY_BYTES \(512 MiB\)/);
    expect(message).toContain('parameters x 4 bytes x (weights, gradients and AdamW\'s two moments)');
  });

  test('a batch whose activations do not fit is refused naming train.batch_size', async () => {
    await expectRefused(tinyJob({ batch_size: 1024 }, { type: 'synthetic-shapes', max_tokens: 8192 }), 'train.batch_size', /more than MAX_JOB_MEMORY_BYTES .* activations for one batch; lower train.batch_size/);
  });

  test('fields that size a run are bounded', async () => {
    await expectRefused(tinyJob({ batch_size: 100_000 }), 'train.batch_size', 'train.batch_size must be a whole number in [1, 1024], got 100000');
    await expectRefused(tinyJob({}, { type: 'synthetic-shapes', val_size: 50_000_000 }), 'data.val_size', 'data.val_size must be a whole number in [0, 10000]');
    await expectRefused(tinyJob({ steps: 1e9 }), 'train.steps', 'train.steps must be a whole number in [1, 10000000]');
    await expectRefused(tinyJob({ grad_accum: 5000 }), 'train.grad_accum', 'in [1, 1024]');
    await expectRefused({ ...tinyJob(), vision_pretraining: { batch_size: 5000 } }, 'vision_pretraining.batch_size', 'in [1, 1024]');
    await expectRefused(tinyJob({}, { type: 'synthetic-shapes', max_tokens: 1_000_000 }), 'data.max_tokens', 'in [8, 65536]');
  });

  test('past MAX_QUEUED_JOBS waiting jobs: 429 with Retry-After', async () => {
    const ids: string[] = [];
    try {
      for (let i = 0; i < 3; i++) {
        const answer = await submit(tinyJob({ steps: 400 }));
        expect(answer.status).toBe(202);
        ids.push(answer.body.id);
      }
      // One runs, two wait: the queue is full.
      const full = await submit(tinyJob({ steps: 1 }));
      expect(full.status).toBe(429);
      expect(full.body.error).toMatchObject({ code: 'busy', message: expect.stringContaining('MAX_QUEUED_JOBS') });
      expect(Number(full.headers.get('retry-after'))).toBeGreaterThanOrEqual(10);
    } finally {
      for (const id of ids.reverse()) await fetch(`${server.url}/v1/training/jobs/${id}/cancel`, { method: 'POST' });
    }
    // Every job waits a moment before it runs: a limit of none would refuse them all.
    expect(() => loadServerConfig({ MAX_QUEUED_JOBS: '0' })).toThrow('MAX_QUEUED_JOBS must be a whole number in [1, 100000]');
  }, 30_000);
});

describe('rules between fields, and what the messages say', () => {
  /** Submits a job that must be accepted, and cancels it: it is not to take a place in the queue. */
  async function expectAccepted(body: unknown): Promise<void> {
    const answer = await submit(body);
    expect(answer.status).toBe(202);
    await fetch(`${server.url}/v1/training/jobs/${answer.body.id}/cancel`, { method: 'POST' });
  }

  test('train.min_lr above train.lr is refused: the schedule would climb to it instead of decaying', async () => {
    await expectRefused(tinyJob({ lr: 1e-4, min_lr: 1 }), 'train.min_lr', 'train.min_lr (1) must be at most train.lr (0.0001): it is the floor the learning rate decays to');
    await expectAccepted(tinyJob({ steps: 1, lr: 1e-4, min_lr: 1e-4 }));
  });

  test('a prompt longer than data.max_tokens leaves room for is refused naming it: only captions are cut to fit', async () => {
    const prompts = ['', 'x'.repeat(10_000)];
    const message = 'data.prompts[1] is 10000 bytes (tokens) long; with the image token, one caption token and EOS its examples must fit data.max_tokens (128), so at most 125';
    await expectRefused(tinyJob({}, { type: 'synthetic-shapes', prompts }), 'data.prompts[1]', message);
    await expectAccepted(tinyJob({ steps: 1 }, { type: 'synthetic-shapes', max_tokens: 128, prompts: ['é'.repeat(62) + 'x'] }));
    await expectRefused(tinyJob({}, { type: 'synthetic-shapes', max_tokens: 128, prompts: ['é'.repeat(63)] }), 'data.prompts[0]', 'is 126 bytes (tokens) long');
  });

  test('a base_checkpoint folder without config.json is said to be one, not said not to exist', async () => {
    await expectRefused({ base_checkpoint: 'images', data: { type: 'synthetic-shapes' } }, 'base_checkpoint', "base_checkpoint 'images' is a folder but not a checkpoint: it has no config.json");
    await expectRefused({ base_checkpoint: 'corpus.txt', data: { type: 'synthetic-shapes' } }, 'base_checkpoint', "base_checkpoint 'corpus.txt' must be a folder, but it is a file");
    await expectRefused({ base_checkpoint: 'none', data: { type: 'synthetic-shapes' } }, 'base_checkpoint', "base_checkpoint: 'none' does not exist");
  });

  test('a number too large for a double is said to be one, not shown as null', async () => {
    const response = await fetch(`${server.url}/v1/training/jobs`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"data": {"type": "synthetic-shapes"}, "train": {"lr": 1e400}}' });
    expect(response.status).toBe(400);
    expect(((await response.json()) as { error: { message: string } }).error.message).toBe('train.lr must be a number >= 0, got Infinity, which is not a finite number');
  });
});

describe('data paths (item 2)', () => {
  test('a folder given as a file is refused at submission', async () => {
    await expectRefused({ data: { type: 'text', text_data_path: '.' } }, 'data.text_data_path', "data.text_data_path '.' must be a file, but it is a folder");
    await expectRefused({ data: { type: 'text', text_data_path: 'images' } }, 'data.text_data_path', 'must be a file, but it is a folder');
  });

  test('a file given as a folder is refused', async () => {
    await expectRefused({ data: { type: 'coco', captions_file: 'corpus.txt', image_dir: 'corpus.txt' } }, 'data.image_dir', "data.image_dir 'corpus.txt' must be a folder, but it is a file");
  });

  test('the job store and other jobs\' checkpoints are not training data', async () => {
    const message = await expectRefused({ data: { type: 'text', text_data_path: 'jobs.db' } }, 'data.text_data_path', /one of the server's own files/);
    expect(message).toContain("'jobs.db'");
    await expectRefused({ data: { type: 'text', text_data_path: 'jobs.db-wal' } }, 'data.text_data_path', /server's own files|does not exist/);
    const job = await submit(tinyJob({ steps: 1 }));
    let done: Job;
    do {
      await Bun.sleep(100);
      done = (await (await fetch(`${server.url}/v1/training/jobs/${job.body.id}`)).json()) as Job;
    } while (done.status === 'queued' || done.status === 'running');
    expect(done.checkpoint).toBe(join('jobs', job.body.id, 'step-000001'));
    await expectRefused({ data: { type: 'text', text_data_path: `${done.checkpoint}/config.json` } }, 'data.text_data_path', /one of the server's own files/);
    await expectRefused({ data: { type: 'annotations', annotations_file: 'corpus.txt', image_dir: 'jobs' } }, 'data.image_dir', /one of the server's own files/);
    // A job's checkpoint is still a base to train from.
    expect((await submit({ base_checkpoint: done.checkpoint, data: { type: 'synthetic-shapes', val_size: 0 }, train: { steps: 1, batch_size: 2 } })).status).toBe(202);
  }, 30_000);

  test('a symbolic link out of DATA_DIR is refused', async () => {
    await expectRefused({ data: { type: 'text', text_data_path: 'link.txt' } }, 'data.text_data_path', "data.text_data_path 'link.txt' leads outside the data folder");
  });

  test('a readable file inside DATA_DIR is accepted', async () => {
    const answer = await submit({ data: { type: 'text', text_data_path: 'corpus.txt', max_tokens: 32 }, train: { steps: 1, batch_size: 2 } });
    expect(answer.status).toBe(202);
    expect(JSON.stringify(answer.body)).not.toContain(dataDir);
  });
});

describe('no absolute server paths (item 7)', () => {
  test('GET /v1/models names the checkpoint relative to the models folder; jobs and their events relative to DATA_DIR', async () => {
    const models = await (await fetch(`${server.url}/v1/models`)).text();
    expect(JSON.parse(models).data[0].checkpoint).toBe('tiny');
    expect(models).not.toContain(server.pool.model.checkpoint!);
    const list = await (await fetch(`${server.url}/v1/training/jobs`)).text();
    expect(list).toContain('"checkpoint":"jobs/');
    expect(list).not.toContain(dataDir);
  });

  test('a job that fails says why without the server\'s folders', async () => {
    await writeFile(join(dataDir, 'broken.json'), '[{"image": 1}]');
    const job = await submit(tinyJob({}, { type: 'annotations', annotations_file: 'broken.json' }));
    expect(job.status).toBe(202);
    const events = await (await fetch(`${server.url}/v1/training/jobs/${job.body.id}/events`)).text();
    expect(events).toContain('broken.json');
    expect(events).toContain('event: done');
    expect(events).not.toContain(dataDir);
  }, 30_000);

  test('PUT /v1/models/current errors name the checkpoint as given', async () => {
    const response = await fetch(`${server.url}/v1/models/current`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ checkpoint: 'jobs/none' }) });
    const { error } = (await response.json()) as { error: { field: string; message: string } };
    expect(response.status).toBe(400);
    expect(error.field).toBe('checkpoint');
    expect(error.message).toContain('jobs/none');
    expect(error.message).not.toContain(dataDir);
    const outside = await fetch(`${server.url}/v1/models/current`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ checkpoint: '/etc' }) });
    const refused = ((await outside.json()) as { error: { message: string } }).error.message;
    expect(refused).toBe("checkpoint: must be a folder inside DATA_DIR or beside MODEL_DIR, got '/etc'");
  });
});
