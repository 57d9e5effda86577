/**
 * Runs training jobs one at a time, each in its own worker thread (workers/training-worker.ts), so
 * that the HTTP thread only relays: it records each event in the job store and passes it to the
 * job's subscribers (the SSE streams). Others wait in the queue, oldest first. A worker that dies
 * fails its job with the reason; the server carries on.
 *
 * At submission a job is checked against the server: its data paths (readable, inside DATA_DIR, none
 * of the server's own files), its estimated memory (MAX_JOB_MEMORY_BYTES) and the queue's length
 * (MAX_QUEUED_JOBS). Every job that stops running ends its history with one `done` event whose
 * status says how (succeeded, failed, cancelled, interrupted) and, unless it succeeded, why.
 * Paths the API shows (checkpoints, messages) are relative to DATA_DIR.
 */
import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { PathNames } from '../data/path-names.ts';
import { pruneCheckpoints } from '../training/checkpoint-folders.ts';
import type { MemoryEstimate } from '../training/memory.ts';
import type { JobSpec } from '../training/spec.ts';
import type { TrainingEvent } from '../training/events.ts';
import { settlesWithin } from '../settles-within.ts';
import { prepareJob, requireMemory, type MemoryLimits } from './admission.ts';
import { activatingError, JobStateError, QueueFullError } from './errors.ts';
import { JobStore, type Job, type JobEvent, type JobEventType, type JobStatus } from './store.ts';
import { CANCEL_GRACE_MS, type JobListener, type JobPage, type JobSystemState, type TrainingJobs } from './training-jobs.ts';
import { TrainingThread } from './training-thread.ts';
import { cancelledReason, failureMessage, recordOf, rowError, stoppedStep, type JobEnd, type JobErrorCode } from './worker-events.ts';

export interface SchedulerOptions extends MemoryLimits {
  /** Holds jobs.db and the jobs' checkpoints (jobs/<id>/step-NNNNNN); user paths resolve inside it. */
  dataDir: string;
  /** Loads a checkpoint into the inference workers: called for a job with `activate: true` that succeeds. */
  onActivate?: (checkpoint: string) => Promise<unknown>;
  /** Default CANCEL_GRACE_MS (training-jobs.ts). */
  cancelGraceMs?: number;
  /** Jobs waiting to run at most; past it, submit() and resume() throw QueueFullError. Default 16. */
  maxQueuedJobs?: number;
}

const RESUMABLE: readonly JobStatus[] = ['interrupted', 'cancelled', 'failed'];
const JOB_STORE = 'jobs.db';

interface Running {
  id: string;
  thread: TrainingThread;
  /** Set once the job has reached its end, so that the thread's end is not read as the job's. */
  ended: boolean;
  /** Resolves when the job has ended. */
  finished: Promise<void>;
  markFinished: () => void;
  /** Why the worker was asked to stop: a client's cancel, or the server shutting down. */
  stopping?: 'cancel' | 'shutdown';
  /** The sizes behind an out-of-memory message. */
  estimate?: MemoryEstimate;
  /** The job's train.keep_checkpoints. */
  keptCheckpoints: number;
}

/** A job whose training has succeeded, while its checkpoint is loaded for serving (`activate: true`). */
interface Activation {
  id: string;
  /** Resolves when the load has ended, however it ended. */
  loaded: Promise<unknown>;
}

export class TrainingScheduler implements TrainingJobs {
  readonly dataDir: string;
  private readonly store: JobStore;
  private readonly listeners = new Map<string, Set<JobListener>>();
  /** The server's own files, which no job may read as data. */
  private readonly reserved: string[];
  private readonly names: PathNames;
  private running: Running | null = null;
  private activating: Activation | null = null;
  /** Set by shutdown(): no queued job starts any more. */
  private draining = false;
  private closed = false;

