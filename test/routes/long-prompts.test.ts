import { afterAll, beforeAll, describe, expect, spyOn, test } from 'bun:test';
import OpenAI from 'openai';
import { loadServerConfig } from '../../src/http/settings.ts';
import { tokenizer } from '../../src/inference/generation.ts';
import type { RunningServer } from '../../src/http/server.ts';
import { allEvents, atBaseline, eventually, form, health, imageBlob, jpeg, makeCheckpoint, sse, startTestServer, TINY_MODEL } from './helpers.ts';

const MIB = 1024 * 1024;
/** TINY_MODEL reads its prompt in pieces of 4 segments of 8 tokens. */
const PIECE = 4 * TINY_MODEL.segmentLen;

let server: RunningServer;
let image: Buffer;
let client: OpenAI;

beforeAll(async () => {
  // The default MAX_PROMPT_BYTES; a progress event after every piece of the prompt, so that what the
  // tests see does not depend on how fast the machine reads. An image fills four placeholders, which
  // progress does not count, as usage does not.
  server = await startTestServer(await makeCheckpoint({ ...TINY_MODEL, numImageTokens: 4 }), { INFERENCE_WORKERS: '1', PREFILL_PROGRESS_MS: '0' });
  image = await jpeg();
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
});

afterAll(async () => {
  await server.shutdown();
});

function caption(fields: Record<string, string | Blob>): Promise<Response> {
  return fetch(`${server.url}/v1/captions`, { method: 'POST', body: form({ image: imageBlob(image), ...fields }) });
}

function chat(body: Record<string, unknown>, signal?: AbortSignal): Promise<Response> {
  return fetch(`${server.url}/v1/chat/completions`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body), signal });
}

async function promptTokensRead(): Promise<number> {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  return Number(/^prompt_tokens_read_total (\S+)$/m.exec(text)?.[1] ?? NaN);
}

