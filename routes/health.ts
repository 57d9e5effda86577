/**
 * GET /healthz (liveness, with the pool's state, each worker's live tensors, and whether the server
 * drains: still 200 then, the process is alive), GET /readyz (503 once shutdown began) and
 * GET /metrics (Prometheus text). All three answer from the main thread without touching a worker,
 * so they stay fast while every worker generates, and all three answer during the drain. /readyz
 * also says whether the training jobs' store answers (Redis, for replicas); it stays 200 without it,
 * because captions do not need it (the training routes answer 503 meanwhile).
 */
import { Hono } from 'hono';
import { ApiError } from '../src/http/errors.ts';
import type { Services } from '../src/http/services.ts';
import type { RouteDoc } from '../src/http/openapi.ts';

export const HEALTH_DOCS: RouteDoc[] = [
  { method: 'get', path: '/healthz', summary: "Liveness: the pool's state, each worker's live tensors, whether the server drains", responses: { 200: 'alive (also while draining)' } },
  { method: 'get', path: '/readyz', summary: 'Readiness: 503 with Retry-After once shutdown began', responses: { 200: 'ready', 503: 'shutting down' } },
  { method: 'get', path: '/metrics', summary: 'Prometheus metrics', responses: { 200: { description: 'the Prometheus text format', type: 'text/plain' } } },
];

export function healthRouter({ pool, metrics, lifecycle, training, config }: Services): Hono {
  const router = new Hono();
  router.get('/healthz', (c) => {
    const { id, untrained, backend } = pool.model;
    const { draining } = lifecycle;
    return c.json({ status: draining ? 'draining' : 'ok', draining, model: { id, untrained }, backend, ...pool.stats() });
  });
  router.get('/readyz', (c) => {
    if (lifecycle.draining || !pool.accepting) throw new ApiError(503, 'not_ready', 'the server is shutting down', undefined, { 'Retry-After': String(lifecycle.retryAfterSeconds()) });
    return c.json({ ready: true, ...(config.redisUrl && { replica: config.replicaId }), ...(training && { training: training.state() }) });
  });
  router.get('/metrics', async (c) => {
    return c.body(await metrics.registry.metrics(), 200, { 'Content-Type': metrics.registry.contentType });
  });
  return router;
}
