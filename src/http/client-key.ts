/** Who a request comes from, for the fair queue: the peer address as Bun reports it. */
import type { Server } from 'bun';
import type { Context } from 'hono';

export function clientKey(c: Context): string {
  // Bun.serve passes its server as the second argument of fetch, which Hono exposes as c.env.
  const server = c.env as Server<unknown> | undefined;
  return server?.requestIP?.(c.req.raw)?.address ?? 'unknown';
}
