/** The job system's own failures; src/http/errors.ts maps them to HTTP (409, 429 and 503). */

/** The job is in a state that does not allow the change (cancel a finished job, resume a running one). */
export class JobStateError extends Error {
  override name = 'JobStateError';
}

/** A cancel that comes while the job's checkpoint is loaded for serving: its training has ended. */
export function activatingError(id: string): JobStateError {
  return new JobStateError(`job ${id} has finished training and its checkpoint is being activated; it can no longer be cancelled`);
}

/** MAX_QUEUED_JOBS jobs already wait: no more is queued until one starts. */
export class QueueFullError extends Error {
  override name = 'QueueFullError';

  /** A guess at when a place frees: the ETA of the running job due first, within 10 s to an hour; a minute without one. */
  readonly retryAfterSeconds: number;

  constructor(
    readonly limit: number,
    etaSeconds: number | undefined,
  ) {
    super(`${limit} training jobs are already queued (MAX_QUEUED_JOBS); submit again when one has started`);
    this.retryAfterSeconds = Math.min(3600, Math.max(10, Math.ceil(etaSeconds ?? 60)));
  }
}

/** The shared job queue (Redis) cannot be reached: training waits for it, captions go on. */
export class QueueUnavailableError extends Error {
  override name = 'QueueUnavailableError';

  constructor(readonly reason: string) {
    super(`the training job queue (Redis) cannot be reached: ${reason}; retry shortly`);
  }
}
