/**
 * The inference pool: INFERENCE_WORKERS Bun Workers, each with its own backend and model copy, fed
 * by a FairQueue. The HTTP event loop only moves messages; every tensor op runs in a worker.
 *
 * A request first takes an Admission (running + queued streams are bounded: past the bound, PoolBusyError),
 * then runs its jobs (one, or one for each of its choices): queued per client, dispatched to the
 * worker with the most room, streamed back as JobEvents. A worker runs up to maxBatch jobs as one
 * batch: each step of a worker serves them all. A worker takes jobs when its batch has ended, or,
 * with joinRunning and where joins pay, while it runs: a job then joins the batch once its prompt is
 * read and its position agrees with the batch's (model/generate.ts GenerationBatch), and a worker
 * holds as many jobs again that wait to join, so that a place that frees is taken without a trip to
 * the pool. A job goes with the queued jobs whose prompts have its shape, which read their prompts
 * together. Aborting the signal takes a queued job out of the queue, or stops a running one within
 * one token or one piece of its prompt; the rest of its batch goes on.
 */
import { basename, resolve } from 'node:path';
import { CheckpointError, readCheckpointConfig } from '../../model/checkpoint.ts';
import type { FinishReason } from '../../model/generate.ts';
import type { BackendInfo } from '../backend/select.ts';
import { backendWorkerEnv, threadsPerInstance, type ThreadsSetting } from '../backend/threads.ts';
import { ImageProcessor } from '../image.ts';
import type { TokenLogprob } from './logprobs.ts';
import type { FromWorker, GenerationJob, LoadedModelInfo, ModelSource, ToWorker } from './protocol.ts';
import { Channel } from './channel.ts';
import { InvalidInputError, ModelChangedError, ModelLoadingError, ModelOverflowError, PoolBusyError, PoolClosingError, WorkerFailedError } from './errors.ts';
import { FairQueue } from './fair-queue.ts';

export type { GenerationJob } from './protocol.ts';

export interface PoolOptions {
  workers: number;
  /** MAC_THREADS: auto shares the cores among the workers. */
  threads?: ThreadsSetting;
  source: ModelSource;
  /** Running plus queued generations; past it, admit() throws PoolBusyError. */
  maxStreams: number;
  /** Generations a worker runs at once, as one batch (INFERENCE_BATCH). */
  maxBatch: number;
  /**
   * Whether jobs join a worker's running batch (INFERENCE_JOIN), a worker then holding as many
   * again that wait to join; else a worker takes jobs only when its batch has ended.
   */
  joinRunning: boolean;
  /** Largest encoded image the image processor accepts. */
  maxImageBytes: number;
  /** The least time between two progress events of one prompt being read. */
  prefillProgressMs: number;
}

/** The model every worker serves. */
export interface ServedModel {
  /** Short name: the checkpoint folder's name, or 'untrained'. */
  id: string;
  /** Absolute checkpoint folder, or null for a freshly initialised model. */
  checkpoint: string | null;
  untrained: boolean;
  config: Record<string, unknown>;
  parameterCount: number;
  backend: BackendInfo;
  /** Decodes uploads into this model's input size and normalization. */
  imageProcessor: ImageProcessor;
  /** Unix seconds. */
  loadedAt: number;
}

/** The model a job runs on: one admitted before a swap may run on the model after it. */
export type RunningModel = Pick<ServedModel, 'id' | 'untrained'>;

export type PoolEvent =
  | { type: 'started'; queueMs: number; model: RunningModel }
  | { type: 'progress'; tokensRead: number; promptTokens: number }
  | { type: 'token'; tokenId: number; text: string; logprob?: TokenLogprob }
  | { type: 'finished'; finishReason: FinishReason; tokens: number; encodeMs: number };

/** An event of one of a request's jobs: `job` is its index among them. */
export type JobEvent = PoolEvent & { job: number };

