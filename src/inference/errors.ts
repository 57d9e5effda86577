/**
 * The inference pool's own failures. They say what went wrong in the pool's terms; src/http/errors.ts
 * is the one place that gives each its HTTP status and headers.
 */

/** MAX_CONCURRENT_STREAMS generations already run or wait. */
export class PoolBusyError extends Error {
  override name = 'PoolBusyError';

  constructor(
    readonly streams: number,
    readonly limit: number,
    /** A guess at when the places asked for free, from the recent time per job and the jobs run at once. */
    readonly retryAfterSeconds: number,
  ) {
    super(`${streams} streams are running or queued, the limit is ${limit}; retry later`);
  }
}

/** The pool is shutting down: it takes no new generation, or ended this one. */
export class PoolClosingError extends Error {
  override name = 'PoolClosingError';
  /** The server stops: a restarted one, or another replica, takes the request sent again. */
  readonly retryAfterSeconds = 1;
}

/** Another model was swapped in while the job waited: the request was fine and, sent again, runs. */
export class ModelChangedError extends Error {
  override name = 'ModelChangedError';
  readonly retryAfterSeconds = 1;
}

/** A model load was asked for while another one runs. */
export class ModelLoadingError extends Error {
  override name = 'ModelLoadingError';

  constructor() {
    super('another model is being loaded');
  }
}

/** The model's numbers overflowed on this input (model/generate.ts): well formed, but not processable. */
export class ModelOverflowError extends Error {
  override name = 'ModelOverflowError';
}

/** A value the pool was given is at fault: a generation option, or a checkpoint it cannot load. */
export class InvalidInputError extends Error {
  override name = 'InvalidInputError';

  constructor(
    /** The input at fault, named as the request names it (`checkpoint`, `top_k`, ...). */
    readonly field: string,
    message: string,
  ) {
    super(message);
  }
}

/** A worker failed in a way the client did not cause; the message says so without internals. */
export class WorkerFailedError extends Error {
  override name = 'WorkerFailedError';
}
