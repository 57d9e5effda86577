/**
 * The one error type of the HTTP API: every failure a client can cause becomes an ApiError, and
 * app.ts turns it into `{ error: { code, message, type, param, field? } }` with its status (DESIGN.md section 4).
 * toApiError() is the one place where the domain's own errors (images, job specs, data paths, the
 * job scheduler, the inference pool) become HTTP ones: status, code and headers such as Retry-After.
 */
import type { ContentfulStatusCode } from 'hono/utils/http-status';
import { DataPathError } from '../data/paths.ts';
import { ImageError } from '../image.ts';
import { InvalidInputError, ModelChangedError, ModelLoadingError, ModelOverflowError, PoolBusyError, PoolClosingError, WorkerFailedError } from '../inference/errors.ts';
import { JobStateError, QueueFullError, QueueUnavailableError } from '../jobs/errors.ts';
import { SpecError } from '../training/spec.ts';

export type ApiErrorCode =
  | 'invalid_request'
  | 'invalid_image'
  | 'image_truncated'
  | 'unauthorized'
  | 'not_found'
  | 'conflict'
  | 'too_large'
  | 'unsupported_media'
  | 'busy'
  | 'not_ready'
  | 'model_overflow'
  | 'misdirected_request'
  | 'cross_origin'
  | 'request_timeout'
  | 'internal_error';

export class ApiError extends Error {
  override name = 'ApiError';

  constructor(
    readonly status: ContentfulStatusCode,
    readonly code: ApiErrorCode,
    message: string,
    /** The request field at fault, as the client spelled it. */
    readonly field?: string,
    /** Extra response headers, such as Retry-After on 429. */
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }

  /** `type` and `param` are OpenAI's names for the class of error and the field, which its clients read. */
  toJSON(): { error: { code: ApiErrorCode; message: string; type: OpenAiErrorType; param: string | null; field?: string } } {
    return { error: { code: this.code, message: this.message, type: openAiType(this.status), param: this.field ?? null, ...(this.field ? { field: this.field } : {}) } };
  }
}

type OpenAiErrorType = 'invalid_request_error' | 'authentication_error' | 'permission_error' | 'rate_limit_error' | 'server_error';

function openAiType(status: number): OpenAiErrorType {
  if (status >= 500) return 'server_error';
  if (status === 401) return 'authentication_error';
  if (status === 403) return 'permission_error';
  if (status === 429) return 'rate_limit_error';
  return 'invalid_request_error';
}

/** 400 naming the field. */
export function invalidField(field: string, message: string): ApiError {
  return new ApiError(400, 'invalid_request', `${field}: ${message}`, field);
}

const IMAGE_STATUS = { invalid_image: 400, image_truncated: 400, unsupported_media: 415, too_large: 413 } as const;

/**
 * Any thrown value as the ApiError a client sees; unknown failures hide their details. `imageField`
 * is the request field an image error is about, as the client spelled it (a JSON path in chat).
 */
export function toApiError(error: unknown, imageField = 'image'): ApiError {
  if (error instanceof ApiError) return error;
  if (error instanceof ImageError) return new ApiError(IMAGE_STATUS[error.code], error.code, `${imageField}: ${error.message}`, imageField);
  if (error instanceof SpecError || error instanceof DataPathError) return new ApiError(400, 'invalid_request', error.message, error.field);
  if (error instanceof InvalidInputError) return invalidField(error.field, error.message);
  if (error instanceof JobStateError || error instanceof ModelLoadingError) return new ApiError(409, 'conflict', error.message);
  if (error instanceof ModelOverflowError) {
    // The request was well formed, but this model cannot process it: neither a bad field nor a fault.
    return new ApiError(422, 'model_overflow', error.message);
  }
  if (error instanceof QueueFullError || error instanceof PoolBusyError) return new ApiError(429, 'busy', error.message, undefined, retryAfter(error.retryAfterSeconds));
  if (error instanceof ModelChangedError) return new ApiError(503, 'not_ready', error.message, undefined, retryAfter(error.retryAfterSeconds));
  if (error instanceof PoolClosingError) return new ApiError(503, 'not_ready', error.message, undefined, retryAfter(error.retryAfterSeconds));
  if (error instanceof QueueUnavailableError) return new ApiError(503, 'not_ready', error.message, undefined, retryAfter(5)); // ioredis reconnects within seconds
  // Its message was written for clients (a worker crashed, a load was rolled back); the cause is logged.
  if (error instanceof WorkerFailedError) return new ApiError(500, 'internal_error', error.message);
  return new ApiError(500, 'internal_error', 'internal error');
}

function retryAfter(seconds: number): Record<string, string> {
  return { 'Retry-After': String(seconds) };
}
