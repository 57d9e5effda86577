/**
 * An inference worker: its own TensorFlow.js backend and its own copy of the served model; runs the
 * jobs the pool sends as one batch (GenerationBatch), which jobs sent while it runs join, and posts
 * each token as it comes. When the batch ends, everything it allocated is disposed before its last
 * message, which reports tf.memory().numTensors so the pool can show that every request returned the
 * worker to its baseline.
 */
import * as tf from '@tensorflow/tfjs-core';
import { loadCheckpoint } from '../model/checkpoint.ts';
import { serializableConfig } from '../model/config.ts';
import { GenerationBatch, GenerationLengths, NumericOverflowError, type FinishReason, type GenerationRequest } from '../model/generate.ts';
import { MultimodalMACNetwork } from '../model/multimodal.ts';
import { InvalidSamplingOptionError } from '../model/sampling.ts';
import { selectBackend } from '../src/backend/select.ts';
import { tokenLogprob, type TokenLogprob } from '../src/inference/logprobs.ts';
import type { FailureCause, FromWorker, GenerationJob, LoadedModelInfo, ModelSource, ToWorker } from '../src/inference/protocol.ts';
import { ModelChangedError } from '../src/inference/errors.ts';

declare const self: Worker;

let model: MultimodalMACNetwork | undefined;
const running = new Map<number, AbortController>();
/** The batch running, and its jobs by their number in it; undefined while the worker is idle. */
let current: { batch: GenerationBatch; jobs: Map<number, BatchJob> } | undefined;
/** Jobs received since the worker started: 'idle' tells the pool which of its jobs the batch that ended had seen. */
let received = 0;
/** What the served model's generations wrote, for each batch to tell whether joins pay (GenerationBatch). */
let lengths = new GenerationLengths();

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
      take(message);
      break;
    case 'abort':
      // GenerationBatch yields a macrotask turn after every step, so this lands before the next one.
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
    lengths = new GenerationLengths();
    const info = { config: serializableConfig(next.config), parameterCount: next.parameterCount(), image: imageProcessingOf(next) };
    post({ type: 'loaded', backend, model: info, numTensors: tf.memory().numTensors });
  } catch (error) {
    post({ type: 'load-failed', message: error instanceof Error ? error.message : String(error) });
  }
}

/** Adds jobs to the running batch, or starts one with them. */
function take({ jobs, progressMs, maxRows }: Extract<ToWorker, { type: 'generate' }>): void {
  received += jobs.length;
  const arrived = performance.now();
  const images = new SharedImages(jobs.length);
  const requests: GenerationRequest[] = [];
  const accepted: BatchJob[] = [];
  for (const { jobId, job } of jobs) {
    const batchJob = new BatchJob(jobId, job, progressMs, arrived, images);
    try {
      if (!model) throw new Error('no model is loaded');
      requests.push(batchJob.request(model));
      accepted.push(batchJob);
    } catch (error) {
      batchJob.fail(error);
    }
  }
  if (accepted.length === 0) {
    if (!current) post({ type: 'idle', numTensors: tf.memory().numTensors, received });
    return;
  }
  const starting = !current;
  current ??= { batch: new GenerationBatch(model!, { maxRows, lengths, onJoins: (open) => post({ type: 'joins', open }) }), jobs: new Map() };
  const numbers = current.batch.add(requests);
  numbers.forEach((number, i) => current!.jobs.set(number, accepted[i]!));
  if (starting) void run(current);
}

async function run({ batch, jobs }: NonNullable<typeof current>): Promise<void> {
  try {
    for await (const event of batch.run()) {
      const job = jobs.get(event.request)!;
      job.encodeMs ??= performance.now() - job.arrived;
      if (event.type === 'token') {
        post({ type: 'token', jobId: job.jobId, tokenId: event.token.tokenId, text: event.token.text, logprob: job.sampled.shift() });
        continue;
      }
      if (event.type === 'finished') job.finish(event.result.finishReason, event.result.tokens);
      else job.fail(event.error);
      jobs.delete(event.request);
    }
  } catch (error) {
    for (const job of jobs.values()) job.fail(error);
  } finally {
    // In the same turn as the batch's end: a job that arrives after it starts the next batch.
    current = undefined;
  }
  post({ type: 'idle', numTensors: tf.memory().numTensors, received });
}

/** One job of a batch: its abort, its prompt's progress, its logprobs waiting for their tokens, and its one last message. */
class BatchJob {
  readonly controller = new AbortController();
  readonly progress: PrefillProgress;
  /** GenerationBatch yields every sampled token but EOS once, in the order it sampled them. */
  readonly sampled: TokenLogprob[] = [];
  /** From the job's arrival to its first token (or its end). */
  encodeMs: number | undefined;
  private ended = false;

  constructor(
    readonly jobId: number,
    private readonly job: GenerationJob,
    progressMs: number,
    readonly arrived: number,
    private readonly images: SharedImages,
  ) {
    this.progress = new PrefillProgress(jobId, progressMs, arrived);
    running.set(jobId, this.controller);
  }

