/**
 * What the training routes and the server ask of a job system. Two implement it: TrainingScheduler
 * (scheduler.ts: SQLite in DATA_DIR, one process, the default) and RedisTrainingQueue
 * (redis-queue.ts: BullMQ on REDIS_URL, shared by every replica). The routes do not know which runs;
 * they await every answer, which the SQLite one gives at once.
 */
import type { JobSpec } from '../training/spec.ts';
import type { Job, JobEvent } from './store.ts';

export type Awaitable<T> = T | Promise<T>;

/**
 * How long a cancelled job whose worker has reported no step yet (it may be opening a large data
 * set) is given before the worker is ended; once a step is reported, a cancel waits for the end of
 * the step, however long. The job systems' default cancelGraceMs.
 */
export const CANCEL_GRACE_MS = 30_000;

/** Receives each new event of a job; null when the job system closes and no more can come. */
export type JobListener = (event: JobEvent | null) => void;

/** Where jobs live, and whether that place answers now (/readyz reports it). */
export interface JobSystemState {
  queue: 'sqlite' | 'redis';
  reachable: boolean;
}

/** A page of the job list, newest first: `limit` jobs, the first of them the one created before `after`. */
export interface JobPage {
  limit: number;
  after?: string;
}

export interface TrainingJobs {
  /**
   * Checks the spec against this server and queues the job: DataPathError names a bad path,
   * SpecError a job too large for MAX_JOB_MEMORY_BYTES, QueueFullError a full queue.
   */
  submit(spec: JobSpec): Promise<Job>;
  /** The job as the API shows it: paths relative to DATA_DIR. */
  get(id: string): Awaitable<Job | undefined>;
  /** Newest first: up to `limit` jobs, after the job `after`; undefined when there is no job `after`. */
  list(page: JobPage): Awaitable<Job[] | undefined>;
  /** The job's history after sequence number `after`, in order. */
  events(id: string, after?: number): Awaitable<JobEvent[]>;
  /** Calls `listener` with each new event of the job; returns the unsubscribe function. */
  subscribe(id: string, listener: JobListener): () => void;
  /** A queued job is cancelled at once; a running one at the end of its current step, after a checkpoint of it. */
  cancel(id: string): Awaitable<Job>;
  /** Queues an interrupted, cancelled or failed job again: it continues from its latest checkpoint. */
  resume(id: string): Awaitable<Job>;
  state(): JobSystemState;
  /** The graceful stop of a server shutdown: running jobs stop at the end of a step, with a checkpoint of it, within `timeoutMs`. */
  shutdown(timeoutMs: number): Promise<void>;
}
