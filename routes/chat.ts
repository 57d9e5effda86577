/**
 * POST /v1/chat/completions, OpenAI-compatible (usable with the official `openai` client): messages
 * whose content holds text and `image_url` parts with `data:` URLs; `stream: true` gives
 * chat.completion.chunk events then `data: [DONE]` (and, while a long prompt is read, SSE comment
 * lines `: progress read/total`, which clients skip), otherwise one chat.completion object.
 *
 * The model is a byte-level captioner, not a chat model: its prompt is the messages' text in order
 * (one newline between messages, roles not spelled out) with an image placeholder where each image
 * part stands. A conversation with images and no text gets the caption prompt of /v1/captions.
 */
import { randomUUID } from 'node:crypto';
import { Hono } from 'hono';
import type { FinishReason } from '../model/generate.ts';
import { clientKey } from '../src/http/client-key.ts';
import { invalidField, toApiError } from '../src/http/errors.ts';
import { readBoolean, readGenerationParams } from '../src/http/generation-params.ts';
import { imageBytesFromJson } from '../src/http/image-data.ts';
import { openAiLogprob, type TokenLogprob } from '../src/inference/logprobs.ts';
import { DEFAULT_PROMPT, finalEvent, generateText, tokenizer, type GenerationDone } from '../src/inference/generation.ts';
import { acceptBodies, readJsonObject, uploadLimit } from '../src/http/request-body.ts';
import type { Services } from '../src/http/services.ts';
import { eventStream } from '../src/http/sse.ts';

const ROLES = ['system', 'developer', 'user', 'assistant'];
/** Images per request: each one costs a ViT pass in the worker. */
const MAX_IMAGES = 4;

interface ChatPrompt {
  prompt: number[];
  imagePositions: number[];
  images: Uint8Array[];
  /** The JSON path of each image, such as messages[0].content[1].image_url.url, for its errors. */
  imageFields: string[];
}