export interface WorkerStats {
  id: number;
  /** Running a batch, or yet to report that the last one ended. */
  busy: boolean;
  /** Generations of its batch still running. */
  running: number;
  /** tf.memory().numTensors after the worker's last job or load. */
  liveTensors: number;
  /** numTensors right after the model loaded: what liveTensors returns to after every request. */
  baselineTensors: number;
}

export interface PoolStats {
  /**
   * Admitted streams whose answer has not ended: running + queued + still preparing (decoding images)
   * + written to a client yet to read them; a shutdown waits for them.
   */
  streams: number;
  queued: number;
  running: number;
  /** Prompt tokens read by the workers since the start, including those of generations stopped during their prompt. */
  promptTokensRead: number;
  /** Since the start: batches the workers started, the generations they ran, and how many of those joined a batch already running. */
  batchesStarted: number;
  batchedGenerations: number;
  joinedGenerations: number;
  workers: WorkerStats[];
}

/**
 * Places among the bounded streams; release() them when the response ends (idempotent). The places
 * free too once every job the request ran has finished: a client slow to read its last events holds
 * none that a generation could use, though its answer counts among the streams until release().
 */
export interface Admission {
  /**
   * The model served when the request was admitted: its images are decoded with its imageProcessor,
   * and its answer is named after it. A job whose images a swap has made wrong for the model that
   * runs it fails with ModelChangedError.
   */
  readonly model: ServedModel;
  /**
   * Runs a request's jobs (one, or one a choice), queued together so that a worker can take them as
   * one batch; ends when each has finished. The first that fails ends it with its error, and the
   * others are stopped.
   */
  run(jobs: GenerationJob[], signal: AbortSignal): AsyncGenerator<JobEvent>;
  release(): void;
}

interface Job {
  id: number;
  job: GenerationJob;
  /** Its place among its request's jobs. */
  index: number;
  request: RequestEvents;
  enqueuedAt: number;
  startedAt?: number;
}

/** The events of one request's jobs, in one channel that closes when the last of them finishes. */
class RequestEvents {
  readonly channel = new Channel<JobEvent>();

  /** `onFinished`: called once every job has finished, though its events may wait to be read. */
  constructor(
    private running: number,
    private readonly onFinished: () => void,
  ) {}

  push(job: Job, event: PoolEvent): void {
    this.channel.push({ ...event, job: job.index });
    if (event.type === 'finished' && --this.running === 0) {
      this.channel.close();
      this.onFinished();
    }
  }

  fail(error: Error): void {
    this.channel.fail(error);
  }
}

type Loaded = Extract<FromWorker, { type: 'loaded' }>;

interface PendingLoad {
  source: ModelSource;
  resolve: (loaded: Loaded) => void;
  reject: (error: Error) => void;
}

interface Slot {
  id: number;
  worker: Worker;
  /** Jobs sent to the worker and not yet ended. */
  jobs: Job[];
  /** Jobs sent to the worker since it started, to tell which batch an 'idle' message ends. */
  sent: number;
  /** No batch runs: the worker said its batch ended, and no job was sent after. */
  idle: boolean;
  /** Whether joins pay for the worker's generations, as it last said (GenerationBatch's onJoins); where not, it gets jobs only when idle. */
  joins: boolean;
  /** A load waiting for the current batch to end (no job joins it meanwhile), or in progress. */
  load?: PendingLoad;
  /** Loads asked for while `load` runs, in order: one at a time a worker, and no job in between. */
  nextLoads: PendingLoad[];
  /** The source of the model its worker serves, once loaded. */
  source?: ModelSource;
  loading: boolean;
  liveTensors: number;
  baselineTensors: number;
  /** Its worker has died and been replaced (crashed): its error and its end are one crash. */
  crashed?: boolean;
}

/** A load that the pool's close cut short. */
const notLoaded = () => new PoolClosingError('the server shut down before the model was loaded');
const NO_WORKER = 'no inference worker serves the model: each crashed, or could not load it (see the server log)';

