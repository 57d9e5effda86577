/**
 * One generation as the routes see it: runs the job through the pool, numbers the tokens, keeps
 * the text, records the latency metrics, and ends with the usage and timings of DESIGN.md section 4.
 * The one place that turns pool events into what a client is told.
 */
import { ByteTokenizer } from '../../model/tokenizer.ts';
import type { FinishReason } from '../../model/generate.ts';
import type { TokenLogprob } from './logprobs.ts';
import type { Admission } from './pool.ts';

export const tokenizer = new ByteTokenizer();

/** The caption prompt when the request gives none; the image placeholder follows it. */
export const DEFAULT_PROMPT = 'This is an image of ';

/** The sampling and length settings of one generation, as the routes read them from a request. */
export interface GenerationParams {
  maxTokens: number;
  temperature?: number;
  topK?: number;
  topP?: number;
  minP?: number;
  seed?: number;
  stop: string[];
  /** With `logprobs`: each token's log-probability and this many alternatives (top_logprobs, default 0). */
  logprobs?: number;
}

/** Where a generation's latencies go (the server's Prometheus metrics, src/http/metrics.ts). */
export interface GenerationMetrics {
  timeToFirstToken: { observe(seconds: number): void };
  tokenLatency: { observe(seconds: number): void };
  tokens: { inc(count: number): void };
}

export interface TextGenerationRequest {
  /** Prompt tokens, image placeholders included. */
  prompt: number[];
  images: Float32Array[];
  imagePositions: number[];
  params: GenerationParams;
  /** performance.now() when the request arrived. */
  receivedAt: number;
  /** Milliseconds spent decoding the images. */
  preprocessMs: number;
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

/** Milliseconds, except tokens_per_second. */
export interface Timings {
  /** Waiting for a free worker. */
  queue_ms: number;
  /** Decoding and resizing the images (main thread, in libvips' threads). */
  preprocess_ms: number;
  /** In the worker, from the job's start to the first token: image encoding and prompt prefill. */
  encode_ms: number;
  /** From the request's arrival to the first token. */
  time_to_first_token_ms: number;
  total_ms: number;
  /** Completion tokens per second of worker time. */
  tokens_per_second: number;
}

export type GenerationDone = {
  type: 'done';
  text: string;
  finishReason: FinishReason;
  usage: Usage;
  timings: Timings;
  /** Each token's, when the request asked for logprobs. */
  logprobs?: TokenLogprob[];
};

/** How far a long prompt has been read (a few times per second; none for a short prompt). */
export type PromptProgress = { type: 'progress'; tokensRead: number; promptTokens: number };

export type TextEvent = PromptProgress | { type: 'token'; text: string; tokenId: number; index: number; logprob?: TokenLogprob } | GenerationDone;

/** The prompt tokens of `text` followed by one image placeholder per image. */
export function promptWithImages(text: string, images: number): { prompt: number[]; imagePositions: number[] } {
  const prompt = tokenizer.encode(text);
  const imagePositions: number[] = [];
  for (let i = 0; i < images; i++) {
    imagePositions.push(prompt.length);
    prompt.push(tokenizer.imageTokenId);
  }
  return { prompt, imagePositions };
}

export async function* generateText(admission: Admission, request: TextGenerationRequest, signal: AbortSignal, metrics: GenerationMetrics): AsyncGenerator<TextEvent> {
  const { prompt, images, imagePositions, params } = request;
  const { maxTokens, ...sampling } = params;
  const job = { prompt, images, imagePositions, ...sampling, maxLength: maxTokens };
  let text = '';
  const logprobs: TokenLogprob[] = [];
  let index = 0;
  let queueMs = 0;
  let firstTokenAt: number | undefined;
  let lastTokenAt = 0;
  for await (const event of admission.run(job, signal)) {
    const now = performance.now();
    if (event.type === 'started') {
      queueMs = event.queueMs;
    } else if (event.type === 'progress') {
      yield event;
    } else if (event.type === 'token') {
      if (firstTokenAt === undefined) {
        firstTokenAt = now;
        metrics.timeToFirstToken.observe((now - request.receivedAt) / 1000);
      } else {
        metrics.tokenLatency.observe((now - lastTokenAt) / 1000);
      }
      lastTokenAt = now;
      text += event.text;
      if (event.logprob) logprobs.push(event.logprob);
      yield { type: 'token', text: event.text, tokenId: event.tokenId, index: index++, logprob: event.logprob };
    } else {
      metrics.tokens.inc(event.tokens);
      const totalMs = now - request.receivedAt;
      const workerMs = totalMs - queueMs - request.preprocessMs;
      const timings: Timings = {
        queue_ms: round(queueMs),
        preprocess_ms: round(request.preprocessMs),
        encode_ms: round(event.encodeMs),
        time_to_first_token_ms: round((firstTokenAt ?? now) - request.receivedAt),
        total_ms: round(totalMs),
        tokens_per_second: workerMs > 0 ? round((event.tokens * 1000) / workerMs) : 0,
      };
      const usage = { prompt_tokens: prompt.length, completion_tokens: event.tokens, total_tokens: prompt.length + event.tokens };
      yield { type: 'done', text, finishReason: event.finishReason, usage, timings, ...(params.logprobs !== undefined && { logprobs }) };
    }
  }
}

function round(value: number): number {
  return Math.round(value * 10) / 10;
}

/** Runs a generation to its end for a non-streaming answer. */
export async function finalEvent(events: AsyncGenerator<TextEvent>): Promise<GenerationDone> {
  for await (const event of events) if (event.type === 'done') return event;
  throw new Error('the generation ended without a done event');
}