  constructor(private readonly options: SchedulerOptions) {
    this.dataDir = resolve(options.dataDir);
    mkdirSync(this.dataDir, { recursive: true });
    this.store = new JobStore(join(this.dataDir, JOB_STORE));
    this.names = new PathNames([this.dataDir]);
    this.reserved = [...['', '-wal', '-shm', '-journal'].map((suffix) => join(this.dataDir, JOB_STORE + suffix)), join(this.dataDir, 'jobs')];
    // Jobs that were running when the last process stopped cannot be continued by this one's worker.
    for (const id of this.store.interruptRunning()) {
      this.finish(id, 'interrupted', { reason: 'the server stopped while the job was running (it did not shut down cleanly); resume it to continue from its last checkpoint' });
    }
    queueMicrotask(() => this.pump());
  }

  /**
   * Checks the spec against this server and queues the job: DataPathError names a bad path,
   * SpecError a job too large for MAX_JOB_MEMORY_BYTES, QueueFullError a full queue.
   */
  async submit(spec: JobSpec): Promise<Job> {
    this.requireQueueRoom();
    const { estimate } = await prepareJob(spec, this.dataDir, this.reserved);
    requireMemory(spec, estimate, this.options);
    // Again: other submissions may have filled the queue while the checks above awaited the disk.
    this.requireQueueRoom();
    const job = this.store.create(spec);
    this.pump();
    return this.get(job.id)!;
  }

  /** The job as the API shows it: paths relative to DATA_DIR. */
  get(id: string): Job | undefined {
    const job = this.store.get(id);
    return job && this.shown(job);
  }

  list({ limit, after }: JobPage): Job[] | undefined {
    return this.store.list(limit, after)?.map((job) => this.shown(job));
  }

  events(id: string, after = 0): JobEvent[] {
    return this.store.events(id, after).map((event) => this.shown(event));
  }

  /** Calls `listener` with each new event of the job; returns the unsubscribe function. */
  subscribe(id: string, listener: JobListener): () => void {
    const set = this.listeners.get(id) ?? new Set();
    set.add(listener);
    this.listeners.set(id, set);
    return () => {
      set.delete(listener);
      if (set.size === 0) this.listeners.delete(id);
    };
  }

  /** A queued job is cancelled at once; a running one at the end of its current step, after a checkpoint of it. */
  cancel(id: string): Job {
    const job = this.require(id);
    if (job.status === 'queued') return this.finish(id, 'cancelled', { reason: 'cancelled before it started' });
    if (this.activating?.id === id) throw activatingError(id);
    if (job.status !== 'running' || this.running?.id !== id) throw new JobStateError(`job ${id} is ${job.status}; only a queued or running job can be cancelled`);
    const running = this.running;
    this.stop(running, 'cancel');
    // Only a worker still outside the step loop, which does not look at the cancel, is ended.
    setTimeout(() => {
      if (this.running === running && !running.ended && !running.thread.stepped) this.end(running, 'cancelled');
    }, this.options.cancelGraceMs ?? CANCEL_GRACE_MS).unref?.();
    return this.get(id)!;
  }

  /** Queues an interrupted, cancelled or failed job again: it continues from its latest checkpoint. */
  resume(id: string): Job {
    const job = this.require(id);
    if (!RESUMABLE.includes(job.status)) throw new JobStateError(`job ${id} is ${job.status}; only ${RESUMABLE.join(', ')} jobs can be resumed`);
    this.requireQueueRoom();
    this.store.update(id, { status: 'queued', error: null, finished_at: null, eta_s: null });
    this.pump();
    return this.get(id)!;
  }

  state(): JobSystemState {
    return { queue: 'sqlite', reachable: !this.closed };
  }

  /**
   * The graceful stop of a server shutdown: no queued job starts any more, and the running one stops
   * at the end of its step with a checkpoint of it, recorded as interrupted (to be resumed), or, if it
   * has finished, ends its activation, within `timeoutMs`; then close().
   */
  async shutdown(timeoutMs: number): Promise<void> {
    if (this.closed) return;
    this.draining = true;
    const end = Date.now() + timeoutMs;
    const running = this.running;
    if (running) {
      this.stop(running, 'shutdown');
      await settlesWithin(running.finished, timeoutMs);
    }
    // The running job may have just finished its last step: its activation follows at once.
    if (this.activating) await settlesWithin(this.activating.loaded, end - Date.now());
    this.close();
  }