export class InferencePool {
  private readonly slots: Slot[] = [];
  private readonly queue = new FairQueue<Job>();
  private nextJobId = 1;
  /** Places taken (MAX_CONCURRENT_STREAMS), and admitted answers not yet ended, which may hold none. */
  private admitted = 0;
  private answering = 0;
  private promptTokensRead = 0;
  private batchesStarted = 0;
  private batchedGenerations = 0;
  private joinedGenerations = 0;
  private closing = false;
  /** close() has run: workers still reading a checkpoint are ended once they have read it. */
  private closed = false;
  private swapping = false;
  /** Resolves when the swap in progress ends. */
  private swapEnded = Promise.resolve();
  private current!: ServedModel;
  private source: ModelSource;
  /** Moving average of a job's time on a worker, for Retry-After. */
  private averageJobMs = 1000;
  /** Moving average of the jobs a worker runs at once: the workers finish that many in a job's time. */
  private averageRunning = 1;

  private constructor(private readonly options: PoolOptions) {
    this.source = options.source;
  }

  /** Starts the workers and loads the model into each; rejects with the first worker's failure. */
  static async start(options: PoolOptions): Promise<InferencePool> {
    const pool = new InferencePool(options);
    const loads = Array.from({ length: options.workers }, (_, id) => pool.spawn(id));
    try {
      const [first] = await Promise.all(loads);
      pool.current = pool.describe(first!, options.source);
    } catch (error) {
      await pool.close();
      throw error;
    }
    return pool;
  }

  get model(): ServedModel {
    return this.current;
  }

  /** False once shutdown began. */
  get accepting(): boolean {
    return !this.closing;
  }

  stats(): PoolStats {
    return {
      streams: this.answering,
      queued: this.queue.size,
      running: this.slots.reduce((sum, slot) => sum + slot.jobs.length, 0),
      promptTokensRead: this.promptTokensRead,
      batchesStarted: this.batchesStarted,
      batchedGenerations: this.batchedGenerations,
      joinedGenerations: this.joinedGenerations,
      workers: this.slots.map((slot) => ({
        id: slot.id,
        busy: !slot.idle,
        running: slot.jobs.length,
        liveTensors: slot.liveTensors,
        baselineTensors: slot.baselineTensors,
      })),
    };
  }

  /**
   * Takes `streams` places (one a job the request runs), or throws PoolBusyError past maxStreams,
   * PoolClosingError once shutdown began. A route takes them once the request's body is read: a
   * client still sending holds none.
   */
  admit(clientKey: string, streams = 1): Admission {
    this.checkRoom(streams);
    this.admitted += streams;
    this.answering += streams;
    let placesFreed = false;
    let released = false;
    const model = this.current;
    const { imageSize, mean, std, resize } = model.imageProcessor.options;
    const decodedFor = { imageSize, mean, std, resize };
    const freePlaces = () => {
      if (placesFreed) return;
      placesFreed = true;
      this.admitted -= streams;
    };
    return {
      model,
      run: (jobs, signal) => this.run(clientKey, jobs.map((job) => ({ ...job, decodedFor })), signal, freePlaces),
      release: () => {
        freePlaces();
        if (released) return;
        released = true;
        this.answering -= streams;
      },
    };
  }

  /** Throws where admit() would, taking nothing: a full server refuses an upload before reading it. */
  checkRoom(streams = 1): void {
    if (this.closing) throw new PoolClosingError('the server is shutting down');
    if (this.noWorkerWillServe()) throw new WorkerFailedError(NO_WORKER);
    if (this.admitted + streams > this.options.maxStreams) {
      // A place frees as soon as any running job ends, however long the queue: the workers end
      // slots x averageRunning jobs in a job's time, so `streams` places free in that share of it.
      const retryAfter = Math.max(1, Math.ceil((streams * this.averageJobMs) / (this.slots.length * this.averageRunning) / 1000));
      throw new PoolBusyError(this.admitted, this.options.maxStreams, retryAfter);
    }
  }

