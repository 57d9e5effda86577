import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, spyOn, test } from 'bun:test';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import sharp from 'sharp';
import type { RunningServer } from '../../src/http/server.ts';
import {
  allEvents, atBaseline, batchCounters, curl, eventually, form, health, imageBlob, jpeg, makeCheckpoint, parseSseText, pngDeclaring, sse, startTestServer,
} from './helpers.ts';

const MAX_UPLOAD_BYTES = 64 * 1024;
let server: RunningServer;
let url: string;
let image: Buffer;
let imagePath: string;

beforeAll(async () => {
  const checkpoint = await makeCheckpoint();
  server = await startTestServer(checkpoint, { MAX_UPLOAD_BYTES: String(MAX_UPLOAD_BYTES), MAX_PROMPT_BYTES: '256', MAX_TOKENS_LIMIT: '2000' });
  url = `${server.url}/v1/captions`;
  image = await jpeg();
  imagePath = join(checkpoint, '..', 'photo.jpg');
  await writeFile(imagePath, image);
});

afterAll(async () => {
  await server.shutdown();
});

function caption(fields: Record<string, string | Blob>, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(url, { method: 'POST', body: form(fields), headers });
}

async function expectError(response: Response, status: number, code: string, field?: string): Promise<string> {
  const body = (await response.json()) as { error: { code: string; message: string; field?: string } };
  expect({ status: response.status, code: body.error.code }).toEqual({ status, code });
  if (field) expect(body.error.field).toBe(field);
  expect(body.error.message.length).toBeGreaterThan(0);
  return body.error.message;
}

describe('POST /v1/captions streams SSE', () => {
  test('start, one token event per token, then done with usage and timings', async () => {
    const response = await caption({ image: imageBlob(image), max_tokens: '6', seed: '1', temperature: '0' });
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toContain('text/event-stream');
    const events = await allEvents(response);
    const [start, ...rest] = events;
    expect(start!.event).toBe('start');
    expect(start!.data).toMatchObject({ model: 'tiny', backend: 'wasm', untrained: false });
    expect(start!.data.id).toStartWith('cap-');
    const done = rest.pop()!;
    expect(done.event).toBe('done');
    expect(rest.every((e) => e.event === 'token')).toBe(true);
    rest.forEach((e, i) => expect(e.data.index).toBe(i));
    expect(done.data.text).toBe(rest.map((e) => e.data.text).join(''));
    expect(['length', 'eos']).toContain(done.data.finish_reason);
    expect(done.data.usage.completion_tokens).toBeLessThanOrEqual(6);
    expect(done.data.usage.prompt_tokens).toBe(new TextEncoder().encode('This is an image of ').length + 1);
    for (const key of ['queue_ms', 'preprocess_ms', 'encode_ms', 'time_to_first_token_ms', 'total_ms', 'tokens_per_second']) {
      expect(typeof done.data.timings[key]).toBe('number');
    }
  });

  test('the real curl binary with -F image=@file streams the same events', async () => {
    const { stdout, exitCode } = await curl(['-N', '-F', `image=@${imagePath}`, '-F', 'max_tokens=5', '-F', 'prompt=A photo of a', url]);
    expect(exitCode).toBe(0);
    const events = parseSseText(stdout);
    expect(events[0]!.event).toBe('start');
    expect(events.at(-1)!.event).toBe('done');
    expect(events.at(-1)!.data.usage.prompt_tokens).toBe('A photo of a'.length + 1);
  });

  test('8 concurrent streams all complete, and the same seed gives the same text on every worker', async () => {
    const responses = await Promise.all(
      Array.from({ length: 8 }, () => caption({ image: imageBlob(image), max_tokens: '12', seed: '42', temperature: '1' })),
    );
    const texts = await Promise.all(responses.map(async (r) => (await allEvents(r)).at(-1)!.data.text as string));
    expect(new Set(texts).size).toBe(1);
    expect(atBaseline(await eventually(() => health(server.url), atBaseline))).toBe(true);
  });

  test('without a temperature a caption is greedy: the text of temperature=0, whatever the seed', async () => {
    const text = async (fields: Record<string, string>) =>
      (await allEvents(await caption({ image: imageBlob(image), max_tokens: '12', ...fields }))).at(-1)!.data.text as string;
    const greedy = await text({ temperature: '0' });
    expect([await text({ seed: '1' }), await text({ seed: '2' })]).toEqual([greedy, greedy]);
    // The same seeds at temperature 1 draw other text, so the default is what makes these equal.
    expect([await text({ seed: '1', temperature: '1' }), await text({ seed: '2', temperature: '1' })]).not.toEqual([greedy, greedy]);
  });

  test('a client that disconnects mid-stream stops its generation and its tensors are freed', async () => {
    const before = await tokensGenerated();
    const response = await caption({ image: imageBlob(image), max_tokens: '2000', temperature: '0' }, {});
    let tokens = 0;
    const reader = sse(response);
    for await (const item of reader) {
      if (item.type === 'event' && item.event === 'token' && ++tokens === 3) break;
    }
    await response.body?.cancel().catch(() => {});
    const after = await eventually(() => health(server.url), atBaseline, 5_000);
    expect(atBaseline(after)).toBe(true);
    // Far fewer than the 2000 asked for: the generation stopped when the client left.
    expect((await tokensGenerated()) - before).toBeLessThan(500);
  });

  test('a heartbeat comment keeps a quiet stream open', async () => {
    const quiet = await startTestServer(server.pool.model.checkpoint!, { INFERENCE_WORKERS: '1', HEARTBEAT_MS: '20' });
    try {
      const target = `${quiet.url}/v1/captions`;
      const long = await fetch(target, { method: 'POST', body: form({ image: imageBlob(image), max_tokens: '600' }) });
      const waiting = await fetch(target, { method: 'POST', body: form({ image: imageBlob(image), max_tokens: '2' }) });
      let comment: string | undefined;
      for await (const item of sse(waiting)) {
        if (item.type === 'comment') comment ??= item.comment;
      }
      await long.body?.cancel();
      expect(comment).toBe('heartbeat');
    } finally {
      await quiet.shutdown();
    }
  });
});

