/**
 * POST /v1/chat/completions, OpenAI-compatible (usable with the official `openai` client): messages
 * whose content holds text and `image_url` parts with `data:` URLs; `stream: true` gives
 * chat.completion.chunk events then `data: [DONE]` (and, while a long prompt is read, SSE comment
 * lines `: progress read/total`, which clients skip), otherwise one chat.completion object.
 *
 * The model is a byte-level captioner, not a chat model: its prompt is the messages' text in order
 * (one newline between two messages that hold something, roles not spelled out) with an image
 * placeholder where each image part stands. A conversation with images and no text gets the
 * caption prompt of /v1/captions.
 * `n` choices are n generations from the prompt, each a stream among MAX_CONCURRENT_STREAMS, which a
 * worker runs as one batch.
 */
import { randomUUID } from 'node:crypto';
import { Hono } from 'hono';
import { z } from 'zod';
import type { FinishReason } from '../model/generate.ts';
import { clientKey } from '../src/http/client-key.ts';
import { invalidField, toApiError } from '../src/http/errors.ts';
import { booleanInput, generationFields, numberInput, toGenerationParams, type ParamLimits } from '../src/http/generation-params.ts';
import { imageBytesFromJson } from '../src/http/image-data.ts';
import { openAiLogprob } from '../src/http/logprob-fields.ts';
import type { TokenLogprob } from '../src/inference/logprobs.ts';
import { DEFAULT_PROMPT, finalEvents, generateText, tokenizer, type GenerationDone, type Timings, type Usage } from '../src/inference/generation.ts';
import { acceptBodies, readJsonObject, bodyLimit } from '../src/http/request-body.ts';
import type { Services } from '../src/http/services.ts';
import { eventStream } from '../src/http/sse.ts';
import { parseFields } from '../src/http/validation.ts';
import type { RouteDoc } from '../src/http/openapi.ts';
import { failsWith } from '../src/schema/issues.ts';
import { GENERATION_ANSWERS } from '../src/http/openapi.ts';

const ROLES = ['system', 'developer', 'user', 'assistant'] as const;
/** Images per request: each one costs a ViT pass in the worker. */
const MAX_IMAGES = 4;
/** Choices per request (n): each one is a generation, and a ViT pass per image. */
const MAX_CHOICES = 16;

const NO_TOOLS = 'tool and function calls are not supported: this model writes text about images';

const PART = 'must be {"type": "text", "text": ...} or {"type": "image_url", "image_url": {"url": "data:..."}}';

/**
 * OpenAI's request body, as far as this server reads it. Fields it does not read (model, user, ...)
 * are let through, as OpenAI clients send them.
 */
export function chatSchema(limits: ParamLimits) {
  const part = z.discriminatedUnion(
    'type',
    [
      z.object({ type: z.literal('text'), text: z.string(failsWith(() => PART)) }),
      z.object({ type: z.literal('image_url'), image_url: z.union([z.string(), z.object({ url: z.string(failsWith(() => 'must be a data: URL (data:image/png;base64,...)')) })], failsWith(() => PART)) }),
    ],
    failsWith(() => PART),
  );
  const message = z.object(
    {
      role: z.enum(ROLES, failsWith(() => `must be one of ${ROLES.join(', ')}`)),
      // An assistant turn that only called tools has content null: no text.
      content: z.union([z.string(), z.array(part), z.null()], failsWith(() => 'must be a string or an array of content parts')),
    },
    failsWith(() => 'must be an object with role and content'),
  );
  const { max_tokens, ...fields } = generationFields(limits);
  const nonEmpty = failsWith(() => 'must be a non-empty array of messages');
  return z.object({
    messages: z.array(message, nonEmpty).min(1, nonEmpty),
    max_tokens,
    max_completion_tokens: max_tokens,
    ...fields,
    n: numberInput({ integer: true, min: 1, max: Math.min(MAX_CHOICES, limits.maxConcurrentStreams) }),
    // What this model cannot do is refused rather than ignored: a client that asks for tools or JSON
    // would otherwise take plain text for the answer it asked for.
    tools: z.array(z.unknown()).max(0, failsWith(() => NO_TOOLS)).nullish(),
    functions: z.array(z.unknown()).max(0, failsWith(() => NO_TOOLS)).nullish(),
    tool_choice: z.literal('none', failsWith(() => NO_TOOLS)).nullish(),
    function_call: z.literal('none', failsWith(() => NO_TOOLS)).nullish(),
    response_format: z.object({ type: z.literal('text', failsWith(() => 'only {"type": "text"}: this model writes plain text and cannot promise JSON')) }, failsWith(() => 'must be {"type": "text"}')).nullish(),
    stream: booleanInput,
    stream_options: z.object({ include_usage: booleanInput }).nullish(),
  });
}

