/**
 * The Hono app: every route of DESIGN.md section 4, the request metrics, and the one place where a
 * thrown error becomes `{ error: { code, message } }` with its status.
 */
import { Hono } from 'hono';
import { dirname, resolve } from 'node:path';
import { captionsRouter } from '../routes/captions.ts';
import { chatRouter } from '../routes/chat.ts';
import { healthRouter } from '../routes/health.ts';
import { modelsRouter } from '../routes/models.ts';
import { playgroundRouter } from '../routes/playground.ts';
import { trainingRouter } from '../routes/training.ts';
import { ApiError, toApiError } from './errors.ts';
import { hostCheck } from './host-check.ts';
import { Metrics } from './metrics.ts';
import { PathNames } from './path-names.ts';
import type { AppServices, Services } from './services.ts';

export function createApp(appServices: AppServices): Hono {
  const { config } = appServices;
  // Replicas of a cluster (REDIS_URL) are told apart in metrics; one process's series stay as they were.
  const services: Services = { ...appServices, metrics: new Metrics(appServices.pool, config.redisUrl ? config.replicaId : undefined) };
  const app = new Hono();

  app.use(async (c, next) => {
    await next();
    // The route pattern, not the path: one series per route whatever the ids in the URL.
    const route = c.res.status === 404 && c.req.routePath === '/*' ? 'unmatched' : c.req.routePath;
    services.metrics.requests.inc({ route, method: c.req.method, status: String(c.res.status) });
  });
  const checkHost = hostCheck(services.config.host, services.config.allowedHosts);
  if (checkHost) app.use(checkHost);
  app.use(services.lifecycle.refuseWhileDraining());

  app.route('/', healthRouter(services));
  app.route('/', playgroundRouter());
  app.route('/v1/captions', captionsRouter(services));
  app.route('/v1/chat', chatRouter(services));
  app.route('/v1/models', modelsRouter(services));
  if (services.training) app.route('/v1/training', trainingRouter(services.training, services.config));

  app.notFound((c) => {
    const error = new ApiError(404, 'not_found', `no route ${c.req.method} ${c.req.path}`);
    return c.json(error.toJSON(), 404);
  });
  // Messages from deep down (a checkpoint that cannot be read) may hold server paths: shown relative.
  const names = new PathNames([services.config.dataDir, dirname(resolve(services.config.modelDir))]);
  app.onError((thrown, c) => {
    const error = toApiError(thrown);
    if (error.code === 'internal_error') console.error(`${c.req.method} ${c.req.path} failed:`, thrown);
    const body = error.toJSON();
    body.error.message = names.scrub(body.error.message);
    return c.json(body, error.status, error.headers);
  });
  return app;
}