describe('logprobs: how sure the model was of each token', () => {
  test('each token event carries its logprob and, with top_logprobs, the alternatives; greedy picks the first', async () => {
    const events = await allEvents(await caption({ image: imageBlob(image), max_tokens: '8', temperature: '0', logprobs: 'true', top_logprobs: '3' }));
    const tokens = events.filter((e) => e.event === 'token');
    expect(tokens.length).toBeGreaterThan(0);
    for (const { data } of tokens) {
      expect(data.logprob).toBeLessThanOrEqual(0);
      expect(data.top_logprobs).toHaveLength(3);
      const logprobs = data.top_logprobs.map((t: { logprob: number }) => t.logprob);
      expect(logprobs).toEqual([...logprobs].sort((a, b) => b - a));
      expect(data.top_logprobs[0]).toMatchObject({ token_id: data.token_id, logprob: data.logprob, bytes: [data.token_id] });
    }
    const done = events.at(-1)!.data;
    expect(done.logprobs.content.map((t: { token_id: number }) => t.token_id)).toEqual(tokens.map((e) => e.data.token_id));
  });

  test('in the JSON answer, in OpenAI\'s shape; absent unless asked for; top_logprobs alone is refused', async () => {
    const response = await fetch(url, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
      body: JSON.stringify({ image: image.toString('base64'), max_tokens: 5, temperature: 1, seed: 4, logprobs: true }),
    });
    const body = (await response.json()) as any;
    expect(body.logprobs.content).toHaveLength(body.usage.completion_tokens);
    for (const entry of body.logprobs.content) {
      expect(Object.keys(entry).sort()).toEqual(['bytes', 'logprob', 'token', 'token_id', 'top_logprobs']);
      expect(entry.top_logprobs).toEqual([]);
    }
    const plain = (await (await caption({ image: imageBlob(image), max_tokens: '3' }, { Accept: 'application/json' })).json()) as any;
    expect(plain.logprobs).toBeUndefined();
    const tokens = (await allEvents(await caption({ image: imageBlob(image), max_tokens: '3' }))).filter((e) => e.event === 'token');
    expect(tokens.every((e) => !('logprob' in e.data))).toBe(true);
    await expectError(await caption({ image: imageBlob(image), top_logprobs: '2' }), 400, 'invalid_request', 'top_logprobs');
    await expectError(await caption({ image: imageBlob(image), logprobs: 'true', top_logprobs: '21' }), 400, 'invalid_request', 'top_logprobs');
  });
});

