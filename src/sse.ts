/**
 * Server-Sent Events around Hono's streamSSE: a comment heartbeat so that a quiet stream (a long
 * queue wait) is not closed by an idle timer, and one AbortSignal that fires when the client goes
 * away, whichever way Bun reports it (the request's signal, or the response body being cancelled).
 */
import type { Context } from 'hono';
import { streamSSE, type SSEStreamingApi } from 'hono/streaming';
import { toApiError, type ApiError } from './errors.ts';

export interface EventStreamOptions {
  heartbeatMs: number;
  /** Writes the events; `signal` aborts when the client disconnects. */
  produce: (stream: SSEStreamingApi, signal: AbortSignal) => Promise<void>;
  /** Reports a failure inside the open stream, in the route's own event format. */
  writeError: (stream: SSEStreamingApi, error: ApiError) => Promise<void>;
  /** Runs once the stream has ended, however it ended. */
  onEnd: () => void;
}

export function eventStream(c: Context, { heartbeatMs, produce, writeError, onEnd }: EventStreamOptions): Response {
  // Proxies such as nginx buffer responses unless told not to, which would defeat streaming.
  c.header('X-Accel-Buffering', 'no');
  return streamSSE(c, async (stream) => {
    const disconnected = new AbortController();
    const abort = () => disconnected.abort();
    stream.onAbort(abort);
    c.req.raw.signal.addEventListener('abort', abort, { once: true });
    const heartbeat = setInterval(() => void stream.write(': heartbeat\n\n'), heartbeatMs);
    try {
      await produce(stream, disconnected.signal);
    } catch (error) {
      const apiError = toApiError(error);
      if (apiError.code === 'internal_error') console.error('generation failed inside a stream:', error);
      await writeError(stream, apiError);
    } finally {
      clearInterval(heartbeat);
      c.req.raw.signal.removeEventListener('abort', abort);
      onEnd();
    }
  });
}