  /** The job as GenerationBatch takes it, its images from those of the jobs that came with it. */
  request(model: MultimodalMACNetwork): GenerationRequest {
    // The sampling options, maxLength and stop go to generate as they are.
    const { prompt: written, imagePositions: writtenPositions, images: pixels, logprobs: top, decodedFor, ...options } = this.job;
    // The pool decodes images for the model served when the request arrived; a model swap in between
    // can change the size or the normalisation that this model needs.
    if (pixels.length > 0 && JSON.stringify(decodedFor) !== JSON.stringify(imageProcessingOf(model))) {
      throw new ModelChangedError('the served model changed while this request waited; send it again');
    }
    const own = pixels.map((image) => this.images.tensorOf(image, model.config.imageSize));
    const { tokens: prompt, imagePositions } = model.withImageSlots(written, writtenPositions);
    const inserted = insertedRuns(writtenPositions, imagePositions, model.config.numImageTokens);
    const onSample = top === undefined ? undefined : (tokenId: number, logits: Float32Array) => void this.sampled.push(tokenLogprob(logits, tokenId, top));
    return {
      prompt,
      options: {
        ...options,
        images: own,
        imagePositions,
        signal: this.controller.signal,
        onSample,
        // Counted as the request wrote the prompt, as its usage is: one placeholder per image.
        onPrefillProgress: (read) => this.progress.report(read - insertedBefore(read, inserted), written.length),
      },
    };
  }

  finish(finishReason: FinishReason, tokens: number): void {
    if (!this.end()) return;
    post({ type: 'finished', jobId: this.jobId, finishReason, tokens, encodeMs: this.encodeMs ?? 0, promptTokensRead: this.progress.read });
  }

  /** Posts the job's failure, unless it already ended. */
  fail(error: unknown): void {
    if (!this.end()) return;
    const message = error instanceof Error ? error.message : String(error);
    post({ type: 'failed', jobId: this.jobId, message, cause: causeOf(error), promptTokensRead: this.progress.read });
  }

  /** Lets go of what the job held; false when it had already ended. */
  private end(): boolean {
    if (this.ended) return false;
    this.ended = true;
    running.delete(this.jobId);
    this.images.release();
    return true;
  }
}

/**
 * The images of jobs that came together, as tensors, one for each distinct image: a request's
 * choices each bring the same pixels, which GenerationBatch then encodes once. Freed when the last
 * of those jobs ends, so that a batch that runs on and on holds only the images of its live jobs.
 */
class SharedImages {
  private readonly made: { pixels: Float32Array; tensor: tf.Tensor3D }[] = [];

  constructor(private users: number) {}

  tensorOf(pixels: Float32Array, size: number): tf.Tensor3D {
    const same = this.made.find((image) => equalPixels(image.pixels, pixels));
    if (same) return same.tensor;
    const tensor = tf.tensor3d(pixels, [3, size, size]);
    this.made.push({ pixels, tensor });
    return tensor;
  }

  /** One of the jobs ended. */
  release(): void {
    if (--this.users === 0) tf.dispose(this.made.map((image) => image.tensor));
  }
}

function equalPixels(a: Float32Array, b: Float32Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
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

/**
 * The runs [start, end) of tokens that withImageSlots put into a prompt: before each image, the
 * spaces that moved it to its segment; after its first slot, the rest of its slots.
 */
function insertedRuns(writtenPositions: number[], widenedPositions: number[], slots: number): [number, number][] {
  const images = writtenPositions.flatMap((written, image) => (written < 0 ? [] : [{ written, widened: widenedPositions[image]! }]));
  const runs: [number, number][] = [];
  let before = 0;
  for (const { written, widened } of images.sort((a, b) => a.written - b.written)) {
    const spaces = widened - written - before;
    runs.push([widened - spaces, widened], [widened + 1, widened + slots]);
    before += spaces + slots - 1;
  }
  return runs;
}

/** How many of the first `read` tokens of a widened prompt are inserted ones, not the request's. */
function insertedBefore(read: number, runs: [number, number][]): number {
  return runs.reduce((count, [start, end]) => count + Math.max(0, Math.min(read, end) - start), 0);
}

/** How the model's images are decoded, as the pool's ImageProcessor takes it. */
function imageProcessingOf(model: MultimodalMACNetwork): LoadedModelInfo['image'] {
  const { imageSize, imageMean: mean, imageStd: std, imageResize: resize } = model.config;
  return { imageSize, mean, std, resize };
}

function causeOf(error: unknown): FailureCause {
  if (error instanceof InvalidSamplingOptionError) return { kind: 'invalid', field: error.field };
  if (error instanceof ModelChangedError) return { kind: 'model_changed' };
  if (error instanceof NumericOverflowError) return { kind: 'overflow' };
  return { kind: 'fault' };
}
