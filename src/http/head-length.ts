/**
 * HEAD is answered with the Content-Length that GET's body has (RFC 9110): Hono answers HEAD with
 * GET's headers and no body, for which Bun would write a length of 0. An event stream has no length
 * and is not read.
 */
import type { MiddlewareHandler } from 'hono';

export function headLength(): MiddlewareHandler {
  return async (c, next) => {
    await next();
    const { res } = c;
    if (c.req.method !== 'HEAD' || !res.body || res.headers.has('content-length') || res.headers.get('content-type')?.startsWith('text/event-stream')) return;
    c.header('content-length', String((await res.clone().arrayBuffer()).byteLength));
  };
}