  /**
   * Ends the running worker where it is (its job is recorded interrupted, from its last checkpoint)
   * and closes the store. Followers of a job get its terminal event, then the end of their stream.
   */
  close(): void {
    if (this.closed) return;
    const running = this.running;
    if (running && this.release(running)) {
      this.finish(running.id, 'interrupted', { reason: 'the server stopped before the job reached a checkpoint of its current step; resume it to continue from its last checkpoint' });
    }
    if (this.activating) {
      this.finish(this.activating.id, 'interrupted', { reason: 'the server stopped while the job\'s final checkpoint was being activated; resume it to activate it' });
      this.activating = null;
    }
    this.closed = true;
    this.store.close();
    // Followers of other jobs would otherwise wait for events that can no longer come.
    for (const set of this.listeners.values()) for (const listener of set) listener(null);
  }

  private require(id: string): Job {
    const job = this.store.get(id);
    if (!job) throw new JobStateError(`no job ${id}`);
    return job;
  }

  private requireQueueRoom(): void {
    const limit = this.options.maxQueuedJobs ?? 16;
    if (this.store.queuedCount() < limit) return;
    const eta = this.running && this.store.get(this.running.id)?.eta_s;
    throw new QueueFullError(limit, eta ?? undefined);
  }

  private stop(running: Running, reason: 'cancel' | 'shutdown'): void {
    running.stopping ??= reason;
    running.thread.cancel();
  }

  private pump(): void {
    if (this.closed || this.draining || this.running) return;
    const job = this.store.nextQueued();
    if (!job) return;
    void this.launch(job);
  }

  private async launch(job: Job): Promise<void> {
    let markFinished = () => {};
    const finished = new Promise<void>((resolve) => (markFinished = resolve));
    const running: Running = { id: job.id, ended: false, finished, markFinished, keptCheckpoints: job.spec.train.keep_checkpoints, thread: new TrainingThread((event) => this.onEvent(running, event)) };
    this.running = running;
    this.store.update(job.id, { status: 'running', started_at: new Date().toISOString() });
    void running.thread.ended.then((end) => {
      if (end.type === 'finished') void this.complete(running, end.result.status, end.result.checkpoint);
      else if (end.type === 'failed') this.end(running, 'failed', end.message);
    });
    try {
      // A job with a checkpoint was interrupted or cancelled before: it continues from there.
      const resumeFrom = job.checkpoint === null ? undefined : resolve(this.dataDir, job.checkpoint);
      const { resolved: spec, estimate } = await prepareJob(job.spec, this.dataDir, this.reserved, resumeFrom);
      running.estimate = estimate;
      running.thread.start({ type: 'start', spec, outDir: join(this.dataDir, 'jobs', job.id), resumeFrom });
    } catch (error) {
      this.end(running, 'failed', (error as Error).message);
    }
  }

  /** Records a worker's event; the checkpoints before one recorded are pruned then, as a resume starts from the recorded one. */
  private onEvent(running: Running, event: TrainingEvent): void {
    if (running.ended) return;
    const { update, type, data } = recordOf(event, (path) => this.relative(path));
    this.store.update(running.id, update);
    this.emit(running.id, type, data);
    if (event.type === 'checkpoint') {
      pruneCheckpoints(event.path, running.keptCheckpoints).catch((error: Error) => console.error(`training job ${running.id}: its older checkpoints could not be removed (${error.message})`));
    }
  }

