/**
 * Runs training jobs one at a time, each in its own worker thread (workers/training-worker.ts), so
 * that the HTTP thread only relays: it records each event in the job store and passes it to the
 * job's subscribers (the SSE streams). Others wait in the queue, oldest first. A worker that dies
 * fails its job with the reason; the server carries on.
 */
import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { resolveJobPaths } from '../training/resolve.ts';
import type { JobSpec } from '../training/spec.ts';
import type { TrainingWorkerMessage, TrainingWorkerRequest } from './protocol.ts';
import { JobStore, type Job, type JobEvent, type JobEventType, type JobStatus } from './store.ts';

export interface SchedulerOptions {
  /** Holds jobs.db and the jobs' checkpoints (jobs/<id>/step-NNNNNN); user paths resolve inside it. */
  dataDir: string;
  /** Loads a checkpoint into the inference workers: called for a job with `activate: true` that succeeds. */
  onActivate?: (checkpoint: string) => Promise<unknown>;
  /** How long a cancelled job may take to reach the end of its step before its worker is ended. */
  cancelGraceMs?: number;
}

export class JobStateError extends Error {
  override name = 'JobStateError';
}

const WORKER_URL = new URL('../../workers/training-worker.ts', import.meta.url).href;
const RESUMABLE: readonly JobStatus[] = ['interrupted', 'cancelled', 'failed'];

/** Receives each new event of a job; null when the scheduler closes and no more can come. */
export type JobListener = (event: JobEvent | null) => void;

interface Running {
  id: string;
  worker: Worker;
  /** Set once the job has reached its end, so that the worker's exit is not read as a crash. */
  ended: boolean;
}

export class TrainingScheduler {
  readonly dataDir: string;
  private readonly store: JobStore;
  private readonly listeners = new Map<string, Set<JobListener>>();
  private running: Running | null = null;
  private closed = false;

  constructor(private readonly options: SchedulerOptions) {
    this.dataDir = resolve(options.dataDir);
    mkdirSync(this.dataDir, { recursive: true });
    this.store = new JobStore(join(this.dataDir, 'jobs.db'));
    // Jobs that were running when the last process stopped cannot be continued by this one's worker.
    this.store.interruptRunning();
    queueMicrotask(() => this.pump());
  }

  /** Checks the spec's paths (DataPathError names the field) and queues the job. */
  async submit(spec: JobSpec): Promise<Job> {
    await resolveJobPaths(spec, this.dataDir);
    const job = this.store.create(spec);
    this.pump();
    return this.store.get(job.id)!;
  }

  get(id: string): Job | undefined {
    return this.store.get(id);
  }

  list(): Job[] {
    return this.store.list();
  }