export function chatRouter({ pool, config, metrics }: Services): Hono {
  const router = new Hono();
  router.post(
    '/completions',
    acceptBodies(['json']),
    uploadLimit(config.maxUploadBytes),
    async (c) => {
      const receivedAt = performance.now();
      const admission = pool.admit(clientKey(c));
      let streaming = false;
      try {
        const body = await readJsonObject(c);
        const { prompt, imagePositions, images, imageFields } = readMessages(body.messages, config.maxPromptBytes);
        if (body.n !== undefined && body.n !== 1) throw invalidField('n', 'only n = 1 is supported');
        const read = (field: string) => body[field];
        const params = readGenerationParams(read, config, body.max_completion_tokens !== undefined ? 'max_completion_tokens' : 'max_tokens');
        const includeUsage = readBoolean((field) => (body.stream_options as Record<string, unknown> | undefined)?.[field], 'include_usage') ?? false;
        const { imageProcessor, id: model } = pool.model;
        const decodeStart = performance.now();
        const pixels = await Promise.all(
          images.map((bytes, i) =>
            imageProcessor.decode(bytes).catch((error: unknown) => {
              throw toApiError(error, imageFields[i]);
            }),
          ),
        );
        const request = { prompt, imagePositions, images: pixels, params, receivedAt, preprocessMs: performance.now() - decodeStart };
        const id = `chatcmpl-${randomUUID()}`;
        const created = Math.floor(Date.now() / 1000);

        if (!readBoolean(read, 'stream')) {
          const done = await finalEvent(generateText(admission, request, c.req.raw.signal, metrics));
          return c.json({
            id,
            object: 'chat.completion',
            created,
            model,
            choices: [{ index: 0, message: { role: 'assistant', content: done.text, refusal: null }, logprobs: choiceLogprobs(done.logprobs), finish_reason: openAiFinish(done) }],
            usage: done.usage,
            timings: done.timings,
          });
        }
        streaming = true;
        const chunk = (choices: unknown[], extra: Record<string, unknown> = {}) =>
          JSON.stringify({ id, object: 'chat.completion.chunk', created, model, choices, ...extra });
        // With logprobs, a token whose text is still pending (part of a character) travels with the next chunk.
        let pending: TokenLogprob[] = [];
        const delta = (content: Record<string, unknown>, finishReason: string | null = null) => {
          const logprobs = pending.length === 0 ? null : choiceLogprobs(pending);
          pending = [];
          return { index: 0, delta: content, logprobs, finish_reason: finishReason };
        };
        return eventStream(c, {
          heartbeatMs: config.heartbeatMs,
          onEnd: admission.release,
          // As OpenAI's API does: an error object in a data line, which the openai client raises.
          writeError: (stream, error) => stream.writeSSE({ data: JSON.stringify(error.toJSON()) }),
          produce: async (stream, signal) => {
            await stream.writeSSE({ data: chunk([delta({ role: 'assistant', content: '' })]) });
            for await (const event of generateText(admission, request, signal, metrics)) {
              if (event.type === 'progress') {
                // A comment line, which OpenAI clients skip: a chunk they do not know could break them.
                await stream.write(`: progress ${event.tokensRead}/${event.promptTokens}\n\n`);
                continue;
              }
              if (event.type === 'token') {
                if (event.logprob) pending.push(event.logprob);
                if (event.text) await stream.writeSSE({ data: chunk([delta({ content: event.text })]) });
                continue;
              }
              await stream.writeSSE({ data: chunk([delta({}, openAiFinish(event))]) });
              if (includeUsage) await stream.writeSSE({ data: chunk([], { usage: event.usage, timings: event.timings }) });
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

/** OpenAI's `choices[].logprobs`: null unless the request asked for them. */
function choiceLogprobs(logprobs: TokenLogprob[] | undefined) {
  return logprobs ? { content: logprobs.map((logprob) => openAiLogprob(logprob)), refusal: null } : null;
}

function openAiFinish(done: GenerationDone): 'stop' | 'length' {
  const reasons: Record<FinishReason, 'stop' | 'length'> = { eos: 'stop', stop: 'stop', aborted: 'stop', length: 'length' };
  return reasons[done.finishReason];
}

function readMessages(messages: unknown, maxPromptBytes: number): ChatPrompt {
  if (!Array.isArray(messages) || messages.length === 0) throw invalidField('messages', 'must be a non-empty array of messages');
  const prompt: number[] = [];
  const imagePositions: number[] = [];
  const images: Uint8Array[] = [];
  const imageFields: string[] = [];
  let textBytes = 0;
  const addText = (text: string) => {
    const bytes = tokenizer.encode(text);
    textBytes += bytes.length;
    // Not push(...bytes): a long prompt's bytes would be more arguments than a call may take.
    for (const byte of bytes) prompt.push(byte);
  };
  messages.forEach((message: unknown, m) => {
    const field = `messages[${m}]`;
    if (typeof message !== 'object' || message === null) throw invalidField(field, 'must be an object with role and content');
    const { role, content } = message as Record<string, unknown>;
    if (typeof role !== 'string' || !ROLES.includes(role)) throw invalidField(`${field}.role`, `must be one of ${ROLES.join(', ')}`);
    if (m > 0 && textBytes > 0) addText('\n');
    if (typeof content === 'string') return addText(content);
    // OpenAI clients send an assistant turn that only called tools with content null: no text.
    if (content === null && role === 'assistant') return;
    if (!Array.isArray(content)) throw invalidField(`${field}.content`, 'must be a string or an array of content parts');
    content.forEach((part: unknown, p) => {
      const partField = `${field}.content[${p}]`;
      const { type, text, image_url: imageUrl } = (part ?? {}) as Record<string, unknown>;
      if (type === 'text' && typeof text === 'string') return addText(text);
      if (type === 'image_url') {
        if (images.length === MAX_IMAGES) throw invalidField(partField, `at most ${MAX_IMAGES} images per request`);
        const url = typeof imageUrl === 'string' ? imageUrl : (imageUrl as Record<string, unknown> | undefined)?.url;
        const urlField = typeof imageUrl === 'string' ? `${partField}.image_url` : `${partField}.image_url.url`;
        images.push(imageBytesFromJson(urlField, url, { bareBase64: false }));
        imageFields.push(urlField);
        imagePositions.push(prompt.length);
        prompt.push(tokenizer.imageTokenId);
        return;
      }
      throw invalidField(partField, 'must be {"type": "text", "text": ...} or {"type": "image_url", "image_url": {"url": "data:..."}}');
    });
  });
  if (textBytes > maxPromptBytes) throw invalidField('messages', `hold ${textBytes} bytes of UTF-8 text, more than the limit of ${maxPromptBytes} (MAX_PROMPT_BYTES)`);
  if (textBytes === 0) {
    // Images alone: caption them, as /v1/captions does.
    const caption = tokenizer.encode(DEFAULT_PROMPT);
    return { prompt: [...caption, ...prompt], imagePositions: imagePositions.map((p) => p + caption.length), images, imageFields };
  }
  return { prompt, imagePositions, images, imageFields };
}
