/**
 * The server's shutdown state, shared by the routes. While it drains (after SIGTERM) the server keeps
 * listening, so that a client is answered rather than refused: new requests get 503 with Retry-After
 * (the time left until the process is gone at the latest), /readyz says not ready, /healthz still
 * answers 200 and says `draining`, and requests already running carry on.
 */
import type { MiddlewareHandler } from 'hono';
import { ApiError } from './errors.ts';

/** Answered while draining: probes, and the metrics that show the drain. */
export const DURING_DRAIN = ['/healthz', '/readyz', '/metrics'];

export class Lifecycle {
  private deadline: number | null = null;

  get draining(): boolean {
    return this.deadline !== null;
  }

  /** From now on, new requests are refused; the process ends within `timeoutMs`. */
  beginDrain(timeoutMs: number): void {
    this.deadline ??= Date.now() + timeoutMs;
  }

  /** Whole seconds until the drain ends at the latest (at least 1): when a restarted server may answer. */
  retryAfterSeconds(): number {
    return Math.max(1, Math.ceil(((this.deadline ?? Date.now()) - Date.now()) / 1000));
  }

  /** 503 with Retry-After for every new request but the probes, while draining. */
  refuseWhileDraining(): MiddlewareHandler {
    return async (c, next) => {
      if (this.draining && !DURING_DRAIN.includes(c.req.path)) {
        const seconds = this.retryAfterSeconds();
        // Connection: close, so that a kept-alive client reconnects to whichever server answers next.
        throw new ApiError(503, 'not_ready', `the server is shutting down; retry in ${seconds} s`, undefined, { 'Retry-After': String(seconds), Connection: 'close' });
      }
      await next();
    };
  }
}
