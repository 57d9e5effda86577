/**
 * An inference worker: its own TensorFlow.js backend and its own copy of the served model; runs one
 * generation at a time for the pool and posts each token as it comes. Everything a job allocates is
 * disposed before its last message, which reports tf.memory().numTensors so the pool can show that
 * every request returned the worker to its baseline.
 */
import * as tf from '@tensorflow/tfjs-core';
import { loadCheckpoint } from '../model/checkpoint.ts';
import { serializableConfig } from '../model/config.ts';
import { NumericOverflowError } from '../model/generate.ts';
import { MultimodalMACNetwork } from '../model/multimodal.ts';
import { InvalidSamplingOptionError } from '../model/sampling.ts';
import { selectBackend } from '../src/backend/select.ts';
import { tokenLogprob, type TokenLogprob } from '../src/inference/logprobs.ts';
import type { FailureCause, FromWorker, GenerationJob, ModelSource, ToWorker } from '../src/inference/protocol.ts';

declare const self: Worker;

let model: MultimodalMACNetwork | undefined;
const running = new Map<number, AbortController>();

function post(message: FromWorker): void {
  self.postMessage(message);
}

// Registered before any await, so that no message arrives while nobody listens.
self.onmessage = (event: MessageEvent<ToWorker>) => {
  const message = event.data;
  switch (message.type) {
    case 'load':
      void load(message.source);
      break;
    case 'generate':
      void run(message.jobId, message.job, message.progressMs);
      break;
    case 'abort':
      // generate() yields a macrotask turn after every token and every piece of the prompt, so this
      // lands before the next one.
      running.get(message.jobId)?.abort();
      break;
  }
};

async function load(source: ModelSource): Promise<void> {
  try {
    const backend = await selectBackend();
    const next = 'checkpoint' in source ? await loadCheckpoint(source.checkpoint) : new MultimodalMACNetwork(source.options);
    model?.dispose();
    model = next;
    const { config } = next;
    const image = { imageSize: config.imageSize, mean: config.imageMean, std: config.imageStd, resize: config.imageResize };
    const info = { config: serializableConfig(config), parameterCount: next.parameterCount(), image };
    post({ type: 'loaded', backend, model: info, numTensors: tf.memory().numTensors });
  } catch (error) {
    post({ type: 'load-failed', message: error instanceof Error ? error.message : String(error) });
  }
}

async function run(jobId: number, job: GenerationJob, progressMs: number): Promise<void> {
  const controller = new AbortController();
  running.set(jobId, controller);
  const started = performance.now();
  const images: tf.Tensor3D[] = [];
  const progress = new PrefillProgress(jobId, progressMs, started);
  let outcome: FromWorker;
  try {
    if (!model) throw new Error('no model is loaded');
    const size = model.config.imageSize;
    for (const pixels of job.images) {
      // The pool sizes images for the model served when the request arrived; a model swap in between
      // can change the size.
      if (pixels.length !== 3 * size * size) throw new ModelChangedError('the served model changed while this request waited; send it again');
      images.push(tf.tensor3d(pixels, [3, size, size]));
    }
    const { maxLength, temperature, topK, topP, minP, seed, stop, logprobs: top } = job;
    const { tokens: prompt, imagePositions } = model.withImageSlots(job.prompt, job.imagePositions);
    const slots = model.config.numImageTokens;
    // generate() yields every sampled token but EOS once, in the order it sampled them.
    const sampled: TokenLogprob[] = [];
    const onSample = top === undefined ? undefined : (tokenId: number, logits: Float32Array) => void sampled.push(tokenLogprob(logits, tokenId, top));
    const tokens = model.generate(prompt, {
      images, imagePositions, maxLength, temperature, topK, topP, minP, seed, stop,
      signal: controller.signal,
      onSample,
      // Counted as the request wrote the prompt, as its usage is: one placeholder per image.
      onPrefillProgress: (read) => progress.report(asWritten(read, imagePositions, slots), job.prompt.length),
    });
    let step = await tokens.next();
    const encodeMs = performance.now() - started;
    while (!step.done) {
      post({ type: 'token', jobId, tokenId: step.value.tokenId, text: step.value.text, logprob: sampled.shift() });
      step = await tokens.next();
    }
    outcome = { type: 'finished', jobId, finishReason: step.value.finishReason, tokens: step.value.tokens, encodeMs, promptTokensRead: progress.read, numTensors: 0 };
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    outcome = { type: 'failed', jobId, message, cause: causeOf(error), promptTokensRead: progress.read, numTensors: 0 };
  } finally {
    tf.dispose(images);
    running.delete(jobId);
  }
  post({ ...outcome, numTensors: tf.memory().numTensors });
}

/**
 * Tells the pool how far the prompt has been read, at most once per `intervalMs`: a prompt read
 * faster than that sends nothing; once anything was sent, the end of the prompt is sent too, so that
 * a client's progress reaches the whole prompt.
 */
class PrefillProgress {
  /** Prompt tokens read so far. */
  read = 0;
  private sent = false;

  constructor(
    private readonly jobId: number,
    private readonly intervalMs: number,
    private lastAt: number,
  ) {}

  report(tokensRead: number, promptTokens: number): void {
    this.read = tokensRead;
    const now = performance.now();
    const due = tokensRead === promptTokens ? this.sent : now - this.lastAt >= this.intervalMs;
    if (!due) return;
    this.sent = true;
    this.lastAt = now;
    post({ type: 'progress', jobId: this.jobId, tokensRead, promptTokens });
  }
}

/** Of the first `read` tokens of a prompt widened by withImageSlots, how many the request wrote. */
function asWritten(read: number, widenedPositions: number[], slots: number): number {
  let extra = 0;
  for (const p of widenedPositions) extra += Math.max(0, Math.min(read - p - 1, slots - 1));
  return read - extra;
}

class ModelChangedError extends Error {}

function causeOf(error: unknown): FailureCause {
  if (error instanceof InvalidSamplingOptionError) return { kind: 'invalid', field: error.field };
  if (error instanceof ModelChangedError) return { kind: 'model_changed' };
  if (error instanceof NumericOverflowError) return { kind: 'overflow' };
  return { kind: 'fault' };
}