  /**
   * Loads the checkpoint in `dir` into every worker without a restart; running generations finish on
   * the old model first. The first worker loads alone, so that a bad checkpoint changes nothing; a
   * later worker that fails sends those that loaded back to the old model.
   * Throws InvalidInputError (`checkpoint`) for an unreadable checkpoint, ModelLoadingError while
   * another load runs, WorkerFailedError when a later worker fails, PoolClosingError when the pool
   * closes meanwhile.
   */
  async loadModel(dir: string): Promise<ServedModel> {
    if (this.swapping) throw new ModelLoadingError();
    this.swapping = true;
    const { promise: ended, resolve: end } = Promise.withResolvers<void>();
    this.swapEnded = ended;
    try {
      const checkpoint = resolve(dir);
      try {
        await readCheckpointConfig(checkpoint);
      } catch (error) {
        if (error instanceof CheckpointError) throw new InvalidInputError('checkpoint', error.message);
        throw error;
      }
      const source = { checkpoint };
      const [first, ...rest] = this.slots;
      // A worker that cannot read the checkpoint says so ('load-failed'): the client's 400; a shutdown or a crash is not the checkpoint's fault.
      const loaded = await this.reload(first!, source).catch((error: Error) => {
        throw error instanceof PoolClosingError || error instanceof WorkerFailedError ? error : new InvalidInputError('checkpoint', error.message);
      });
      const results = await Promise.allSettled(rest.map((slot) => this.reload(slot, source)));
      const failed = results.find((result): result is PromiseRejectedResult => result.status === 'rejected');
      if (failed?.reason instanceof PoolClosingError) throw failed.reason;
      if (failed) {
        // Every worker must serve the same model: those that took the new one go back to the old.
        const moved = [first!, ...rest.filter((_, i) => results[i]!.status === 'fulfilled')];
        const back = await Promise.allSettled(moved.map((slot) => this.reload(slot, this.source)));
        if (this.closed) throw notLoaded();
        back.forEach((result, i) => result.status === 'rejected' && console.error(`inference worker ${moved[i]!.id} could not go back to the previous model: ${(result.reason as Error).message}`));
        const after = back.every((result) => result.status === 'fulfilled') ? 'every worker serves the previous model again' : 'the previous model is served again, by the workers that could go back to it';
        throw new WorkerFailedError(`a worker could not load the checkpoint (${(failed.reason as Error).message}); ${after}`);
      }
      this.source = source;
      this.current = this.describe(loaded, source);
      // A worker respawned during the swap loaded the model before it: it loads this one now.
      for (const slot of this.slots) {
        if (slot.source !== source) this.reload(slot, source).catch((error: Error) => console.error(`inference worker ${slot.id} could not load ${checkpoint}: ${error.message}`));
      }
      return this.current;
    } finally {
      this.swapping = false;
      end();
      // Out of the swap, only the workers on the pool's model serve: requests that none can serve fail.
      this.dispatch();
    }
  }

  /**
   * loadModel once the loads asked for before it have ended, where loadModel would throw
   * ModelLoadingError: a training job's activation is no client that can ask again.
   */
  async loadModelInTurn(dir: string): Promise<ServedModel> {
    while (this.swapping) await this.swapEnded;
    return this.loadModel(dir);
  }

  /** Refuses new streams (PoolClosingError); those already admitted carry on. */
  stopAdmitting(): void {
    this.closing = true;
  }

  /** Ends every worker; generations still running or queued fail with PoolClosingError. */
  async close(): Promise<void> {
    this.closing = true;
    this.closed = true;
    const gone = new PoolClosingError('the server shut down before this generation finished');
    for (let job = this.queue.shift(); job; job = this.queue.shift()) job.request.fail(gone);
    for (const slot of this.slots) {
      for (const job of slot.jobs) job.request.fail(gone);
      slot.jobs = [];
      for (const load of [slot.load, ...slot.nextLoads]) load?.reject(notLoaded());
      // A worker reading a checkpoint is ended once it has read it (receive): ended mid-read, the
      // read would finish into a thread that is gone, which can bring the whole process down.
      if (!slot.loading) slot.worker.terminate();
    }
  }

