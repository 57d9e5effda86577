/**
 * One generation as the routes see it: runs the job (one a choice) through the pool, numbers the
 * tokens, keeps the text, records the latency metrics, and ends each choice with the usage and
 * timings of DESIGN.md section 4. The one place that turns pool events into what a client is told.
 */
import { ByteTokenizer } from '../../model/tokenizer.ts';
import type { FinishReason } from '../../model/generate.ts';
import type { SamplingOptions } from '../../model/sampling.ts';
import type { TokenLogprob } from './logprobs.ts';
import type { Admission, RunningModel } from './pool.ts';

export const tokenizer = new ByteTokenizer();

/** The caption prompt when the request gives none; the image placeholder follows it. */
export const DEFAULT_PROMPT = 'This is an image of ';

/** The sampling and length settings of one generation, as the routes read them from a request. */
export interface GenerationParams extends SamplingOptions {
  maxTokens: number;
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
  /**
   * Texts written from the prompt (OpenAI's n; default 1), run together as one batch where a worker
   * can take them. With a seed, choice i draws with seed + i: the same seed would write the same text.
   */
  choices?: number;
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
  choice: number;
  text: string;
  finishReason: FinishReason;
  usage: Usage;
  timings: Timings;
  /** Each token's, when the request asked for logprobs. */
  logprobs?: TokenLogprob[];
};

/** A worker has taken the request: the model named is the one that writes its text. */
export type GenerationStart = { type: 'start'; model: RunningModel };

/** How far a long prompt has been read (a few times per second; none for a short prompt). */
export type PromptProgress = { type: 'progress'; tokensRead: number; promptTokens: number };

/** A choice's token; `index` counts the choice's tokens. */
export type TextToken = { type: 'token'; choice: number; text: string; tokenId: number; index: number; logprob?: TokenLogprob };

/** The start once; progress once for the prompt, which every choice reads; each choice's tokens, then its done. */
export type TextEvent = GenerationStart | PromptProgress | TextToken | GenerationDone;

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
  const { prompt, images, imagePositions, params, choices = 1 } = request;
  const { maxTokens, seed, ...sampling } = params;
  // Each choice's own pixels: a job's are transferred to its worker, and the choices may go to several.
  const jobs = Array.from({ length: choices }, (_, i) => ({
    prompt, imagePositions, ...sampling, maxLength: maxTokens,
    images: i === 0 ? images : images.map((pixels) => pixels.slice()),
    seed: seed === undefined ? undefined : (seed + i) >>> 0,
  }));
  const states = jobs.map((_, choice) => new ChoiceState(choice, request, metrics));
  let started = false;
  for await (const event of admission.run(jobs, signal)) {
    const state = states[event.job]!;
    if (!started && (event.type === 'started' || event.type === 'finished')) {
      started = true;
      // One that ended before any worker took it (its client left while it waited) is named after the model it was admitted under.
      yield { type: 'start', model: event.type === 'started' ? event.model : admission.model };
    }
    if (event.type === 'started') {
      state.queueMs = event.queueMs;
    } else if (event.type === 'progress') {
      if (event.job === 0) yield { type: 'progress', tokensRead: event.tokensRead, promptTokens: event.promptTokens };
    } else if (event.type === 'token') {
      yield state.token(event.tokenId, event.text, event.logprob);
    } else {
      yield state.done(event.finishReason, event.tokens, event.encodeMs);
    }
  }
}

/** What one choice has written so far, and when. */
class ChoiceState {
  queueMs = 0;
  private text = '';
  private readonly logprobs: TokenLogprob[] = [];
  private tokens = 0;
  private firstTokenAt: number | undefined;
  private lastTokenAt = 0;

  constructor(
    private readonly choice: number,
    private readonly request: TextGenerationRequest,
    private readonly metrics: GenerationMetrics,
  ) {}

  token(tokenId: number, text: string, logprob: TokenLogprob | undefined): TextToken {
    const now = performance.now();
    if (this.firstTokenAt === undefined) {
      this.firstTokenAt = now;
      this.metrics.timeToFirstToken.observe((now - this.request.receivedAt) / 1000);
    } else {
      this.metrics.tokenLatency.observe((now - this.lastTokenAt) / 1000);
    }
    this.lastTokenAt = now;
    this.text += text;
    if (logprob) this.logprobs.push(logprob);
    return { type: 'token', choice: this.choice, text, tokenId, index: this.tokens++, logprob };
  }

  done(finishReason: FinishReason, tokens: number, encodeMs: number): GenerationDone {
    const now = performance.now();
    const { prompt, receivedAt, preprocessMs, params } = this.request;
    this.metrics.tokens.inc(tokens);
    const totalMs = now - receivedAt;
    const workerMs = totalMs - this.queueMs - preprocessMs;
    const timings: Timings = {
      queue_ms: round(this.queueMs),
      preprocess_ms: round(preprocessMs),
      encode_ms: round(encodeMs),
      time_to_first_token_ms: round((this.firstTokenAt ?? now) - receivedAt),
      total_ms: round(totalMs),
      tokens_per_second: workerMs > 0 ? round((tokens * 1000) / workerMs) : 0,
    };
    const usage = { prompt_tokens: prompt.length, completion_tokens: tokens, total_tokens: prompt.length + tokens };
    return { type: 'done', choice: this.choice, text: this.text, finishReason, usage, timings, ...(params.logprobs !== undefined && { logprobs: this.logprobs }) };
  }
}

function round(value: number): number {
  return Math.round(value * 10) / 10;
}

/** Runs a generation to its end for a non-streaming answer: the model that wrote it, and each choice's done in the choices' order. */
export async function finalEvents(events: AsyncGenerator<TextEvent>): Promise<{ model: RunningModel; done: GenerationDone[] }> {
  let model: RunningModel | undefined;
  const done: GenerationDone[] = [];
  for await (const event of events) {
    if (event.type === 'start') model = event.model;
    if (event.type === 'done') done[event.choice] = event;
  }
  if (model === undefined || done.length === 0) throw new Error('the generation ended without a done event');
  return { model, done };
}