describe('POST /v1/captions as one JSON object', () => {
  test('Accept: application/json', async () => {
    const response = await caption({ image: imageBlob(image), max_tokens: '4' }, { Accept: 'application/json' });
    expect(response.headers.get('content-type')).toContain('application/json');
    const body = (await response.json()) as any;
    expect(body).toMatchObject({ object: 'caption', model: 'tiny', backend: 'wasm' });
    expect(typeof body.text).toBe('string');
    expect(body.usage.completion_tokens).toBeLessThanOrEqual(4);
  });

  test('stream=false, with curl', async () => {
    const { stdout } = await curl(['-F', `image=@${imagePath}`, '-F', 'stream=false', '-F', 'max_tokens=3', url]);
    expect(JSON.parse(stdout)).toMatchObject({ object: 'caption', finish_reason: expect.any(String) });
  });

  test('a client that goes away before the answer stops the generation', async () => {
    const before = await tokensGenerated();
    const controller = new AbortController();
    // End of text banned: 2,000 tokens, seconds of work, which a poll cannot miss as it could a caption that ends at once.
    const pending = fetch(url, {
      method: 'POST',
      body: form({ image: imageBlob(image), max_tokens: '2000', temperature: '0', logit_bias: '{"254": -100}' }),
      headers: { Accept: 'application/json' },
      signal: controller.signal,
    }).catch(() => 'aborted');
    expect((await eventually(() => health(server.url), (h) => h.running > 0)).running).toBeGreaterThan(0);
    controller.abort();
    expect(await pending).toBe('aborted');
    expect(atBaseline(await eventually(() => health(server.url), atBaseline, 5_000))).toBe(true);
    expect((await tokensGenerated()) - before).toBeLessThan(1000);
  });

  test('a JSON request with a base64 image and a data: URL, its scheme in any case', async () => {
    for (const encoded of [image.toString('base64'), `data:image/jpeg;base64,${image.toString('base64')}`, `DATA:image/jpeg;base64,${image.toString('base64')}`]) {
      const response = await fetch(url, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
        body: JSON.stringify({ image: encoded, max_tokens: 3, stop: ['zz'] }),
      });
      expect(response.status).toBe(200);
      expect(((await response.json()) as any).object).toBe('caption');
    }
  });
});