  private async *run(clientKey: string, payloads: GenerationJob[], signal: AbortSignal, onFinished: () => void): AsyncGenerator<JobEvent> {
    const request = new RequestEvents(payloads.length, onFinished);
    const enqueuedAt = performance.now();
    const jobs: Job[] = payloads.map((job, index) => ({ id: this.nextJobId++, job, index, request, enqueuedAt }));
    const abort = () => jobs.forEach((job) => this.abort(job));
    signal.addEventListener('abort', abort, { once: true });
    let ended = false;
    try {
      if (signal.aborted) {
        for (const job of jobs) yield { type: 'finished', finishReason: 'aborted', tokens: 0, encodeMs: 0, job: job.index };
        return;
      }
      for (const job of jobs) this.queue.push(clientKey, job);
      this.dispatch();
      yield* request.channel;
      ended = true;
    } finally {
      signal.removeEventListener('abort', abort);
      // The consumer stopped early (a failed write to a closed connection), or a job failed: the
      // others must not run on. An abort of a job that has finished does nothing.
      if (!ended) abort();
    }
  }

  private abort(job: Job): void {
    if (this.queue.remove(job)) {
      job.request.push(job, { type: 'finished', finishReason: 'aborted', tokens: 0, encodeMs: 0 });
      return;
    }
    const slot = this.slots.find((s) => s.jobs.includes(job));
    slot?.worker.postMessage({ type: 'abort', jobId: job.id } satisfies ToWorker);
  }

  /** Starts the loads that waited for their worker's batch to end; then sends queued jobs to the workers with room, in groups of one prompt shape. */
  private dispatch(): void {
    for (const slot of this.slots) if (slot.load && slot.idle && !slot.loading && !slot.crashed) this.startLoad(slot);
    if (this.noWorkerWillServe()) {
      for (let job = this.queue.shift(); job; job = this.queue.shift()) job.request.fail(new WorkerFailedError(NO_WORKER));
    }
    for (let slot = this.freest(); slot && this.queue.size > 0; slot = this.freest()) {
      const first = this.queue.shift()!;
      const shape = promptShape(first.job);
      this.send(slot, [first, ...this.queue.take((job) => promptShape(job.job) === shape, this.room(slot) - 1)]);
    }
  }

  /** The worker with the fewest jobs, where it serves the model, has room and no load waits; undefined when none has. */
  private freest(): Slot | undefined {
    let freest: Slot | undefined;
    for (const slot of this.slots) {
      if (!this.serves(slot) || slot.loading || slot.load || this.room(slot) === 0) continue;
      if (!freest || slot.jobs.length < freest.jobs.length) freest = slot;
    }
    return freest;
  }

  /**
   * Whether the worker serves the pool's model: not dead (one that crashed while the server drains is
   * not replaced), loaded (a restart can fail), and on the model that the pool serves, or during a
   * swap on either. A worker that a swap could not move takes no job.
   */
  private serves(slot: Slot): boolean {
    return !slot.crashed && slot.source !== undefined && (this.swapping || slot.source === this.source);
  }

  /** No worker serves the model, none is loading one, and none will be respawned: a request would wait for ever. */
  private noWorkerWillServe(): boolean {
    return !this.swapping && this.slots.every((slot) => !this.serves(slot) && (slot.crashed || (!slot.load && !slot.loading)));
  }

  /**
   * Jobs a worker can take now: a batch's places when it is idle; with joinRunning, while its batch
   * takes joins, its free places and as many waiting to join.
   */
  private room(slot: Slot): number {
    if (slot.idle) return this.options.joinRunning ? 2 * this.options.maxBatch : this.options.maxBatch;
    return this.options.joinRunning && slot.joins ? 2 * this.options.maxBatch - slot.jobs.length : 0;
  }

