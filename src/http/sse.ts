/**
 * Server-Sent Events around Hono's streamSSE: a comment heartbeat so that a quiet stream (a long
 * queue wait) is not closed by an idle timer, and one AbortSignal that fires when the client goes
 * away, whichever way Bun reports it (the request's signal, or the response body being cancelled).
 */
import type { Context } from 'hono';
import { streamSSE, type SSEMessage, type SSEStreamingApi } from 'hono/streaming';
import { toApiError, type ApiError } from './errors.ts';

export interface EventStreamOptions {
  heartbeatMs: number;
  /** Writes the events; `signal` aborts when the client disconnects. */
  produce: (stream: SSEStreamingApi, signal: AbortSignal) => Promise<void>;
  /** Reports a failure inside the open stream; default: the API's `event: error` (errorEvent). */
  writeError?: (stream: SSEStreamingApi, error: ApiError) => Promise<void>;
  /** Runs once the stream has ended, however it ended. */
  onEnd: () => void;
}

/**
 * `event: error` with data `{ "error": { "code", "message", "type", "param", "field"? } }`: the same
 * object as an HTTP error's body, for a stream that fails (a training job's own failure is its event).
 */
export function errorEvent(error: ApiError): SSEMessage {
  return { event: 'error', data: JSON.stringify(error.toJSON()) };
}

export function eventStream(c: Context, { heartbeatMs, produce, writeError = (stream, error) => stream.writeSSE(errorEvent(error)), onEnd }: EventStreamOptions): Response {
  // Proxies such as nginx buffer responses unless told not to, which would defeat streaming.
  c.header('X-Accel-Buffering', 'no');
  if (c.req.method === 'HEAD') {
    // Hono answers HEAD with the GET handler; Bun drops the body and never says the client left, so a
    // stream started here would wait on its first write for ever, its heartbeat and subscription with it.
    onEnd();
    return c.body(null, 200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache' });
  }
  return streamSSE(c, async (stream) => {
    const disconnected = new AbortController();
    const abort = () => disconnected.abort();
    stream.onAbort(abort);
    c.req.raw.signal.addEventListener('abort', abort, { once: true });
    // One heartbeat at a time: a client that reads nothing must not have them pile up.
    let beating = false;
    const heartbeat = setInterval(() => {
      if (beating) return;
      beating = true;
      void stream.write(': heartbeat\n\n').finally(() => (beating = false));
    }, heartbeatMs);
    try {
      // Bun sends the headers with the first bytes: a request waiting for a worker, whose first
      // event comes when it starts, is answered 200 at once all the same.
      await stream.write(': heartbeat\n\n');
      await produce(stream, disconnected.signal);
    } catch (error) {
      const apiError = toApiError(error);
      if (apiError.code === 'internal_error') console.error(`${c.req.method} ${c.req.path} failed inside its stream:`, error);
      await writeError(stream, apiError);
    } finally {
      clearInterval(heartbeat);
      c.req.raw.signal.removeEventListener('abort', abort);
      onEnd();
    }
  });
}