describe('bad input gets a JSON error and never leaks tensors', () => {
  test('no image: the message says how to send one, in a form or in JSON', async () => {
    expect(await expectError(await caption({ prompt: 'hello' }), 400, 'invalid_request', 'image')).toBe('image: is required: send an image file in the field "image"');
    const json = await fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ prompt: 'hello' }) });
    expect(await expectError(json, 400, 'invalid_request', 'image')).toBe('image: is required: send the image as base64 in the field "image"');
  });

  test('bytes that are not an image are refused from their first bytes: 415', async () => {
    await expectError(await caption({ image: imageBlob(new TextEncoder().encode('hello, not an image')) }), 415, 'unsupported_media', 'image');
  });

  test('an SVG with an external entity is 415 before any parser reads it, and the message is ours', async () => {
    const svg = `<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
      <svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><text y="20">&xxe;</text></svg>`;
    const message = await expectError(await caption({ image: imageBlob(new TextEncoder().encode(svg), 'image/svg+xml') }), 415, 'unsupported_media', 'image');
    expect(message).toBe('image: SVG images are not supported; send JPEG, PNG, WebP, GIF, AVIF or TIFF');
  });

  test('an empty file', async () => {
    await expectError(await caption({ image: imageBlob(new Uint8Array()) }), 400, 'invalid_image', 'image');
  });

  test('a truncated JPEG or PNG is 400 image_truncated, in our own words, also as JSON base64', async () => {
    const photo = sharp({ create: { width: 160, height: 120, channels: 3, background: 'black', noise: { type: 'gaussian', mean: 128, sigma: 30 } } });
    const cuts: [Buffer, string][] = [];
    for (const whole of [await photo.clone().jpeg().toBuffer(), await photo.clone().png().toBuffer()]) {
      for (const length of [3000, whole.length >> 1]) cuts.push([whole.subarray(0, length), whole[1] === 0x50 ? 'PNG' : 'JPEG']);
    }
    for (const [cut, format] of cuts) {
      const message = await expectError(await caption({ image: imageBlob(cut) }), 400, 'image_truncated', 'image');
      expect(message).toBe(`image: the ${format} image is truncated: the file ends before its picture does`);
      const response = await fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ image: cut.toString('base64') }) });
      await expectError(response, 400, 'image_truncated', 'image');
    }
  });

  test('a decompression bomb (30000 x 30000 declared in 70 bytes)', async () => {
    await expectError(await caption({ image: imageBlob(await pngDeclaring(30000, 30000), 'image/png') }), 413, 'too_large', 'image');
  });

  test('an unsupported format (PDF) is 415', async () => {
    const pdf = new TextEncoder().encode('%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n');
    await expectError(await caption({ image: imageBlob(pdf, 'application/pdf') }), 415, 'unsupported_media', 'image');
  });

  test('an upload over MAX_UPLOAD_BYTES is 413, with curl', async () => {
    const big = join(imagePath, '..', 'big.bin');
    await writeFile(big, new Uint8Array(MAX_UPLOAD_BYTES * 2));
    const { stdout } = await curl(['-F', `image=@${big}`, url]);
    expect(JSON.parse(stdout).error.code).toBe('too_large');
  });

  test('413 is answered from Content-Length, before the body is sent', async () => {
    const response = await rawRequest(
      `POST /v1/captions HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: ${MAX_UPLOAD_BYTES * 100}\r\n\r\n--b\r\n`,
    );
    expect(response).toStartWith('HTTP/1.1 413');
    expect(response).toContain('"too_large"');
  });

  test('413 on a chunked upload that never declares its size: refused while streaming', async () => {
    let sent = 0;
    const body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        // Sends a little over the limit, then hangs: only a server that refuses early can answer.
        if (sent > MAX_UPLOAD_BYTES) return new Promise(() => {});
        sent += 16 * 1024;
        controller.enqueue(new Uint8Array(16 * 1024));
      },
    });
    const response = await fetch(url, {
      method: 'POST',
      body,
      headers: { 'Content-Type': 'multipart/form-data; boundary=b' },
      duplex: 'half',
    } as RequestInit);
    await expectError(response, 413, 'too_large');
  });

  test('a wrong content type is 415', async () => {
    const response = await fetch(url, { method: 'POST', body: 'hello', headers: { 'Content-Type': 'text/plain' } });
    await expectError(response, 415, 'unsupported_media');
  });

  const badParams: [string, string][] = [
    ['max_tokens', '0'],
    ['max_tokens', 'ten'],
    ['max_tokens', '2001'],
    ['max_tokens', '1.5'],
    ['temperature', '-0.1'],
    ['temperature', 'NaN'],
    ['top_k', '3.5'],
    ['top_p', '-0.1'],
    ['top_p', '1.01'],
    ['min_p', '1'],
    ['seed', '1.5'],
    ['seed', '1e20'],
    ['stream', 'maybe'],
    ['presence_penalty', '2.5'],
    ['frequency_penalty', '-3'],
    ['logit_bias', '{"120": 101}'],
    ['logit_bias', '{"256": 1}'],
    // The image placeholder, which a generation never writes.
    ['logit_bias', '{"255": 100}'],
    ['logit_bias', 'x'],
  ];
  for (const [field, value] of badParams) {
    test(`${field}=${value} is 400 naming the field`, async () => {
      const message = await expectError(await caption({ image: imageBlob(image), [field]: value }), 400, 'invalid_request', field);
      expect(message).toContain(field);
    });
  }

  test('too many stop strings', async () => {
    const body = form({ image: imageBlob(image) });
    for (const stop of ['a', 'b', 'c', 'd', 'e']) body.append('stop', stop);
    await expectError(await fetch(url, { method: 'POST', body }), 400, 'invalid_request', 'stop');
  });

  test('a stop string is up to 64 characters, an emoji counted as one', async () => {
    const stop = (characters: number) => caption({ image: imageBlob(image), stop: '😀'.repeat(characters), max_tokens: '2' }, { Accept: 'application/json' });
    expect((await stop(64)).status).toBe(200);
    await expectError(await stop(65), 400, 'invalid_request', 'stop');
  });

  test("any integer seed, as OpenAI's int64: the generator takes it modulo 2^32", async () => {
    const text = async (seed: string) => (await (await caption({ image: imageBlob(image), max_tokens: '12', temperature: '1.5', seed }, { Accept: 'application/json' })).json()).text as string;
    expect(await text('-1')).toBe(await text(String(2 ** 32 - 1)));
    expect(await text(String(2 ** 32 + 5))).toBe(await text('5'));
    expect(await text('5')).not.toBe(await text('6'));
  });

  test('logit_bias, as JSON text in a form field, steers the caption; frequency_penalty wears the bias down', async () => {
    const text = async (fields: Record<string, string>) =>
      (await (await caption({ image: imageBlob(image), max_tokens: '12', temperature: '0', ...fields }, { Accept: 'application/json' })).json()).text as string;
    expect(await text({ logit_bias: '{"120": 100}' })).toBe('x'.repeat(12));
    const worn = await text({ logit_bias: '{"120": 10}', frequency_penalty: '2' });
    expect(worn).toStartWith('xxxx');
    expect(worn.split('x').length - 1).toBeLessThanOrEqual(7);
  });

  test('an unknown field is refused, not ignored', async () => {
    await expectError(await caption({ image: imageBlob(image), max_token: '5' }), 400, 'invalid_request', 'max_token');
  });

  test('a prompt over the limit', async () => {
    await expectError(await caption({ image: imageBlob(image), prompt: 'x'.repeat(257) }), 400, 'invalid_request', 'prompt');
  });

  test('a prompt that is not valid UTF-8', async () => {
    const boundary = 'titansboundary';
    const body = Buffer.concat([
      Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n`),
      image,
      Buffer.from(`\r\n--${boundary}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\n`),
      Buffer.from([0x61, 0xff, 0xfe, 0x62]),
      Buffer.from(`\r\n--${boundary}--\r\n`),
    ]);
    const response = await fetch(url, { method: 'POST', body, headers: { 'Content-Type': `multipart/form-data; boundary=${boundary}` } });
    const message = await expectError(response, 400, 'invalid_request', 'prompt');
    expect(message).toContain('UTF-8');
  });

  test('an image sent as a text part (no filename) is told to be a file part, whatever its bytes', async () => {
    const boundary = 'titansboundary';
    const body = Buffer.concat([
      Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="image"\r\nContent-Type: image/jpeg\r\n\r\n`),
      image,
      Buffer.from(`\r\n--${boundary}--\r\n`),
    ]);
    const response = await fetch(url, { method: 'POST', body, headers: { 'Content-Type': `multipart/form-data; boundary=${boundary}` } });
    expect(await expectError(response, 400, 'invalid_request', 'image')).toContain('must be a file part, with a filename');
  });

  test('a JSON body that is not valid UTF-8', async () => {
    const body = Buffer.concat([Buffer.from('{"prompt": "'), Buffer.from([0xc3, 0x28]), Buffer.from('"}')]);
    const response = await fetch(url, { method: 'POST', body, headers: { 'Content-Type': 'application/json' } });
    await expectError(response, 400, 'invalid_request', 'body');
  });

  test('a JSON body may start with a byte-order mark', async () => {
    const body = Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(JSON.stringify({ image: image.toString('base64'), max_tokens: 2 }))]);
    const response = await fetch(url, { method: 'POST', body, headers: { 'Content-Type': 'application/json', Accept: 'application/json' } });
    expect(response.status).toBe(200);
    expect(((await response.json()) as { usage: { completion_tokens: number } }).usage.completion_tokens).toBeGreaterThan(0);
  });

  test('a remote image URL is refused, never fetched', async () => {
    const response = await fetch(url, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ image: 'http://127.0.0.1:1/cat.jpg' }),
    });
    const message = await expectError(response, 400, 'invalid_request', 'image');
    expect(message).toContain('not fetched');
  });

  test('a malformed multipart body', async () => {
    const response = await fetch(url, { method: 'POST', body: 'garbage', headers: { 'Content-Type': 'multipart/form-data; boundary=zz' } });
    await expectError(response, 400, 'invalid_request');
  });

  test('an unknown route is 404', async () => {
    await expectError(await fetch(`${server.url}/v1/nothing`), 404, 'not_found');
    await expectError(await fetch(url), 404, 'not_found');
  });

  test('after all of it the server is healthy and every worker is back at its baseline', async () => {
    expect(atBaseline(await eventually(() => health(server.url), atBaseline))).toBe(true);
  });
});

