import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import { rm, symlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { FinishReason } from '../../model/generate.ts';
import type { RunningServer } from '../../src/http/server.ts';
import { WorkerFailedError } from '../../src/inference/errors.ts';
import { TINY_MODEL, atBaseline, eventually, form, health, imageBlob, jpeg, makeCheckpoint, startTestServer } from './helpers.ts';

const API_KEY = 'test-key';
let server: RunningServer;
let other: string;

beforeAll(async () => {
  const served = await makeCheckpoint();
  server = await startTestServer(served, { API_KEY });
  // Another size of input image, so that a swap visibly changes what the server serves; beside
  // MODEL_DIR, where the server may load checkpoints from.
  other = await makeCheckpoint({ ...TINY_MODEL, imageSize: 24, seed: 5 }, 'other', dirname(served));
});

afterAll(async () => {
  await server.shutdown();
});

function putCurrent(body: unknown, token?: string): Promise<Response> {
  const headers: Record<string, string> = { 'Content-Type': 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  return fetch(`${server.url}/v1/models/current`, { method: 'PUT', headers, body: JSON.stringify(body) });
}

describe('GET /v1/models', () => {
  test('describes the loaded model: config, parameter count, backend, checkpoint', async () => {
    const { object, data } = (await (await fetch(`${server.url}/v1/models`)).json()) as any;
    expect(object).toBe('list');
    // Named relative to the folder that holds MODEL_DIR, never by its absolute path.
    expect(data[0]).toMatchObject({ id: 'tiny', object: 'model', untrained: false, checkpoint: 'tiny', backend: { name: 'wasm' } });
    expect(data[0].parameter_count).toBeGreaterThan(1000);
    expect(data[0].config.imageSize).toBe(16);
  });
});

describe('PUT /v1/models/current', () => {
  test('needs the API key as a bearer token', async () => {
    expect((await putCurrent({ checkpoint: other })).status).toBe(401);
    expect((await putCurrent({ checkpoint: other }, 'wrong')).status).toBe(401);
  });

  test('refuses a folder outside DATA_DIR and the models folder', async () => {
    const response = await putCurrent({ checkpoint: '/etc' }, API_KEY);
    expect(response.status).toBe(400);
    expect(((await response.json()) as any).error).toMatchObject({ field: 'checkpoint', message: expect.stringContaining('inside DATA_DIR or beside MODEL_DIR') });
    expect(server.pool.model.id).toBe('tiny');
  });

  test('refuses a symbolic link that leads out of the allowed folders, as base_checkpoint does', async () => {
    const outside = await makeCheckpoint(TINY_MODEL, 'outside');
    await symlink(outside, join(dirname(other), 'link'));
    const response = await putCurrent({ checkpoint: 'link' }, API_KEY);
    expect(response.status).toBe(400);
    expect(((await response.json()) as any).error).toEqual({ code: 'invalid_request', type: 'invalid_request_error', param: 'checkpoint', field: 'checkpoint', message: "checkpoint 'link' leads outside the data folder" });
    expect(server.pool.model.id).toBe('tiny');
  });

  test('refuses a checkpoint whose files are links to files elsewhere: their bytes are never read into an error', async () => {
    for (const file of ['config.json', 'model.safetensors']) {
      const folder = await makeCheckpoint(TINY_MODEL, `linked-${file}`, dirname(other));
      await rm(join(folder, file));
      await symlink('/etc/passwd', join(folder, file));
      const response = await putCurrent({ checkpoint: `linked-${file}` }, API_KEY);
      expect(response.status).toBe(400);
      expect(((await response.json()) as any).error).toMatchObject({ field: 'checkpoint', message: `checkpoint 'linked-${file}/${file}' leads outside the data folder` });
    }
    expect(server.pool.model.id).toBe('tiny');
  });

  test('names the field when the checkpoint cannot be read, and changes nothing', async () => {
    const response = await putCurrent({ checkpoint: join(dirname(other), 'nonexistent') }, API_KEY);
    expect(response.status).toBe(400);
    expect(((await response.json()) as any).error.field).toBe('checkpoint');
    expect(server.pool.model.id).toBe('tiny');
  });

  test('a name found in neither folder is told what checkpoint names are relative to', async () => {
    // As a shell in the repository would name the bundled model: its name here is 'default'.
    const response = await putCurrent({ checkpoint: 'models/tiny' }, API_KEY);
    expect(((await response.json()) as any).error).toMatchObject({ field: 'checkpoint', message: expect.stringContaining("'models/tiny' is in neither DATA_DIR nor the folder that holds MODEL_DIR") });
    expect(response.status).toBe(400);
  });

  test('loads another checkpoint into every worker without a restart', async () => {
    const response = await putCurrent({ checkpoint: other }, API_KEY);
    expect(response.status).toBe(200);
    expect((await response.json()) as any).toMatchObject({ id: 'other', checkpoint: 'other' });
    // The name GET /v1/models shows is one PUT takes back.
    expect((await putCurrent({ checkpoint: 'other' }, API_KEY)).status).toBe(200);
    const captioned = await fetch(`${server.url}/v1/captions`, {
      method: 'POST',
      body: form({ image: imageBlob(await jpeg()), max_tokens: '3' }),
      headers: { Accept: 'application/json' },
    });
    expect(((await captioned.json()) as any).model).toBe('other');
    const h = await eventually(() => health(server.url), atBaseline);
    expect(atBaseline(h)).toBe(true);
    expect(h.workers).toHaveLength(2);
  });
});

describe('a swap waits for running generations, worker by worker', () => {
  /** A greedy text-only generation straight through the pool: the tokens it wrote, and why it ended. */
  const run = async (maxLength: number, client: string, prompt = [65, 66, 67]) => {
    const admission = server.pool.admit(client);
    const job = { prompt, images: [], imagePositions: [], maxLength, stop: [], temperature: 0 };
    let tokens = 0;
    let finishReason: FinishReason | undefined;
    for await (const event of admission.run([job], new AbortController().signal)) {
      if (event.type === 'token') tokens++;
      if (event.type === 'finished') finishReason = event.finishReason;
    }
    admission.release();
    return { tokens, finishReason };
  };

  test('a load postponed behind a later worker still starts when that worker ends', async () => {
    const pool = server.pool;
    // A short job on the first worker and a long one on the second, then the swap: the first
    // worker finishes, loads and goes idle while the second still generates.
    // Both start at once and are checked at once: a fixed pause between them let the tiny model
    // finish a 3-token job first. Greedy decoding ends this prompt at EOS after 85 tokens, hence 40.
    const short = run(40, 'a');
    const long = run(300, 'b');
    const busy = await eventually(async () => pool.stats().workers.map((w) => w.busy), (b) => b.every(Boolean), 5000);
    expect(busy).toEqual([true, true]);
    const swapped = pool.loadModel(await makeCheckpoint({ ...TINY_MODEL, seed: 9 }, 'third'));
    expect((await long).tokens).toBeGreaterThan((await short).tokens);
    expect((await swapped).id).toBe('third');
    expect(pool.stats().workers.every((w) => !w.busy)).toBe(true);
  });

  test('a later worker that cannot load the checkpoint sends the others back: all serve the old model', async () => {
    const pool = server.pool;
    const served = pool.model.id;
    const baseline = pool.stats().workers.map((w) => w.baselineTensors);
    // A deeper model has more tensors, which shows when the first worker has loaded it.
    const deeper = await makeCheckpoint({ ...TINY_MODEL, depth: 2, seed: 11 }, 'deeper');
    // A short job on the first worker, a long one on the second: a long prompt to read (some 0.6 s
    // here), since a generation ends at EOS wherever the model meets it, and a change of kernels
    // moves that (a sampled one of up to 2,000 tokens once ended first).
    const short = run(40, 'a');
    const long = run(40, 'b', Array.from({ length: 8000 }, (_, i) => 65 + (i % 26)));
    await eventually(async () => pool.stats().workers.map((w) => w.busy), (b) => b.every(Boolean), 5000);
    const swapped = pool.loadModel(deeper);
    const loadedFirst = await eventually(async () => pool.stats().workers[0]!.baselineTensors, (n) => n !== baseline[0], 10_000);
    expect(loadedFirst).not.toBe(baseline[0]);
    // The second worker must not have reached its load yet, or it would load the file before it goes.
    expect(pool.stats().workers[1]!.busy).toBe(true);
    await rm(join(deeper, 'model.safetensors'));
    await expect(swapped).rejects.toBeInstanceOf(WorkerFailedError);
    await expect(swapped).rejects.toThrow('every worker serves the previous model again');
    // Both ran to their end on the old model, the swap neither cut nor failed them.
    for (const { finishReason } of await Promise.all([short, long])) expect(['length', 'eos']).toContain(finishReason!);
    expect(pool.model.id).toBe(served);
    expect(pool.stats().workers.map((w) => w.baselineTensors)).toEqual(baseline);
  });
});

describe('health and metrics', () => {
  test('GET /healthz and /readyz', async () => {
    const h = (await (await fetch(`${server.url}/healthz`)).json()) as any;
    expect(h).toMatchObject({ status: 'ok', backend: { name: 'wasm' }, queued: 0 });
    expect((await fetch(`${server.url}/readyz`)).status).toBe(200);
  });

  test('GET /metrics is Prometheus text with the request, token, latency, queue, tensor and backend series', async () => {
    await fetch(`${server.url}/v1/captions`, { method: 'POST', body: form({ image: imageBlob(await jpeg()), max_tokens: '4' }) }).then((r) => r.text());
    await fetch(`${server.url}/no/such/route`);
    const response = await fetch(`${server.url}/metrics`);
    expect(response.headers.get('content-type')).toContain('text/plain');
    const text = await response.text();
    expect(text).toMatch(/^http_requests_total\{route="\/v1\/captions",method="POST",status="200"\} \d+/m);
    expect(text).toMatch(/^http_requests_total\{route="unmatched",method="GET",status="404"\} 1/m);
    expect(text).toMatch(/^generated_tokens_total \d+/m);
    expect(text).toMatch(/^time_to_first_token_seconds_bucket\{le="0.1"\} \d+/m);
    expect(text).toMatch(/^token_latency_seconds_count \d+/m);
    expect(text).toMatch(/^inference_queue_depth 0/m);
    expect(text).toMatch(/^inference_worker_live_tensors\{worker="1"\} \d+/m);
    expect(text).toMatch(/^inference_backend_info\{backend="wasm",tf_backend="wasm",simd="(true|false)"\} 1/m);
  });
});

describe('a request that waits through a swap', () => {
  /**
   * A server of one worker, a batch at a time, busy with a generation until `swapTo` swaps in the
   * checkpoint `name`: `queue` sends a request that waits for the worker, and returns once it waits,
   * with its answer to come.
   */
  async function withBusyServer(use: (server: RunningServer, queue: (send: () => Promise<Response>) => Promise<{ answer: Promise<Response> }>, swapTo: (name: string) => Promise<Response>) => Promise<void>): Promise<void> {
    const waiting = await startTestServer(await makeCheckpoint(), { API_KEY, INFERENCE_WORKERS: '1', INFERENCE_BATCH: '1' });
    const admission = waiting.pool.admit('holder');
    const stop = new AbortController();
    const holding = (async () => {
      for await (const _ of admission.run([{ prompt: [65, 66, 67], images: [], imagePositions: [], maxLength: 100_000, stop: [], temperature: 1, seed: 1 }], stop.signal));
      admission.release();
    })();
    const queue = async (send: () => Promise<Response>) => {
      const queued = waiting.pool.stats().queued;
      const answer = send();
      await eventually(async () => waiting.pool.stats().queued, (count) => count === queued + 1, 5000);
      return { answer };
    };
    const swapTo = async (name: string) => {
      const swap = fetch(`${waiting.url}/v1/models/current`, { method: 'PUT', headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${API_KEY}` }, body: JSON.stringify({ checkpoint: name }) });
      // The swap waits for the running batch to end; the queued requests wait for the swap.
      const slots = (waiting.pool as unknown as { slots: { load?: unknown }[] }).slots;
      await eventually(async () => slots[0]!.load, Boolean, 5000);
      stop.abort();
      await holding;
      return swap;
    };
    try {
      await eventually(async () => waiting.pool.stats().running, (running) => running === 1, 5000);
      await use(waiting, queue, swapTo);
    } finally {
      stop.abort();
      await waiting.shutdown();
    }
  }

  test('whose images were decoded for the old model is refused, to be sent again: never run on pixels normalised for another model', async () => {
    const image = await jpeg();
    await withBusyServer(async (waiting, queue, swapTo) => {
      // Another normalisation at the same image size, the size check of old could not tell.
      await makeCheckpoint({ ...TINY_MODEL, imageMean: [0.1, 0.9, 0.2], imageStd: [0.05, 0.05, 0.05], seed: 7 }, 'renormalized', dirname(waiting.pool.model.checkpoint!));
      const caption = () => fetch(`${waiting.url}/v1/captions`, { method: 'POST', body: form({ image: imageBlob(image), max_tokens: '3' }), headers: { Accept: 'application/json' } });
      const { answer } = await queue(caption);
      expect((await swapTo('renormalized')).status).toBe(200);
      const queued = await answer;
      expect(queued.status).toBe(503);
      expect(queued.headers.get('retry-after')).toBe('1');
      expect(((await queued.json()) as any).error).toMatchObject({ code: 'not_ready', message: 'the served model changed while this request waited; send it again' });
      const again = await caption();
      expect(((await again.json()) as any).model).toBe('renormalized');
    });
  }, 30_000);

  test('whose client leaves while it waits ends quietly, as no error of the server', async () => {
    await withBusyServer(async (waiting, queue) => {
      const controller = new AbortController();
      const body = JSON.stringify({ messages: [{ role: 'user', content: 'ABC' }], max_tokens: 3 });
      const { answer } = await queue(() => fetch(`${waiting.url}/v1/chat/completions`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body, signal: controller.signal }));
      controller.abort();
      await answer.catch(() => {});
      // The holder's stream alone is left once the request handler has ended.
      await eventually(async () => waiting.pool.stats().streams, (streams) => streams === 1, 5000);
      await Bun.sleep(100);
      const metrics = await (await fetch(`${waiting.url}/metrics`)).text();
      expect(metrics).not.toMatch(/^http_requests_total\{[^}]*status="500"/m);
    });
  }, 30_000);

  test('that the new model can serve runs on it, and its answer names the model that wrote it, streamed or not', async () => {
    const image = await jpeg();
    await withBusyServer(async (waiting, queue, swapTo) => {
      // Another seed: the same image size and normalisation, so the waiting caption's pixels suit it.
      await makeCheckpoint({ ...TINY_MODEL, seed: 7 }, 'reseeded', dirname(waiting.pool.model.checkpoint!));
      const chat = (stream: boolean) => fetch(`${waiting.url}/v1/chat/completions`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ messages: [{ role: 'user', content: 'ABC' }], max_tokens: 3, stream }) });
      const streamed = await queue(() => chat(true));
      const answered = await queue(() => chat(false));
      const captioned = await queue(() => fetch(`${waiting.url}/v1/captions`, { method: 'POST', body: form({ image: imageBlob(image), max_tokens: '3' }) }));
      expect((await swapTo('reseeded')).status).toBe(200);
      const chunks = (await (await streamed.answer).text()).split('\n').filter((line) => line.startsWith('data: {')).map((line) => JSON.parse(line.slice(6)));
      expect(chunks.length).toBeGreaterThan(1);
      expect(new Set(chunks.map((chunk) => chunk.model))).toEqual(new Set(['reseeded']));
      expect(((await (await answered.answer).json()) as any).model).toBe('reseeded');
      const start = (await (await captioned.answer).text()).split('\n\n').find((event) => event.startsWith('event: start'))!;
      expect(JSON.parse(start.split('data: ')[1]!)).toMatchObject({ model: 'reseeded', untrained: false });
    });
  }, 30_000);
});