describe('a long prompt is read in pieces, with progress', () => {
  test('captions: a prompt of several pieces sends progress events, then its tokens', async () => {
    const prompt = 'The quick brown fox jumps over the lazy dog. '.repeat(7); // 315 bytes, then the image's 4 placeholders: 10 pieces
    const events = await allEvents(await caption({ prompt, max_tokens: '4' }));
    const names = events.map((e) => e.event);
    const total = prompt.length + 1;
    const progress = events.filter((e) => e.event === 'progress').map((e) => e.data);
    const read = [...Array.from({ length: 9 }, (_, i) => (i + 1) * PIECE), total];
    expect(progress).toEqual(read.map((tokens) => ({ tokens_read: tokens, prompt_tokens: total })));
    // start, every progress event, then the tokens and done.
    expect(names.slice(0, progress.length + 1)).toEqual(['start', ...progress.map(() => 'progress')]);
    expect(names.slice(progress.length + 1).every((name) => name === 'token' || name === 'done')).toBe(true);
    expect(events.at(-1)!.data.usage.prompt_tokens).toBe(total);
  });

  test('an image moved to its own segment: the spaces put before it count as no prompt token, as in usage', async () => {
    // 317 bytes: the image would start 5 tokens into its segment, past maxImageOffset (4), so 3 spaces
    // move it to the next; the pieces read 320 tokens, then the rest.
    const prompt = 'x'.repeat(317);
    const events = await allEvents(await caption({ prompt, max_tokens: '1' }));
    const read = events.filter((e) => e.event === 'progress').map((e) => e.data.tokens_read);
    expect(read).toEqual([...Array.from({ length: 9 }, (_, i) => (i + 1) * PIECE), 317, 318]);
    expect(events.at(-1)!.data.usage.prompt_tokens).toBe(318);
  });

  test('chat: images moved to their segments, and their slots, are not counted either, so that progress ends at the whole prompt', async () => {
    const picture = { type: 'image_url', image_url: { url: `data:image/jpeg;base64,${image.toString('base64')}` } };
    const content = [{ type: 'text', text: 'x'.repeat(45) }, picture, { type: 'text', text: 'y'.repeat(61) }, picture, { type: 'text', text: 'z'.repeat(30) }];
    const comments: string[] = [];
    let usage: { prompt_tokens: number } | undefined;
    const body = { messages: [{ role: 'user', content }], max_tokens: 1, stream: true, stream_options: { include_usage: true } };
    for await (const item of sse(await chat(body))) {
      if (item.type === 'comment' && item.comment !== 'heartbeat') comments.push(item.comment);
      else if (item.type === 'event') usage = item.data?.usage ?? usage;
    }
    const read = comments.map((comment) => Number(/^progress (\d+)\//.exec(comment)![1]));
    expect(read.at(-1)).toBe(usage!.prompt_tokens);
    expect(read.every((tokens, i) => i === 0 || tokens > read[i - 1]!)).toBe(true);
  });

  test('chat: progress goes as SSE comment lines, which the openai client skips', async () => {
    const messages: OpenAI.ChatCompletionMessageParam[] = [{ role: 'user', content: 'ab'.repeat(100) }];
    const comments: string[] = [];
    for await (const item of sse(await chat({ messages, max_tokens: 3, stream: true }))) if (item.type === 'comment') comments.push(item.comment);
    // The stream opens with a heartbeat, which sends its headers while the request waits for a worker.
    expect(comments).toEqual(['heartbeat', 'progress 32/200', 'progress 64/200', 'progress 96/200', 'progress 128/200', 'progress 160/200', 'progress 192/200', 'progress 200/200']);

    const request = { model: 'tiny', messages, max_tokens: 6, temperature: 0 };
    const whole = await client.chat.completions.create(request);
    let text = '';
    for await (const chunk of await client.chat.completions.create({ ...request, stream: true })) {
      expect(chunk.object).toBe('chat.completion.chunk');
      text += chunk.choices[0]?.delta.content ?? '';
    }
    expect(text).toBe(whole.choices[0]!.message.content!);
  });
});

describe('MAX_PROMPT_BYTES', () => {
  test('defaults to 1 MiB, and goes up to 64 MiB, which some 4 GB of memory reads', () => {
    expect(loadServerConfig({}).maxPromptBytes).toBe(MIB);
    expect(loadServerConfig({ MAX_PROMPT_BYTES: String(64 * MIB) }).maxPromptBytes).toBe(64 * MIB);
    expect(() => loadServerConfig({ MAX_PROMPT_BYTES: String(64 * MIB + 1) })).toThrow(`MAX_PROMPT_BYTES must be a whole number in [1, ${64 * MIB}]`);
  });

  test('a prompt one byte over is a 400 that names the field and the limit, on both routes', async () => {
    const over = 'x'.repeat(MIB + 1);
    const captionError = (await (await caption({ prompt: over })).json()) as any;
    expect(captionError.error).toMatchObject({ code: 'invalid_request', field: 'prompt' });
    expect(captionError.error.message).toContain(`limit of ${MIB} (MAX_PROMPT_BYTES)`);
    const chatResponse = await chat({ messages: [{ role: 'user', content: over }] });
    expect(chatResponse.status).toBe(400);
    const chatError = (await chatResponse.json()) as any;
    expect(chatError.error).toMatchObject({ code: 'invalid_request', field: 'messages' });
    expect(chatError.error.message).toContain(`limit of ${MIB} (MAX_PROMPT_BYTES)`);
    // Counted whole though the prompt past the limit is never built: two-byte characters, a newline between messages.
    const encoded = spyOn(tokenizer, 'encode');
    const messages = [{ role: 'user', content: 'é'.repeat(MIB) }, { role: 'user', content: 'ab' }, { role: 'user', content: 'é'.repeat(MIB / 2) }];
    const counted = (await (await chat({ messages })).json()) as any;
    expect(counted.error.message).toBe(`messages: hold ${2 * MIB + 1 + 2 + 1 + MIB} bytes of UTF-8 text, more than the limit of ${MIB} (MAX_PROMPT_BYTES)`);
    expect(encoded.mock.calls.every(([text]) => text.length <= 2)).toBe(true);
    encoded.mockRestore();
  });
});

describe('a client that leaves while its 1 MiB prompt is read', () => {
  test('captions: the worker stops reading, frees its tensors and serves the next request', async () => {
    const before = await promptTokensRead();
    const response = await caption({ prompt: 'y'.repeat(MIB - 1) });
    expect(response.status).toBe(200);
    let progress: any;
    for await (const item of sse(response)) {
      if (item.type === 'event' && item.event === 'progress') {
        progress = item.data;
        break;
      }
    }
    expect(progress).toEqual({ tokens_read: PIECE, prompt_tokens: MIB });
    await response.body?.cancel().catch(() => {});
    expect(atBaseline(await eventually(() => health(server.url), atBaseline, 10_000))).toBe(true);
    // The worker reports what it read: a part of the prompt, not all of it.
    const read = (await promptTokensRead()) - before;
    expect(read).toBeGreaterThan(0);
    expect(read).toBeLessThan(MIB);
    const next = await allEvents(await caption({ max_tokens: '2' }));
    expect(next.at(-1)!.event).toBe('done');
  }, 20_000);

  test('chat: a 1 MiB message is accepted, and leaving during its reading stops it', async () => {
    const before = await promptTokensRead();
    const controller = new AbortController();
    const response = await chat({ messages: [{ role: 'user', content: 'z'.repeat(MIB) }], stream: true }, controller.signal);
    expect(response.status).toBe(200);
    let comment: string | undefined;
    for await (const item of sse(response)) {
      if (item.type === 'comment' && item.comment !== 'heartbeat') {
        comment = item.comment;
        break;
      }
    }
    expect(comment).toBe(`progress ${PIECE}/${MIB}`);
    controller.abort();
    expect(atBaseline(await eventually(() => health(server.url), atBaseline, 10_000))).toBe(true);
    expect((await promptTokensRead()) - before).toBeLessThan(MIB);
  }, 20_000);
});