  private send(slot: Slot, jobs: Job[]): void {
    if (slot.idle) this.batchesStarted++;
    else this.joinedGenerations += jobs.length;
    this.batchedGenerations += jobs.length;
    slot.idle = false;
    slot.jobs.push(...jobs);
    slot.sent += jobs.length;
    this.averageRunning = 0.8 * this.averageRunning + 0.2 * slot.jobs.length;
    const now = performance.now();
    for (const job of jobs) {
      job.startedAt = now;
      job.request.push(job, { type: 'started', queueMs: now - job.enqueuedAt, model: nameOf(slot.source!) });
    }
    // Transferred, not copied: the request handlers are done with their pixels.
    const transfer = jobs.flatMap((job) => job.job.images.map((pixels) => pixels.buffer as ArrayBuffer));
    const numbered = jobs.map((job) => ({ jobId: job.id, job: job.job }));
    const message = { type: 'generate', jobs: numbered, progressMs: this.options.prefillProgressMs, maxRows: this.options.maxBatch } satisfies ToWorker;
    slot.worker.postMessage(message, transfer);
  }

  private spawn(id: number): Promise<Loaded> {
    const threads = threadsPerInstance(this.options.threads ?? 'auto', this.options.workers);
    const worker = new Worker(new URL('../../workers/inference-worker.ts', import.meta.url).href, { env: backendWorkerEnv(threads) });
    const slot: Slot = { id, worker, jobs: [], sent: 0, idle: true, joins: true, nextLoads: [], loading: false, liveTensors: 0, baselineTensors: 0 };
    this.slots[id] = slot;
    worker.onmessage = (event: MessageEvent<FromWorker>) => this.receive(slot, event.data);
    worker.onerror = (event) => this.crashed(slot, event.message);
    // A thread that ends with no error event (process.exit, a native crash) has crashed just the same.
    worker.addEventListener('close', () => this.crashed(slot, 'its thread ended'));
    return this.reload(slot, this.source);
  }

  private reload(slot: Slot, source: ModelSource): Promise<Loaded> {
    if (this.closed) return Promise.reject(notLoaded());
    // A swap that listed its workers before this one crashed: its replacement serves the old model.
    if (slot.crashed) return Promise.reject(new WorkerFailedError('the worker crashed'));
    const { promise, resolve, reject } = Promise.withResolvers<Loaded>();
    // One load at a time a worker: one asked for while another waits or runs (a swap that meets a
    // worker being respawned) takes its turn after it, not the answer meant for it.
    if (slot.load) {
      slot.nextLoads.push({ source, resolve, reject });
    } else {
      slot.load = { source, resolve, reject };
      if (slot.idle) this.startLoad(slot);
    }
    return promise;
  }

  private startLoad(slot: Slot): void {
    slot.loading = true;
    slot.worker.postMessage({ type: 'load', source: slot.load!.source } satisfies ToWorker);
  }