  events(id: string, after = 0): JobEvent[] {
    return this.store.events(id, after);
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

  /** A queued job is cancelled at once; a running one at the end of its current step. */
  cancel(id: string): Job {
    const job = this.require(id);
    if (job.status === 'queued') return this.finish(id, 'cancelled', {});
    if (job.status !== 'running' || this.running?.id !== id) throw new JobStateError(`job ${id} is ${job.status}; only a queued or running job can be cancelled`);
    const running = this.running;
    running.worker.postMessage({ type: 'cancel' } satisfies TrainingWorkerRequest);
    // A worker busy outside the step loop (opening a large data set) is ended after a grace period.
    setTimeout(() => {
      if (this.running === running && !running.ended) this.end(running, 'cancelled');
    }, this.options.cancelGraceMs ?? 30_000).unref?.();
    return job;
  }

  /** Queues an interrupted, cancelled or failed job again: it continues from its latest checkpoint. */
  resume(id: string): Job {
    const job = this.require(id);
    if (!RESUMABLE.includes(job.status)) throw new JobStateError(`job ${id} is ${job.status}; only ${RESUMABLE.join(', ')} jobs can be resumed`);
    this.store.update(id, { status: 'queued', error: null, finished_at: null, eta_s: null });
    this.pump();
    return this.store.get(id)!;
  }

  /**
   * Ends the running worker without touching its job, as a crash would: the next scheduler on this
   * DATA_DIR finds it running and marks it interrupted, to be resumed.
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.running?.worker.terminate();
    this.running = null;
    this.store.close();
    // Followers of a job would otherwise wait for events that can no longer come.
    for (const set of this.listeners.values()) for (const listener of set) listener(null);
  }

  private require(id: string): Job {
    const job = this.store.get(id);
    if (!job) throw new JobStateError(`no job ${id}`);
    return job;
  }

  private pump(): void {
    if (this.closed || this.running) return;
    const job = this.store.nextQueued();
    if (!job) return;
    void this.launch(job);
  }

  private async launch(job: Job): Promise<void> {
    const worker = new Worker(WORKER_URL);
    const running: Running = { id: job.id, worker, ended: false };
    this.running = running;
    this.store.update(job.id, { status: 'running', started_at: new Date().toISOString() });
    worker.onmessage = ({ data }: MessageEvent<TrainingWorkerMessage>) => this.onMessage(running, data);
    worker.onerror = (event) => this.end(running, 'failed', `training worker crashed: ${event.message}`);
    worker.addEventListener('close', (event) => {
      const code = (event as CloseEvent & { code?: number }).code;
      this.end(running, 'failed', `training worker exited unexpectedly${code === undefined ? '' : ` (code ${code})`}`);
    });
    try {
      const spec = await resolveJobPaths(job.spec, this.dataDir);
      // A job with a checkpoint was interrupted or cancelled before: it continues from there.
      const resumeFrom = job.checkpoint ?? undefined;
      worker.postMessage({ type: 'start', spec, outDir: join(this.dataDir, 'jobs', job.id), resumeFrom } satisfies TrainingWorkerRequest);
    } catch (error) {
      this.end(running, 'failed', (error as Error).message);
    }
  }

  private onMessage(running: Running, message: TrainingWorkerMessage): void {
    if (running.ended) return;
    const { id } = running;
    switch (message.type) {
      // The job's loss and eval loss are the caption stage's: the vision stage's loss is another quantity.
      case 'pretraining': {
        const { type: _type, ...data } = message;
        this.store.update(id, { stage: 'vision', vision_step: message.step, samples_per_sec: message.samples_per_sec, eta_s: message.eta_s });
        this.emit(id, 'pretraining', data);
        return;
      }
      case 'pretraining_eval': {
        const { type: _type, ...data } = message;
        this.emit(id, 'pretraining_eval', data);
        return;
      }
      case 'progress': {
        const { type: _type, ...data } = message;
        this.store.update(id, { stage: 'captions', step: message.step, loss: message.loss, samples_per_sec: message.samples_per_sec, eta_s: message.eta_s, skipped_images: message.skipped_images });
        this.emit(id, 'progress', data);
        return;
      }
      case 'eval':
        this.store.update(id, { eval_loss: message.eval_loss });
        this.emit(id, 'eval', { step: message.step, eval_loss: message.eval_loss });
        return;
      case 'checkpoint':
        this.store.update(id, { checkpoint: message.path });
        this.emit(id, 'checkpoint', { step: message.step, path: message.path });
        return;
      case 'finished':
        void this.complete(running, message.result.status, message.result.checkpoint);
        return;
      case 'failed':
        this.end(running, 'failed', message.message);
    }
  }

  /** The worker finished the job's loop: activate its checkpoint if asked, then record the end. */
  private async complete(running: Running, status: 'succeeded' | 'cancelled', checkpoint: string | undefined): Promise<void> {
    if (!this.release(running)) return;
    const job = this.store.get(running.id)!;
    let extra = {};
    if (status === 'succeeded' && job.spec.activate && checkpoint && this.options.onActivate) {
      try {
        await this.options.onActivate(checkpoint);
        extra = { activated: true };
      } catch (error) {
        extra = { activated: false };
        this.emitError(running.id, 'activation_failed', `the job succeeded but its checkpoint could not be activated: ${(error as Error).message}`);
      }
      if (this.closed) return;
    }
    this.finish(running.id, status, extra);
    this.pump();
  }

  /** The job failed or was stopped from here. */
  private end(running: Running, status: JobStatus, error?: string): void {
    if (!this.release(running)) return;
    if (error !== undefined) this.emitError(running.id, 'training_failed', error);
    this.finish(running.id, status, {}, error);
    this.pump();
  }

  /** Ends the job's worker, once; false when it had already ended (a late exit or crash report). */
  private release(running: Running): boolean {
    if (running.ended || this.running !== running) return false;
    running.ended = true;
    running.worker.terminate();
    this.running = null;
    return true;
  }

  private finish(id: string, status: JobStatus, extra: Record<string, unknown>, error?: string): Job {
    const job = this.store.update(id, { status, eta_s: status === 'succeeded' ? 0 : null, finished_at: new Date().toISOString(), ...(error !== undefined && { error }) });
    this.emit(id, 'done', { status, step: job.step, checkpoint: job.checkpoint, ...(error !== undefined && { error }), ...extra });
    return job;
  }

  /** An `error` event carries `{ error: { code, message } }`, as every error of the API does. */
  private emitError(id: string, code: 'training_failed' | 'activation_failed', message: string): void {
    this.emit(id, 'error', { error: { code, message } });
  }

  private emit(id: string, type: JobEventType, data: Record<string, unknown>): void {
    if (this.closed) return;
    const event = this.store.appendEvent(id, type, data);
    for (const listener of this.listeners.get(id) ?? []) listener(event);
  }
}