describe('requests run together on a worker, joining the batch it runs (INFERENCE_JOIN)', () => {
  let batching: RunningServer;
  let waiting: RunningServer;
  beforeAll(async () => {
    const settings = { INFERENCE_WORKERS: '1', INFERENCE_BATCH: '4', MAX_TOKENS_LIMIT: '1000000' };
    [batching, waiting] = await Promise.all([
      startTestServer(server.pool.model.checkpoint!, { ...settings, INFERENCE_JOIN: 'true' }),
      startTestServer(server.pool.model.checkpoint!, settings),
    ]);
  });
  afterAll(async () => {
    await Promise.all([batching.shutdown(), waiting.shutdown()]);
  });
  // A worker learns how long its generations run, and so whether joins pay: each test starts from a
  // model just loaded, whose generations are yet to be seen.
  beforeEach(async () => {
    await batching.pool.loadModel(server.pool.model.checkpoint!);
  });

  // The streams a test opened: one that fails leaves none running into the next test.
  const opened: Response[] = [];
  afterEach(async () => {
    await Promise.all(opened.splice(0).map((response) => response.body?.cancel().catch(() => {})));
  });

  const send = async (fields: Record<string, string>, to = batching) => {
    const response = await fetch(`${to.url}/v1/captions`, { method: 'POST', body: form({ image: imageBlob(image), max_tokens: '16', ...fields }) });
    opened.push(response);
    return response;
  };
  /** A caption that runs until its client leaves: a million tokens, EOS (254) ruled out. */
  const endless = (seed: string, to = batching) => send({ seed, temperature: '1', max_tokens: '1000000', logit_bias: '{"254": -100}' }, to);

  /** What the request with these fields answers alone. */
  async function alone(fields: Record<string, string>) {
    return (await allEvents(await send(fields))).at(-1)!.data;
  }

  /** The stream's first token event, then the stream still open. */
  async function firstToken(response: Response): Promise<void> {
    for await (const item of sse(response)) if (item.type === 'event' && item.event === 'token') return;
  }

  test('a request that arrives while a generation runs joins it, ends first, and answers as it would alone', async () => {
    const before = await batchCounters(batching.url);
    const running = await endless('1');
    await firstToken(running);
    const fields: Record<string, string>[] = [{ seed: '2', temperature: '1' }, { prompt: 'A photo of a', seed: '3', temperature: '1', top_k: '5' }];
    const joined = await Promise.all(fields.map(async (f) => (await allEvents(await send(f))).at(-1)!.data));
    // Both have ended while the first one still runs: they did not wait for it to end.
    expect((await health(batching.url)).running).toBe(1);
    await running.body!.cancel();
    expect(await batchCounters(batching.url)).toEqual({ batches: before.batches + 1, generations: before.generations + 3, joined: before.joined + 2 });
    for (const [i, answer] of joined.entries()) {
      const expected = await alone(fields[i]!);
      expect(answer.text).toBe(expected.text);
      expect(answer.finish_reason).toBe(expected.finish_reason);
    }
    expect(atBaseline(await eventually(() => health(batching.url), atBaseline))).toBe(true);
  });

  test('past INFERENCE_BATCH running, a worker holds as many waiting to join; past those, requests queue', async () => {
    const holders = await Promise.all(['1', '2', '3', '4'].map((seed) => endless(seed)));
    await Promise.all(holders.map(firstToken));
    const fields: Record<string, string>[] = [1, 2, 3, 4].map((seed) => ({ seed: String(seed + 4), temperature: '1' }));
    fields.push({ seed: '9', temperature: '0', max_tokens: '3' });
    const pending = fields.map((f) => send(f));
    // Four wait in the worker for a place in its batch, the fifth in the queue.
    await eventually(() => health(batching.url), (h) => h.queued === 1 && h.running === 8);
    const before = await batchCounters(batching.url);
    await holders[0]!.body!.cancel();
    // The place goes to one of those in the worker, and the queued one takes its place there. (The
    // one that joined writes 16 tokens: on a busy machine it may have ended before a look at /healthz.)
    await eventually(() => health(batching.url), (h) => h.queued === 0);
    expect(await batchCounters(batching.url)).toEqual({ ...before, generations: before.generations + 1, joined: before.joined + 1 });
    await Promise.all(holders.slice(1).map((holder) => holder.body!.cancel()));
    const answers = await Promise.all(pending.map(async (r) => (await allEvents(await r)).at(-1)!.data));
    for (const [i, answer] of answers.entries()) expect(answer.text).toBe((await alone(fields[i]!)).text);
    expect(answers[4]!.usage.completion_tokens).toBeLessThanOrEqual(3);
    expect(atBaseline(await eventually(() => health(batching.url), atBaseline))).toBe(true);
  });

  test('a client that leaves while its request waits in the worker to join ends it at once', async () => {
    const holders = await Promise.all(['1', '2', '3', '4'].map((seed) => endless(seed)));
    await Promise.all(holders.map(firstToken));
    const waiting = await send({ seed: '5' });
    await eventually(() => health(batching.url), (h) => h.running === 5);
    await waiting.body!.cancel();
    await eventually(() => health(batching.url), (h) => h.running === 4 && h.streams === 4);
    await Promise.all(holders.map((holder) => holder.body!.cancel()));
    expect(atBaseline(await eventually(() => health(batching.url), atBaseline))).toBe(true);
  });

  test('once its generations are seen to end soon, a worker takes no joins: a request waits in the queue for the batch to end', async () => {
    const running = await endless('1');
    await firstToken(running);
    // It joins, and ends after two tokens: far sooner than two segments of the model.
    await allEvents(await send({ seed: '2', max_tokens: '2', logit_bias: '{"254": -100}' }));
    const fields = { seed: '3', temperature: '1' };
    const later = send(fields);
    await eventually(() => health(batching.url), (h) => h.queued === 1 && h.running === 1);
    await running.body!.cancel();
    const answer = (await allEvents(await later)).at(-1)!.data;
    expect(answer.text).toBe((await alone(fields)).text);
    expect(atBaseline(await eventually(() => health(batching.url), atBaseline))).toBe(true);
  });

  test('without INFERENCE_JOIN a request waits for the running batch to end, and answers as it would alone', async () => {
    const running = await endless('1', waiting);
    await firstToken(running);
    const later = send({ seed: '2', temperature: '1' }, waiting);
    await eventually(() => health(waiting.url), (h) => h.queued === 1 && h.running === 1);
    await running.body!.cancel();
    const answer = (await allEvents(await later)).at(-1)!.data;
    expect(answer.text).toBe((await alone({ seed: '2', temperature: '1' })).text);
    expect((await batchCounters(waiting.url)).joined).toBe(0);
    expect(atBaseline(await eventually(() => health(waiting.url), atBaseline))).toBe(true);
  });

  test('a client that leaves its batch stops its own generation; the rest of the batch goes on as it would alone', async () => {
    const running = await endless('7');
    await firstToken(running);
    const fields: Record<string, string>[] = [{ seed: '6', temperature: '1', max_tokens: '40' }, { seed: '7', temperature: '1', max_tokens: '40' }];
    const staying = fields.map((f) => send(f));
    let tokens = 0;
    for await (const item of sse(running)) if (item.type === 'event' && item.event === 'token' && ++tokens === 2) break;
    await running.body!.cancel();
    const answers = await Promise.all(staying.map(async (r) => (await allEvents(await r)).at(-1)!.data));
    for (const [i, answer] of answers.entries()) expect(answer.text).toBe((await alone(fields[i]!)).text);
    expect(atBaseline(await eventually(() => health(batching.url), atBaseline))).toBe(true);
  });
});