  private receive(slot: Slot, message: FromWorker): void {
    switch (message.type) {
      case 'loaded':
      case 'load-failed': {
        const load = slot.load;
        // The next load, if one waits, keeps the worker from jobs until it has run (dispatch starts it).
        slot.load = slot.nextLoads.shift();
        slot.loading = false;
        if (this.closed) return slot.worker.terminate();
        if (message.type === 'loaded') {
          slot.source = load?.source;
          slot.liveTensors = slot.baselineTensors = message.numTensors;
          // A new model's generations are yet to be seen.
          slot.joins = true;
          load?.resolve(message);
        } else {
          load?.reject(new Error(message.message));
        }
        this.dispatch();
        return;
      }
      case 'progress': {
        const job = jobOf(slot, message.jobId);
        job?.request.push(job, { type: 'progress', tokensRead: message.tokensRead, promptTokens: message.promptTokens });
        return;
      }
      case 'token': {
        const job = jobOf(slot, message.jobId);
        job?.request.push(job, { type: 'token', tokenId: message.tokenId, text: message.text, logprob: message.logprob });
        return;
      }
      case 'finished':
      case 'failed': {
        this.promptTokensRead += message.promptTokensRead;
        const job = jobOf(slot, message.jobId);
        if (!job) return;
        slot.jobs = slot.jobs.filter((running) => running !== job);
        this.averageJobMs = 0.8 * this.averageJobMs + 0.2 * (performance.now() - job.startedAt!);
        if (message.type === 'finished') {
          job.request.push(job, { type: 'finished', finishReason: message.finishReason, tokens: message.tokens, encodeMs: message.encodeMs });
        } else {
          job.request.fail(failure(message));
        }
        // Its place in the batch goes to the next job waiting.
        this.dispatch();
        return;
      }
      case 'joins':
        slot.joins = message.open;
        if (message.open) this.dispatch();
        return;
      case 'idle': {
        // Jobs sent after the batch ended started another, which will say when it ends.
        if (message.received !== slot.sent) return;
        slot.idle = true;
        slot.liveTensors = message.numTensors;
        this.dispatch();
        return;
      }
    }
  }

  /** A worker died (an uncaught error, or its thread ended): its jobs fail, and a fresh worker takes its place. */
  private crashed(slot: Slot, reason: string): void {
    // The pool's own close ends its workers; a crash is reported once, by its error or its end.
    if (this.closed || slot.crashed) return;
    slot.crashed = true;
    console.error(`inference worker ${slot.id} crashed: ${reason}${this.closing ? '' : '; starting a new one'}`);
    for (const job of slot.jobs) job.request.fail(new WorkerFailedError('the inference worker crashed during this generation'));
    slot.jobs = [];
    for (const load of [slot.load, ...slot.nextLoads]) load?.reject(new WorkerFailedError(`the worker crashed (${reason})`));
    slot.worker.terminate();
    if (this.closing) {
      // Draining, it is not replaced: the requests still queued go to the others, or fail if none is left.
      this.dispatch();
      return;
    }
    this.spawn(slot.id).catch((error: Error) => console.error(`inference worker ${slot.id} could not restart: ${error.message}`));
  }

  private describe(loaded: Loaded, source: ModelSource): ServedModel {
    const { config, parameterCount, image }: LoadedModelInfo = loaded.model;
    return {
      ...nameOf(source),
      checkpoint: 'checkpoint' in source ? source.checkpoint : null,
      config,
      parameterCount,
      backend: loaded.backend,
      imageProcessor: new ImageProcessor({ ...image, maxInputBytes: this.options.maxImageBytes }),
      loadedAt: Math.floor(Date.now() / 1000),
    };
  }
}

/** What decides whether two jobs read their prompts together: the prompts' length once the worker widens their images (model/generate.ts GenerationBatch). */
function promptShape(job: GenerationJob): string {
  return `${job.prompt.length}:${job.images.length}`;
}

function jobOf(slot: Slot, jobId: number): Job | undefined {
  return slot.jobs.find((job) => job.id === jobId);
}

/** What the client is told of a generation that failed in its worker. */
function failure(message: Extract<FromWorker, { type: 'failed' }>): Error {
  const { cause } = message;
  switch (cause.kind) {
    case 'invalid':
      return new InvalidInputError(cause.field, message.message);
    case 'model_changed':
      return new ModelChangedError(message.message);
    case 'overflow':
      return new ModelOverflowError(message.message);
    case 'fault':
      // The worker's message is TensorFlow.js' or the runtime's: for the log, not for the client.
      console.error(`generation failed in an inference worker: ${message.message}`);
      return new WorkerFailedError('generation failed in the inference worker');
  }
}

function nameOf(source: ModelSource): RunningModel {
  return 'checkpoint' in source ? { id: basename(source.checkpoint), untrained: false } : { id: 'untrained', untrained: true };
}