  /** The worker finished the job's loop: activate its checkpoint if asked, then record the end. */
  private async complete(running: Running, finished: 'succeeded' | 'cancelled', checkpoint: string | undefined): Promise<void> {
    if (!this.release(running)) return;
    const job = this.store.get(running.id)!;
    // A cancel that came during the last step: the run reached its end, but its client asked first.
    const status = running.stopping === 'cancel' ? 'cancelled' : finished;
    if (status === 'succeeded' && job.spec.activate && checkpoint && this.options.onActivate) {
      const end = await this.activate(running.id, checkpoint);
      // close() has recorded the job as interrupted by then: its resume activates the checkpoint.
      if (this.closed) return;
      this.finish(running.id, status, end);
    } else if (status === 'cancelled' && running.stopping === 'shutdown') {
      const from = job.checkpoint === null ? 'from the start' : `from step ${stoppedStep(job)}`;
      this.finish(running.id, 'interrupted', { reason: `the server shut down while the job was running; resume it to continue ${from}` });
    } else {
      this.finish(running.id, status, status === 'cancelled' ? { reason: cancelledReason(job) } : {});
    }
    this.pump();
  }

  /** Loads the checkpoint of a job that succeeded for serving; a failure is the job's `activation_failed` error. */
  private async activate(id: string, checkpoint: string): Promise<JobEnd> {
    const loaded = this.options.onActivate!(checkpoint);
    const activation: Activation = { id, loaded: loaded.catch(() => {}) };
    this.activating = activation;
    try {
      await loaded;
      return { activated: true };
    } catch (error) {
      const message = `the job succeeded but its checkpoint could not be activated: ${this.scrub((error as Error).message)}`;
      this.emitError(id, 'activation_failed', message);
      return { activated: false, error: { code: 'activation_failed', message } };
    } finally {
      if (this.activating === activation) this.activating = null;
    }
  }

  /** The job failed or was stopped from here. */
  private end(running: Running, status: JobStatus, error?: string): void {
    if (!this.release(running)) return;
    if (error === undefined) {
      this.finish(running.id, status, status === 'cancelled' ? { reason: 'cancelled before its first step; its worker, still preparing the run, was ended' } : {});
    } else {
      const message = failureMessage(running.id, error, running.estimate, (text) => this.scrub(text));
      this.emitError(running.id, 'training_failed', message);
      this.finish(running.id, status, { reason: message, error: { code: 'training_failed', message } });
    }
    this.pump();
  }

  /** Ends the job's worker, once; false when it had already ended (a late exit or crash report). */
  private release(running: Running): boolean {
    if (running.ended || this.running !== running) return false;
    running.ended = true;
    running.thread.terminate();
    this.running = null;
    running.markFinished();
    return true;
  }

  /**
   * Records the job's end and emits its one terminal event: status, step, checkpoint, why unless it
   * succeeded, and the error event's object if there was one. The row's `error` is its message.
   */
  private finish(id: string, status: JobStatus, end: JobEnd): Job {
    const { reason, error, activated } = end;
    const message = rowError(end);
    const job = this.store.update(id, { status, eta_s: status === 'succeeded' ? 0 : null, finished_at: new Date().toISOString(), ...(message !== undefined && { error: message }) });
    this.emit(id, 'done', {
      status,
      step: job.step,
      checkpoint: job.checkpoint && this.relative(job.checkpoint),
      ...(reason !== undefined && { reason }),
      ...(error !== undefined && { error }),
      ...(activated !== undefined && { activated }),
    });
    return this.shown(job);
  }

  /** A job's own failure: `{ error: { code, message } }`, without the HTTP errors' `type` and `param` (docs/api.md). */
  private emitError(id: string, code: JobErrorCode, message: string): void {
    this.emit(id, 'error', { error: { code, message } });
  }

  private emit(id: string, type: JobEventType, data: Record<string, unknown>): void {
    if (this.closed) return;
    const event = this.store.appendEvent(id, type, data);
    for (const listener of this.listeners.get(id) ?? []) listener(event);
  }

  private relative(path: string): string {
    return this.names.show(resolve(this.dataDir, path));
  }

  /** Paths inside DATA_DIR written relative to it (a job store written before they were stays readable). */
  private scrub(text: string): string {
    return this.names.scrub(text);
  }

  private shown<T extends Job | JobEvent>(value: T): T {
    return JSON.parse(JSON.stringify(value), (_key, field: unknown) => (typeof field === 'string' ? this.scrub(field) : field)) as T;
  }
}
