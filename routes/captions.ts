/**
 * POST /v1/captions: an image (multipart file or base64 in JSON) and an optional prompt in, the
 * generated text out, as SSE (start, progress... while a long prompt is read, token..., done | error)
 * or, with `Accept: application/json` or `stream=false`, as one JSON object.
 */
import { randomUUID } from 'node:crypto';
import { Hono, type Context } from 'hono';
import { clientKey } from '../src/http/client-key.ts';
import { invalidField } from '../src/http/errors.ts';
import { readBoolean, readGenerationParams, type FieldReader } from '../src/http/generation-params.ts';
import { imageBytesFromJson } from '../src/http/image-data.ts';
import { DEFAULT_PROMPT, finalEvent, generateText, promptWithImages, type GenerationDone, type GenerationParams } from '../src/inference/generation.ts';
import { openAiLogprob, tokenEventFields } from '../src/inference/logprobs.ts';
import { acceptBodies, bodyKind, Form, readJsonObject, uploadLimit } from '../src/http/request-body.ts';
import { eventStream } from '../src/http/sse.ts';
import type { Services } from '../src/http/services.ts';

/**
 * A caption describes the image rather than drawing from the model's distribution: without a
 * temperature this route decodes greedily, as image-to-text pipelines do. The chat route keeps
 * OpenAI's default of 1.
 */
const CAPTION_TEMPERATURE = 0;

const FIELDS = ['image', 'prompt', 'max_tokens', 'temperature', 'top_k', 'top_p', 'min_p', 'seed', 'stop', 'stream', 'logprobs', 'top_logprobs'] as const;

interface CaptionInput {
  image: Uint8Array;
  prompt: string;
  params: GenerationParams;
  stream: boolean | undefined;
}

export function captionsRouter({ pool, config, metrics }: Services): Hono {
  const router = new Hono();
  router.post(
    '/',
    acceptBodies(['multipart', 'json']),
    uploadLimit(config.maxUploadBytes),
    async (c) => {
      const receivedAt = performance.now();
      const admission = pool.admit(clientKey(c));
      let streaming = false;
      try {
        const input = await readCaptionInput(c, config);
        const { imageProcessor, id: model, backend, untrained } = pool.model;
        const decodeStart = performance.now();
        const pixels = await imageProcessor.decode(input.image);
        const request = { ...promptWithImages(input.prompt, 1), images: [pixels], params: input.params, receivedAt, preprocessMs: performance.now() - decodeStart };
        const id = `cap-${randomUUID()}`;

        if (!(input.stream ?? !prefersJson(c))) {
          const done = await finalEvent(generateText(admission, request, c.req.raw.signal, metrics));
          return c.json({ id, object: 'caption', model, backend: backend.name, untrained, ...doneFields(done) });
        }
        streaming = true;
        return eventStream(c, {
          heartbeatMs: config.heartbeatMs,
          onEnd: admission.release,
          produce: async (stream, signal) => {
            await stream.writeSSE({ event: 'start', data: JSON.stringify({ id, model, backend: backend.name, untrained }) });
            for await (const event of generateText(admission, request, signal, metrics)) {
              if (event.type === 'progress') {
                await stream.writeSSE({ event: 'progress', data: JSON.stringify({ tokens_read: event.tokensRead, prompt_tokens: event.promptTokens }) });
              } else if (event.type === 'token') {
                await stream.writeSSE({ event: 'token', data: JSON.stringify({ text: event.text, token_id: event.tokenId, index: event.index, ...tokenEventFields(event.logprob) }) });
              } else {
                await stream.writeSSE({ event: 'done', data: JSON.stringify(doneFields(event)) });
              }
            }
          },
        });
      } finally {
        if (!streaming) admission.release();
      }
    },
  );
  return router;
}

/** JSON when Accept asks for it and does not also accept an event stream; SSE otherwise. */
function prefersJson(c: Context): boolean {
  const accept = c.req.header('accept') ?? '';
  return accept.includes('application/json') && !accept.includes('text/event-stream');
}

async function readCaptionInput(c: Context, limits: Services['config']): Promise<CaptionInput> {
  let read: FieldReader;
  let image: Uint8Array | undefined;
  if (bodyKind(c, ['multipart', 'json']) === 'multipart') {
    const form = await Form.read(c);
    refuseUnknown(form.unknownFields(FIELDS));
    image = await form.bytes('image');
    read = (field) => (field === 'stop' ? nonEmpty(form.texts('stop')) : form.text(field));
  } else {
    const body = await readJsonObject(c);
    refuseUnknown(Object.keys(body).filter((key) => !(FIELDS as readonly string[]).includes(key)));
    if (body.image !== undefined) image = imageBytesFromJson('image', body.image, { bareBase64: true });
    read = (field) => body[field];
  }
  if (!image) throw invalidField('image', 'is required: send an image file in the field "image"');
  const prompt = read('prompt') ?? DEFAULT_PROMPT;
  if (typeof prompt !== 'string') throw invalidField('prompt', 'must be a string');
  const promptBytes = Buffer.byteLength(prompt, 'utf8');
  if (promptBytes > limits.maxPromptBytes) throw invalidField('prompt', `is ${promptBytes} bytes of UTF-8, more than the limit of ${limits.maxPromptBytes} (MAX_PROMPT_BYTES)`);
  return { image, prompt, params: { temperature: CAPTION_TEMPERATURE, ...readGenerationParams(read, limits) }, stream: readBoolean(read, 'stream') };
}

function refuseUnknown(fields: string[]): void {
  if (fields[0] !== undefined) throw invalidField(fields[0], `is not a field of this route (expected ${FIELDS.join(', ')})`);
}

function nonEmpty<T>(list: T[]): T[] | undefined {
  return list.length > 0 ? list : undefined;
}

function doneFields(done: GenerationDone) {
  const logprobs = done.logprobs && { logprobs: { content: done.logprobs.map((logprob) => openAiLogprob(logprob, true)) } };
  return { text: done.text, finish_reason: done.finishReason, usage: done.usage, timings: done.timings, ...logprobs };
}