type ChatMessage = z.output<ReturnType<typeof chatSchema>>['messages'][number];

export function chatDocs(limits: ParamLimits): RouteDoc[] {
  return [
    {
      method: 'post',
      path: '/completions',
      summary: "OpenAI's chat completions, with image_url parts as data: URLs; stream: true for chunks then [DONE]",
      body: { 'application/json': chatSchema(limits) },
      responses: { 200: { description: 'a chat.completion object, or with stream: true chat.completion.chunk events', type: ['application/json', 'text/event-stream'] }, ...GENERATION_ANSWERS },
    },
  ];
}

interface ChatPrompt {
  prompt: number[];
  imagePositions: number[];
  images: Uint8Array[];
  /** The JSON path of each image, such as messages[0].content[1].image_url.url, for its errors. */
  imageFields: string[];
}

export function chatRouter({ pool, config, metrics }: Services): Hono {
  const router = new Hono();
  const schema = chatSchema(config);
  router.post(
    '/completions',
    acceptBodies(['json']),
    bodyLimit(config.maxUploadBytes),
    async (c) => {
      const receivedAt = performance.now();
      pool.checkRoom();
      const body = parseFields(schema, await readJsonObject(c));
      const { prompt, imagePositions, images, imageFields } = readMessages(body.messages, config.maxPromptBytes);
      const params = toGenerationParams(body, body.max_completion_tokens ?? body.max_tokens);
      // As OpenAI's API: options of a stream, asked for without one, are a mistake worth telling.
      if (body.stream_options && !body.stream) throw invalidField('stream_options', 'is only allowed with stream: true');
      const includeUsage = body.stream_options?.include_usage ?? false;
      const choices = body.n ?? 1;
      const admission = pool.admit(clientKey(c), choices);
      let streaming = false;
      try {
        const { imageProcessor } = admission.model;
        const decodeStart = performance.now();
        // Every decode ends before the answer, a failed one too: libvips cannot stop one midway, and a
        // request answered early would leave its other images decoding with its place given up.
        const decoded = await Promise.allSettled(images.map((bytes) => imageProcessor.decode(bytes)));
        const failed = decoded.findIndex((result) => result.status === 'rejected');
        if (failed >= 0) throw toApiError((decoded[failed] as PromiseRejectedResult).reason, imageFields[failed]);
        const pixels = decoded.map((result) => (result as PromiseFulfilledResult<Float32Array>).value);
        const request = { prompt, imagePositions, images: pixels, params, receivedAt, preprocessMs: performance.now() - decodeStart, choices };
        const id = `chatcmpl-${randomUUID()}`;
        const created = Math.floor(Date.now() / 1000);

        if (!body.stream) {
          const { model, done } = await finalEvents(generateText(admission, request, c.req.raw.signal, metrics));
          return c.json({
            id,
            object: 'chat.completion',
            created,
            model: model.id,
            choices: done.map((d) => ({ index: d.choice, message: { role: 'assistant', content: d.text, refusal: null }, logprobs: choiceLogprobs(d.logprobs), finish_reason: openAiFinish(d) })),
            ...totals(done),
          });
        }
        streaming = true;
        let model: string;
        // With include_usage, OpenAI's chunks carry usage: null until the last, which carries the totals.
        const chunk = (choices: unknown[], extra: Record<string, unknown> = includeUsage ? { usage: null } : {}) =>
          JSON.stringify({ id, object: 'chat.completion.chunk', created, model, choices, ...extra });
        // With logprobs, a token whose text is still pending (part of a character) travels with the next chunk.
        const pending: TokenLogprob[][] = Array.from({ length: choices }, () => []);
        const delta = (index: number, content: Record<string, unknown>, finishReason: string | null = null) => {
          const logprobs = pending[index]!.length === 0 ? null : choiceLogprobs(pending[index]);
          pending[index] = [];
          return { index, delta: content, logprobs, finish_reason: finishReason };
        };
        return eventStream(c, {
          heartbeatMs: config.heartbeatMs,
          onEnd: admission.release,
          // As OpenAI's API does: an error object in a data line, which the openai client raises.
          writeError: (stream, error) => stream.writeSSE({ data: JSON.stringify(error.toJSON()) }),
          produce: async (stream, signal) => {
            const done: GenerationDone[] = [];
            for await (const event of generateText(admission, request, signal, metrics)) {
              if (event.type === 'start') {
                model = event.model.id;
                for (let index = 0; index < choices; index++) await stream.writeSSE({ data: chunk([delta(index, { role: 'assistant', content: '' })]) });
                continue;
              }
              if (event.type === 'progress') {
                // A comment line, which OpenAI clients skip: a chunk they do not know could break them.
                await stream.write(`: progress ${event.tokensRead}/${event.promptTokens}\n\n`);
                continue;
              }
              if (event.type === 'token') {
                if (event.logprob) pending[event.choice]!.push(event.logprob);
                if (event.text) await stream.writeSSE({ data: chunk([delta(event.choice, { content: event.text })]) });
                continue;
              }
              await stream.writeSSE({ data: chunk([delta(event.choice, {}, openAiFinish(event))]) });
              done.push(event);
              if (done.length < choices) continue;
              if (includeUsage) await stream.writeSSE({ data: chunk([], totals(done)) });
              await stream.writeSSE({ data: '[DONE]' });
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

/**
 * The usage of all the choices (the prompt counted once, as OpenAI counts it), and the timings of
 * the one that finished last, whose total is the request's.
 */
function totals(done: GenerationDone[]): { usage: Usage; timings: Timings } {
  const completion = done.reduce((sum, d) => sum + d.usage.completion_tokens, 0);
  const prompt = done[0]!.usage.prompt_tokens;
  const last = done.reduce((a, b) => (b.timings.total_ms > a.timings.total_ms ? b : a));
  return { usage: { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion }, timings: last.timings };
}

/** OpenAI's `choices[].logprobs`: null unless the request asked for them. */
function choiceLogprobs(logprobs: TokenLogprob[] | undefined) {
  return logprobs ? { content: logprobs.map((logprob) => openAiLogprob(logprob)), refusal: null } : null;
}

function openAiFinish(done: GenerationDone): 'stop' | 'length' {
  const reasons: Record<FinishReason, 'stop' | 'length'> = { eos: 'stop', stop: 'stop', aborted: 'stop', length: 'length' };
  return reasons[done.finishReason];
}

function readMessages(messages: ChatMessage[], maxPromptBytes: number): ChatPrompt {
  const prompt: number[] = [];
  const imagePositions: number[] = [];
  const images: Uint8Array[] = [];
  const imageFields: string[] = [];
  let textBytes = 0;
  let hasText = false;
  // Something went into the prompt, or was counted for it: text past the limit is counted, not built.
  let started = false;
  const addBytes = (bytes: Uint8Array | number[]) => {
    textBytes += bytes.length;
    // Not push(...bytes): a long prompt's bytes would be more arguments than a call may take.
    for (const byte of bytes) prompt.push(byte);
  };
  messages.forEach(({ role, content }, m) => {
    const field = `messages[${m}]`;
    // One newline between two messages that each put something into the prompt, text or image.
    let separated = !started;
    const startPart = () => {
      if (!separated) addBytes(tokenizer.encode('\n'));
      separated = true;
      started = true;
    };
    const addText = (text: string) => {
      if (text === '') return;
      startPart();
      hasText = true;
      const size = Buffer.byteLength(text);
      // Past the limit only the size counts, for the error: a prompt of megabytes is never built.
      if (textBytes + size > maxPromptBytes) textBytes += size;
      else addBytes(tokenizer.encode(text));
    };
    if (typeof content === 'string') return addText(content);
    if (content === null) {
      if (role === 'assistant') return;
      throw invalidField(`${field}.content`, 'must be a string or an array of content parts');
    }
    content.forEach((part, p) => {
      const partField = `${field}.content[${p}]`;
      if (part.type === 'text') return addText(part.text);
      if (images.length === MAX_IMAGES) throw invalidField(partField, `at most ${MAX_IMAGES} images per request`);
      const { image_url: imageUrl } = part;
      const url = typeof imageUrl === 'string' ? imageUrl : imageUrl.url;
      const urlField = typeof imageUrl === 'string' ? `${partField}.image_url` : `${partField}.image_url.url`;
      images.push(imageBytesFromJson(urlField, url, { bareBase64: false }));
      imageFields.push(urlField);
      startPart();
      imagePositions.push(prompt.length);
      prompt.push(tokenizer.imageTokenId);
    });
  });
  if (textBytes > maxPromptBytes) throw invalidField('messages', `hold ${textBytes} bytes of UTF-8 text, more than the limit of ${maxPromptBytes} (MAX_PROMPT_BYTES)`);
  if (prompt.length === 0) throw invalidField('messages', 'hold no text and no image: there is nothing to write about');
  if (!hasText) {
    // Images alone: caption them, as /v1/captions does.
    const caption = tokenizer.encode(DEFAULT_PROMPT);
    return { prompt: [...caption, ...prompt], imagePositions: imagePositions.map((p) => p + caption.length), images, imageFields };
  }
  return { prompt, imagePositions, images, imageFields };
}
