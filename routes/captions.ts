/**
 * POST /v1/captions: an image (multipart file or base64 in JSON) and an optional prompt in, the
 * generated text out, as SSE (start, progress... while a long prompt is read, token..., done | error)
 * or, with `Accept: application/json` or `stream=false`, as one JSON object.
 */
import { randomUUID } from 'node:crypto';
import { Hono, type Context } from 'hono';
import { z } from 'zod';
import { clientKey } from '../src/http/client-key.ts';
import { invalidField } from '../src/http/errors.ts';
import { booleanInput, generationFields, toGenerationParams, type ParamLimits } from '../src/http/generation-params.ts';
import { imageBytesFromJson } from '../src/http/image-data.ts';
import { GENERATION_ANSWERS, type RouteDoc } from '../src/http/openapi.ts';
import { DEFAULT_PROMPT, finalEvents, generateText, promptWithImages, type GenerationDone, type GenerationParams } from '../src/inference/generation.ts';
import { openAiLogprob, tokenEventFields } from '../src/http/logprob-fields.ts';
import { acceptBodies, bodyKind, Form, readJsonObject, bodyLimit } from '../src/http/request-body.ts';
import { eventStream } from '../src/http/sse.ts';
import { parseFields } from '../src/http/validation.ts';
import type { Services } from '../src/http/services.ts';
import { failsWith } from '../src/schema/issues.ts';

/**
 * A caption describes the image rather than drawing from the model's distribution: without a
 * temperature this route decodes greedily, as image-to-text pipelines do. The chat route keeps
 * OpenAI's default of 1.
 */
const CAPTION_TEMPERATURE = 0;

const MISSING_IMAGE = { form: 'is required: send an image file in the field "image"', json: 'is required: send the image as base64 in the field "image"' };

/** The body, as a multipart form (`image` a file) or as JSON (`image` base64, bare or as a data: URL). */
export function captionSchemas(limits: ParamLimits) {
  const fields = {
    prompt: z.string(failsWith(() => 'must be a string')).nullish().meta({ description: `the text before the image; default "${DEFAULT_PROMPT}"` }),
    ...generationFields(limits),
    stream: booleanInput.meta({ description: 'false for one JSON object; default: SSE unless Accept asks for application/json' }),
  };
  const names = ['image', ...Object.keys(fields)];
  // Typos such as `max_token` are refused, not ignored.
  const unknown = { error: (issue: { code?: string }) => (issue.code === 'unrecognized_keys' ? `is not a field of this route (expected ${names.join(', ')})` : undefined) };
  const missing = (body: 'form' | 'json', what: string) => failsWith((input) => (input === undefined ? MISSING_IMAGE[body] : `must be ${what}`));
  return {
    form: z.strictObject({ image: z.file(missing('form', 'an image file')), ...fields }, unknown),
    json: z.strictObject({ image: z.string(missing('json', 'base64 image data')).meta({ description: 'base64, bare or as a data: URL' }), ...fields }, unknown),
  };
}

type CaptionSchemas = ReturnType<typeof captionSchemas>;

interface CaptionInput {
  image: Uint8Array;
  prompt: string;
  params: GenerationParams;
  stream: boolean | undefined;
}

export function captionsRouter({ pool, config, metrics }: Services): Hono {
  const router = new Hono();
  const schemas = captionSchemas(config);
  router.post(
    '/',
    acceptBodies(['multipart', 'json']),
    bodyLimit(config.maxUploadBytes),
    async (c) => {
      const receivedAt = performance.now();
      pool.checkRoom();
      const input = await readCaptionInput(c, schemas, config);
      const admission = pool.admit(clientKey(c));
      let streaming = false;
      try {
        const { imageProcessor, backend } = admission.model;
        const decodeStart = performance.now();
        const pixels = await imageProcessor.decode(input.image);
        const request = { ...promptWithImages(input.prompt, 1), images: [pixels], params: input.params, receivedAt, preprocessMs: performance.now() - decodeStart };
        const id = `cap-${randomUUID()}`;

        if (!(input.stream ?? !prefersJson(c))) {
          const { model, done: [done] } = await finalEvents(generateText(admission, request, c.req.raw.signal, metrics));
          return c.json({ id, object: 'caption', model: model.id, backend: backend.name, untrained: model.untrained, ...doneFields(done!) });
        }
        streaming = true;
        return eventStream(c, {
          heartbeatMs: config.heartbeatMs,
          onEnd: admission.release,
          produce: async (stream, signal) => {
            for await (const event of generateText(admission, request, signal, metrics)) {
              if (event.type === 'start') {
                await stream.writeSSE({ event: 'start', data: JSON.stringify({ id, model: event.model.id, backend: backend.name, untrained: event.model.untrained }) });
              } else if (event.type === 'progress') {
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

export function captionsDocs(limits: ParamLimits): RouteDoc[] {
  const { form, json } = captionSchemas(limits);
  return [
    {
      method: 'post',
      path: '/',
      summary: 'Caption an image: SSE events start, progress, token, done (or error), or one JSON object',
      body: { 'multipart/form-data': form, 'application/json': json },
      responses: { 200: { description: 'text/event-stream by default; application/json with Accept: application/json or stream=false', type: ['text/event-stream', 'application/json'] }, ...GENERATION_ANSWERS },
    },
  ];
}

/** JSON when Accept asks for it and does not also accept an event stream; SSE otherwise. */
function prefersJson(c: Context): boolean {
  const accept = c.req.header('accept') ?? '';
  return accept.includes('application/json') && !accept.includes('text/event-stream');
}

async function readCaptionInput(c: Context, schemas: CaptionSchemas, limits: Services['config']): Promise<CaptionInput> {
  let image: Uint8Array;
  let fields: Omit<z.output<CaptionSchemas['json']>, 'image'>;
  if (bodyKind(c, ['multipart', 'json']) === 'multipart') {
    const { image: file, ...rest } = parseFields(schemas.form, (await Form.read(c)).fields({ lists: ['stop'], files: ['image'] }));
    image = new Uint8Array(await file.arrayBuffer());
    fields = rest;
  } else {
    const { image: data, ...rest } = parseFields(schemas.json, await readJsonObject(c));
    image = imageBytesFromJson('image', data, { bareBase64: true });
    fields = rest;
  }
  const prompt = fields.prompt ?? DEFAULT_PROMPT;
  const promptBytes = Buffer.byteLength(prompt, 'utf8');
  if (promptBytes > limits.maxPromptBytes) throw invalidField('prompt', `is ${promptBytes} bytes of UTF-8, more than the limit of ${limits.maxPromptBytes} (MAX_PROMPT_BYTES)`);
  return { image, prompt, params: { temperature: CAPTION_TEMPERATURE, ...toGenerationParams(fields) }, stream: fields.stream ?? undefined };
}

function doneFields(done: GenerationDone) {
  const logprobs = done.logprobs && { logprobs: { content: done.logprobs.map((logprob) => openAiLogprob(logprob, true)) } };
  return { text: done.text, finish_reason: done.finishReason, usage: done.usage, timings: done.timings, ...logprobs };
}
