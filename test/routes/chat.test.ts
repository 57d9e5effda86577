import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import OpenAI from 'openai';
import type { RunningServer } from '../../src/http/server.ts';
import { atBaseline, batchCounters, eventually, health, jpeg, makeCheckpoint, startTestServer } from './helpers.ts';

let server: RunningServer;
let client: OpenAI;
let dataUrl: string;

beforeAll(async () => {
  server = await startTestServer(await makeCheckpoint());
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
  dataUrl = `data:image/jpeg;base64,${(await jpeg()).toString('base64')}`;
});

afterAll(async () => {
  await server.shutdown();
});

const withImage = (text?: string): OpenAI.ChatCompletionMessageParam[] => [
  {
    role: 'user',
    content: [...(text ? [{ type: 'text' as const, text }] : []), { type: 'image_url' as const, image_url: { url: dataUrl } }],
  },
];

describe('POST /v1/chat/completions with the openai client', () => {
  test('non-streaming: one chat.completion', async () => {
    const completion = await client.chat.completions.create({ model: 'tiny', messages: withImage('Describe: '), max_tokens: 5, seed: 7 });
    expect(completion.object).toBe('chat.completion');
    expect(completion.model).toBe('tiny');
    const [choice] = completion.choices;
    expect(choice!.message.role).toBe('assistant');
    expect(typeof choice!.message.content).toBe('string');
    expect(['stop', 'length']).toContain(choice!.finish_reason);
    expect(completion.usage!.prompt_tokens).toBe('Describe: '.length + 1);
    expect(completion.usage!.completion_tokens).toBeLessThanOrEqual(5);
  });

  test('streaming: chunks whose deltas add up to the non-streaming text for the same seed', async () => {
    const request = { model: 'tiny', messages: withImage(), max_tokens: 8, seed: 3, temperature: 0.8 };
    const whole = await client.chat.completions.create(request);
    const stream = await client.chat.completions.create({ ...request, stream: true, stream_options: { include_usage: true } });
    let text = '';
    let finish: string | null = null;
    const usages: (OpenAI.CompletionUsage | null | undefined)[] = [];
    for await (const chunk of stream) {
      expect(chunk.object).toBe('chat.completion.chunk');
      text += chunk.choices[0]?.delta.content ?? '';
      finish = chunk.choices[0]?.finish_reason ?? finish;
      usages.push(chunk.usage);
    }
    expect(text).toBe(whole.choices[0]!.message.content!);
    expect(finish).toBe(whole.choices[0]!.finish_reason);
    // As OpenAI's: usage null on every chunk but the last, which has the totals and no choices.
    expect(usages.slice(0, -1).every((usage) => usage === null)).toBe(true);
    expect(usages.at(-1)).toEqual(whole.usage!);
  });

  test('logprobs and top_logprobs in OpenAI\'s shape, whole and streamed', async () => {
    const request = { model: 'tiny', messages: withImage('Describe: '), max_tokens: 6, seed: 5, temperature: 0.7, logprobs: true, top_logprobs: 2 };
    const whole = await client.chat.completions.create(request);
    const content = whole.choices[0]!.logprobs!.content!;
    expect(content).toHaveLength(whole.usage!.completion_tokens);
    const bytes = content.flatMap((t) => t.bytes ?? []);
    expect(Buffer.from(bytes).toString('utf8')).toBe(whole.choices[0]!.message.content!);
    for (const token of content) {
      expect(token.logprob).toBeLessThanOrEqual(0);
      expect(token.top_logprobs).toHaveLength(2);
      expect(token.top_logprobs[0]!.logprob).toBeGreaterThanOrEqual(token.top_logprobs[1]!.logprob);
    }
    const streamed: OpenAI.ChatCompletionTokenLogprob[] = [];
    for await (const chunk of await client.chat.completions.create({ ...request, stream: true })) streamed.push(...(chunk.choices[0]?.logprobs?.content ?? []));
    expect(streamed).toEqual(content);
    expect((await client.chat.completions.create({ model: 'tiny', messages: withImage(), max_tokens: 2 })).choices[0]!.logprobs).toBeNull();
  });

  test('n choices, run as one batch: each the text and logprobs its seed (seed + i) writes alone, whole and streamed; usage summed', async () => {
    const request = { model: 'tiny', messages: withImage('Describe: '), max_tokens: 10, seed: 11, temperature: 1, n: 3, logprobs: true };
    const before = await batchCounters(server.url);
    const whole = await client.chat.completions.create(request);
    expect(await batchCounters(server.url)).toEqual({ batches: before.batches + 1, generations: before.generations + 3, joined: before.joined });
    expect(whole.choices.map((choice) => choice.index)).toEqual([0, 1, 2]);
    const alone = await Promise.all([11, 12, 13].map((seed) => client.chat.completions.create({ ...request, n: 1, seed })));
    const texts = whole.choices.map((choice) => choice.message.content!);
    expect(texts).toEqual(alone.map((a) => a.choices[0]!.message.content!));
    expect(new Set(texts).size).toBeGreaterThan(1);
    const logprobs = whole.choices.map((choice) => choice.logprobs!.content!.map((token) => token.token));
    expect(logprobs).toEqual(alone.map((a) => a.choices[0]!.logprobs!.content!.map((token) => token.token)));
    const completion = alone.reduce((sum, a) => sum + a.usage!.completion_tokens, 0);
    expect(whole.usage).toMatchObject({ prompt_tokens: 'Describe: '.length + 1, completion_tokens: completion, total_tokens: 'Describe: '.length + 1 + completion });
    const streamed = ['', '', ''];
    const streamedLogprobs: string[][] = [[], [], []];
    const finishes: (string | null)[] = [null, null, null];
    let usage: OpenAI.CompletionUsage | undefined;
    for await (const chunk of await client.chat.completions.create({ ...request, stream: true, stream_options: { include_usage: true } })) {
      for (const choice of chunk.choices) {
        streamed[choice.index] += choice.delta.content ?? '';
        streamedLogprobs[choice.index]!.push(...(choice.logprobs?.content ?? []).map((token) => token.token));
        finishes[choice.index] = choice.finish_reason ?? finishes[choice.index]!;
      }
      usage = chunk.usage ?? usage;
    }
    expect(streamed).toEqual(texts);
    expect(streamedLogprobs).toEqual(logprobs);
    expect(finishes).toEqual(whole.choices.map((choice) => choice.finish_reason));
    expect(usage).toEqual(whole.usage!);
    expect(atBaseline(await eventually(() => health(server.url), atBaseline))).toBe(true);
  });

  test('each choice is a stream among MAX_CONCURRENT_STREAMS: n past the bound is 400, n past the free places 429', async () => {
    const small = await startTestServer(server.pool.model.checkpoint!, { INFERENCE_WORKERS: '1', MAX_CONCURRENT_STREAMS: '3' });
    const smallClient = new OpenAI({ baseURL: `${small.url}/v1`, apiKey: 'unused', maxRetries: 0 });
    try {
      const refused = (n: number) => smallClient.chat.completions.create({ model: 'tiny', messages: withImage(), max_tokens: 2, n }).then(() => 200, (e: InstanceType<typeof OpenAI.APIError>) => e.status);
      expect(await refused(4)).toBe(400);
      const controller = new AbortController();
      // Its long prompt holds both places for seconds while it is read, until its client leaves.
      const open = await smallClient.chat.completions.create({ model: 'tiny', messages: withImage('x'.repeat(300_000)), max_tokens: 1, n: 2, stream: true }, { signal: controller.signal });
      const reading = (async () => {
        for await (const _ of open);
      })().catch(() => {});
      await eventually(() => health(small.url), (h) => h.streams === 2);
      expect(await refused(2)).toBe(429);
      // One place is left: n = 1 is admitted, and answered once the long one has gone.
      const fits = refused(1);
      await eventually(() => health(small.url), (h) => h.streams === 3);
      controller.abort();
      await reading;
      expect(await fits).toBe(200);
      expect(atBaseline(await eventually(() => health(small.url), atBaseline))).toBe(true);
    } finally {
      await small.shutdown();
    }
  });

  test("logit_bias and the penalties as OpenAI's API takes them; an empty tools list and a text response_format are fine", async () => {
    const completion = await client.chat.completions.create({ model: 'tiny', messages: withImage(), max_tokens: 6, temperature: 0, logit_bias: { 120: 100 }, presence_penalty: 0.5, frequency_penalty: 0.5, tools: [], response_format: { type: 'text' } });
    expect(completion.choices[0]!.message.content).toBe('xxxxxx');
  });

  test('text-only conversations work too', async () => {
    const completion = await client.chat.completions.create({
      model: 'tiny',
      messages: [{ role: 'system', content: 'You caption.' }, { role: 'user', content: 'Hello' }],
      max_completion_tokens: 3,
    });
    expect(completion.usage!.prompt_tokens).toBe('You caption.\nHello'.length);
  });

  test('one newline between two messages that hold something: none for an empty message or an assistant turn of content null', async () => {
    const promptTokens = async (messages: OpenAI.ChatCompletionMessageParam[]) => (await client.chat.completions.create({ model: 'tiny', messages, max_tokens: 1 })).usage!.prompt_tokens;
    const image: OpenAI.ChatCompletionMessageParam = { role: 'user', content: [{ type: 'image_url', image_url: { url: dataUrl } }] };
    // 'a', '\n', the image, '\n', 'b'.
    expect(await promptTokens([{ role: 'user', content: 'a' }, { role: 'assistant', content: null }, { role: 'user', content: '' }, image, { role: 'user', content: 'b' }])).toBe(5);
    // Images alone get the caption prompt before them, and are still one newline apart.
    expect(await promptTokens([image, image])).toBe('This is an image of '.length + 3);
  });

  test('a conversation with no text and no image is refused: there is nothing to write about', async () => {
    for (const messages of [[{ role: 'user', content: '' }], [{ role: 'system', content: [] }, { role: 'assistant', content: null }]]) {
      const response = await fetch(`${server.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ messages }) });
      const { error } = (await response.json()) as { error: { code: string; message: string; field: string } };
      expect({ status: response.status, field: error.field }).toEqual({ status: 400, field: 'messages' });
      expect(error.message).toContain('nothing to write about');
    }
  });

  test('errors arrive as OpenAI API errors with the JSON message', async () => {
    const cases: [Parameters<typeof client.chat.completions.create>[0], number, string][] = [
      [{ model: 'tiny', messages: [] }, 400, 'messages'],
      [{ model: 'tiny', messages: withImage(), temperature: 5 }, 400, 'temperature'],
      [{ model: 'tiny', messages: withImage(), n: 17 }, 400, 'n'],
      [{ model: 'tiny', messages: withImage(), tools: [{ type: 'function', function: { name: 'look' } }] }, 400, 'tools'],
      [{ model: 'tiny', messages: withImage(), response_format: { type: 'json_object' } }, 400, 'response_format'],
      [{ model: 'tiny', messages: withImage(), presence_penalty: 3 }, 400, 'presence_penalty'],
      [{ model: 'tiny', messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'https://example.com/cat.jpg' } }] }] }, 400, 'not fetched'],
      [{ model: 'tiny', messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'data:image/png;base64,aGVsbG8=' } }] }] }, 415, 'messages[0].content[0].image_url.url'],
    ];
    for (const [request, status, mention] of cases) {
      const error = await client.chat.completions.create(request).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(error).toBeInstanceOf(OpenAI.APIError);
      expect((error as InstanceType<typeof OpenAI.APIError>).status).toBe(status);
      expect((error as Error).message).toContain(mention);
    }
  });

  test("an error carries OpenAI's type and param, which its client reads", async () => {
    const error = (await client.chat.completions.create({ model: 'tiny', messages: withImage(), temperature: 5 }).catch((e: unknown) => e)) as InstanceType<typeof OpenAI.APIError>;
    expect({ type: error.type, param: error.param, code: error.code }).toEqual({ type: 'invalid_request_error', param: 'temperature', code: 'invalid_request' });
  });

  test('stream_options without stream: true is refused, as by OpenAI', async () => {
    const response = await fetch(`${server.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ messages: withImage(), stream_options: { include_usage: true } }) });
    expect(response.status).toBe(400);
    expect(((await response.json()) as { error: { field: string } }).error.field).toBe('stream_options');
  });

  test('a request refused for one image is answered once its other images are decoded: none goes on decoding with its place given up', async () => {
    const processor = server.pool.model.imageProcessor;
    const decode = processor.decode;
    let decoding = 0;
    processor.decode = async (input) => {
      decoding++;
      try {
        // A large image takes a while; the refused one fails at once.
        await Bun.sleep(200);
        return await decode.call(processor, input);
      } finally {
        decoding--;
      }
    };
    try {
      const part = (url: string) => ({ type: 'image_url', image_url: { url } });
      const body = JSON.stringify({ messages: [{ role: 'user', content: [part('data:image/png;base64,aGVsbG8='), part(dataUrl), part(dataUrl)] }] });
      const response = await fetch(`${server.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
      expect(response.status).toBe(415);
      expect(decoding).toBe(0);
    } finally {
      processor.decode = decode;
    }
  });

  test('an image error names the JSON path of the image, not "image"', async () => {
    const truncated = (await jpeg()).subarray(0, 200).toString('base64');
    const cases: [unknown, number, string, string][] = [
      [{ type: 'image_url', image_url: { url: 'data:image/png;base64,aGVsbG8=' } }, 415, 'unsupported_media', 'messages[1].content[1].image_url.url'],
      [{ type: 'image_url', image_url: { url: `data:image/jpeg;base64,${truncated}` } }, 400, 'image_truncated', 'messages[1].content[1].image_url.url'],
      [{ type: 'image_url', image_url: 'data:image/png;base64,!!' }, 400, 'invalid_request', 'messages[1].content[1].image_url'],
      // A part that is wrong inside is named, not the message's whole content.
      [{ type: 'image_url', image_url: {} }, 400, 'invalid_request', 'messages[1].content[1].image_url.url'],
      [{ type: 'input_audio', input_audio: { data: 'AAAA', format: 'wav' } }, 400, 'invalid_request', 'messages[1].content[1].type'],
    ];
    for (const [part, status, code, field] of cases) {
      const messages = [{ role: 'system', content: 'You caption.' }, { role: 'user', content: [{ type: 'image_url', image_url: { url: dataUrl } }, part] }];
      const response = await fetch(`${server.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ messages }) });
      const { error } = (await response.json()) as { error: { code: string; message: string; field: string } };
      expect({ status: response.status, code: error.code, field: error.field }).toEqual({ status, code, field });
      expect(error.message).toStartWith(`${field}: `);
    }
  });

  test('a stream the client abandons stops and frees its tensors', async () => {
    const controller = new AbortController();
    const stream = await client.chat.completions.create(
      { model: 'tiny', messages: withImage(), max_tokens: 1000, stream: true },
      { signal: controller.signal },
    );
    let chunks = 0;
    await (async () => {
      for await (const _ of stream) if (++chunks === 3) controller.abort();
    })().catch(() => {});
    expect(atBaseline(await eventually(() => health(server.url), atBaseline, 5_000))).toBe(true);
  });

  test('models.list names the served model', async () => {
    const models = await client.models.list();
    expect(models.data.map((m) => m.id)).toEqual(['tiny']);
    expect((await client.models.retrieve('tiny')).id).toBe('tiny');
  });
});