describe('back-pressure', () => {
  test('the fair queue takes turns by the client\'s own address, whatever the body: multipart, JSON, chunked', async () => {
    const admit = server.pool.admit.bind(server.pool);
    const keys: string[] = [];
    server.pool.admit = (key, streams) => (keys.push(key), admit(key, streams));
    try {
      const chunked = new Blob([JSON.stringify({ image: image.toString('base64'), max_tokens: 1 })]).stream();
      const bodies: RequestInit[] = [
        { body: form({ image: imageBlob(image), max_tokens: '1' }) },
        { body: JSON.stringify({ image: image.toString('base64'), max_tokens: 1 }), headers: { 'Content-Type': 'application/json' } },
        { body: chunked, headers: { 'Content-Type': 'application/json' }, duplex: 'half' } as RequestInit,
      ];
      for (const init of bodies) expect((await fetch(url, { method: 'POST', ...init, headers: { ...init.headers, Accept: 'application/json' } })).status).toBe(200);
    } finally {
      server.pool.admit = admit;
    }
    expect(keys).toHaveLength(3);
    for (const key of keys) expect(key).toMatch(/127\.0\.0\.1$/);
  });

  test('past MAX_CONCURRENT_STREAMS running plus queued: 429 with Retry-After', async () => {
    const busy = await startTestServer(server.pool.model.checkpoint!, { INFERENCE_WORKERS: '1', MAX_CONCURRENT_STREAMS: '2' });
    try {
      const target = `${busy.url}/v1/captions`;
      // Long prompts hold their places for seconds while they are read, until their clients leave.
      const open = await Promise.all([0, 1].map(() => fetch(target, { method: 'POST', body: form({ image: imageBlob(image), prompt: 'x'.repeat(300_000), max_tokens: '1' }) })));
      expect(open.map((r) => r.status)).toEqual([200, 200]);
      const refused = await fetch(target, { method: 'POST', body: form({ image: imageBlob(image) }) });
      expect(Number(refused.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
      await expectError(refused, 429, 'busy');
      // Refused before its body is read, chunked too: this one never finishes sending it.
      for (const route of ['/v1/captions', '/v1/chat/completions']) {
        const head = `POST ${route} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"mes\r\n`;
        expect(await rawRequest(head, { target: busy.url })).toStartWith('HTTP/1.1 429');
      }
      await Promise.all(open.map((r) => r.body?.cancel()));
      expect(atBaseline(await eventually(() => health(busy.url), atBaseline))).toBe(true);
      const again = await fetch(target, { method: 'POST', body: form({ image: imageBlob(image), max_tokens: '2' }), headers: { Accept: 'application/json' } });
      expect(again.status).toBe(200);
    } finally {
      await busy.shutdown();
    }
  });

  test('a client still sending its body holds no place; a body that has not arrived within BODY_TIMEOUT_MS gets 408 and its connection closed', async () => {
    // Uploads up to 256 MiB: past the runtime's own default limit of 128 MiB.
    const busy = await startTestServer(server.pool.model.checkpoint!, { INFERENCE_WORKERS: '1', MAX_CONCURRENT_STREAMS: '1', BODY_TIMEOUT_MS: '1500', MAX_UPLOAD_BYTES: String(256 * 2 ** 20) });
    try {
      // Headers, then the start of a body that never comes, sized or chunked: more of them than there are places.
      const sized = (route: string, bytes = 1000) => `POST ${route} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: ${bytes}\r\n\r\n{"messages":`;
      const chunked = (route: string) => `POST ${route} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"mes\r\n`;
      const sent: Promise<void>[] = [];
      const heads = [sized, chunked].flatMap((head) => ['/v1/chat/completions', '/v1/captions'].map((route) => head(route)));
      heads.push(sized('/v1/captions', 200 * 2 ** 20));
      const silent = heads.map((head) => {
        const { promise, resolve } = Promise.withResolvers<void>();
        sent.push(promise);
        return rawRequest(head, { target: busy.url, untilClosed: true, onSent: resolve });
      });
      // Their headers are read before this request's, and so before the caption takes the one place.
      await Promise.all(sent);
      await health(busy.url);
      const captioned = await fetch(`${busy.url}/v1/captions`, { method: 'POST', body: form({ image: imageBlob(image), max_tokens: '2' }), headers: { Accept: 'application/json' } });
      expect(captioned.status).toBe(200);
      for (const answer of await Promise.all(silent)) {
        expect(answer).toStartWith('HTTP/1.1 408');
        expect(answer).toContain('"request_timeout"');
        expect(answer).toContain('within 1500 ms (BODY_TIMEOUT_MS)');
      }
      expect(atBaseline(await eventually(() => health(busy.url), atBaseline))).toBe(true);
    } finally {
      await busy.shutdown();
    }
  }, 20_000);
});

test('a client that closes its connection mid-body is a 400 in the metrics and the log, never a 500', async () => {
  const closedMidBody = (route: string, type: string, start: string) =>
    new Promise<void>((resolve, reject) => {
      const { hostname, port } = new URL(server.url);
      Bun.connect({
        hostname,
        port: Number(port),
        socket: {
          open: (socket) => {
            socket.write(`POST ${route} HTTP/1.1\r\nHost: localhost\r\nContent-Type: ${type}\r\nContent-Length: 200\r\n\r\n${start}`);
            setTimeout(() => socket.terminate(), 100);
          },
          data: () => {},
          close: () => resolve(),
          error: (_socket, error) => reject(error),
        },
      }).catch(reject);
    });
  /** Requests answered on the two routes, and how many of them 400 and 500. */
  const counted = async () => {
    const text = await (await fetch(`${server.url}/metrics`)).text();
    const lines = [...text.matchAll(/^http_requests_total\{route="\/v1\/(?:captions|chat\/completions)",method="POST",status="(\d+)"\} (\d+)$/gm)];
    const answered = (status?: string) => lines.reduce((sum, m) => sum + (status === undefined || m[1] === status ? Number(m[2]) : 0), 0);
    return { all: answered(), refused: answered('400'), failed: answered('500') };
  };
  const before = await counted();
  const logged = spyOn(console, 'error');
  await closedMidBody('/v1/chat/completions', 'application/json', '{"messages": [');
  await closedMidBody('/v1/captions', 'multipart/form-data; boundary=XX', '--XX\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\nPNG');
  const after = await eventually(counted, (now) => now.all === before.all + 2);
  logged.mockRestore();
  expect(after.refused).toBe(before.refused + 2);
  expect(after.failed).toBe(before.failed);
  expect(logged).not.toHaveBeenCalled();
});

async function tokensGenerated(): Promise<number> {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  return Number(/^generated_tokens_total (\S+)$/m.exec(text)?.[1] ?? NaN);
}

/**
 * Sends raw bytes over TCP to `target` (the server by default), telling `onSent` once they are
 * written, and returns what it answers first, or with `untilClosed` all it answers until it closes
 * the connection.
 */
async function rawRequest(head: string, { target = server.url, untilClosed = false, onSent = () => {} } = {}): Promise<string> {
  const { hostname, port } = new URL(target);
  return new Promise((resolve, reject) => {
    let answer = '';
    Bun.connect({
      hostname,
      port: Number(port),
      socket: {
        open: (socket) => {
          socket.write(head);
          onSent();
        },
        data: (socket, data) => {
          answer += data.toString();
          if (!untilClosed && answer.includes('\r\n\r\n') && answer.includes('}')) {
            socket.end();
            resolve(answer);
          }
        },
        close: () => resolve(answer),
        error: (_socket, error) => reject(error),
      },
    }).catch(reject);
  });
}
