import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import OpenAI from 'openai';
import type { RunningServer } from '../../src/http/server.ts';
import { allEvents, atBaseline, eventually, health, makeCheckpoint, startTestServer, TINY_MODEL } from './helpers.ts';

let server: RunningServer;
let client: OpenAI;

beforeAll(async () => {
  // A memory step size this large overshoots at every store, and with neither the residual norm nor
  // the surprise clip nothing bounds it: a few chunks in, the logits are NaN.
  server = await startTestServer(await makeCheckpoint({ ...TINY_MODEL, neuralMemoryKwargs: { maxLr: 1e5, memModelNormAddResidual: false, maxGradNorm: 0 } }));
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
});

afterAll(async () => {
  await server.shutdown();
});

const longText: OpenAI.ChatCompletionMessageParam[] = [{ role: 'user', content: 'ab'.repeat(200) }];

describe('a model whose numbers overflow on a long input', () => {
  test('answers 422 model_overflow instead of streaming bytes sampled from NaN', async () => {
    const error = await client.chat.completions.create({ model: 'tiny', messages: longText, max_tokens: 5 }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(OpenAI.APIError);
    expect((error as InstanceType<typeof OpenAI.APIError>).status).toBe(422);
    expect((error as InstanceType<typeof OpenAI.APIError>).code).toBe('model_overflow');
    expect((error as Error).message).toContain("the model's state overflowed");
  });

  test('inside a stream, as an error event after the start', async () => {
    const body = new FormData();
    body.append('image', new Blob([await Bun.file('examples/red-circle.png').arrayBuffer()], { type: 'image/png' }));
    body.append('prompt', 'ab'.repeat(200));
    const events = await allEvents(await fetch(`${server.url}/v1/captions`, { method: 'POST', body }));
    expect(events.map((e) => e.event)).toEqual(['start', 'error']);
    // The one shape of event: error across the API: the body of an HTTP error, nothing beside it.
    expect(Object.keys(events[1]!.data)).toEqual(['error']);
    expect(Object.keys(events[1]!.data.error).sort()).toEqual(['code', 'message', 'param', 'type']);
    expect(events[1]!.data.error.code).toBe('model_overflow');
  });

  test('leaves every worker at its tensor baseline', async () => {
    expect(atBaseline(await eventually(() => health(server.url), atBaseline))).toBe(true);
  });
});
