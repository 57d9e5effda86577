/**
 * The Hono app: every route of DESIGN.md section 4, the request metrics, and the one place where a
 * thrown error becomes `{ error: { code, message, type, param } }` with its status.
 */
import { Hono, type Context } from 'hono';
import { METHOD_NAME_ALL } from 'hono/router';
import packageJson from '../../package.json' with { type: 'json' };
import { dirname, resolve } from 'node:path';
import { captionsDocs, captionsRouter } from '../../routes/captions.ts';
import { chatDocs, chatRouter } from '../../routes/chat.ts';
import { HEALTH_DOCS, healthRouter } from '../../routes/health.ts';
import { MODELS_DOCS, modelsRouter } from '../../routes/models.ts';
import { OPENAPI_DOCS, openApiRouter } from '../../routes/openapi.ts';
import { PLAYGROUND_DOCS, playgroundRouter } from '../../routes/playground.ts';
import { TRAINING_DOCS, trainingRouter } from '../../routes/training.ts';
import { ApiError, toApiError } from './errors.ts';
import { headLength } from './head-length.ts';
import { hostCheck } from './host-check.ts';
import { originCheck } from './origin-check.ts';
import { Metrics } from './metrics.ts';
import { bodyDeadline } from './request-body.ts';
import { openApiDocument, type RouteDoc } from './openapi.ts';
import { PathNames } from '../data/path-names.ts';
import type { AppServices, Services } from './services.ts';

export function createApp(appServices: AppServices): Hono {
  const { config } = appServices;
  // Replicas of a cluster (REDIS_URL) are told apart in metrics; one process's series stay as they were.
  const services: Services = { ...appServices, metrics: new Metrics(appServices.pool, config.redisUrl ? config.replicaId : undefined) };
  const app = new Hono();

  app.use(async (c, next) => {
    await next();
    // The route pattern, not the path: one series per route whatever the ids in the URL. It is the
    // route the request matched, also where a check before it answered (421, 403, 503, 408).
    const route = c.req.matchedRoutes.filter((matched) => matched.method !== METHOD_NAME_ALL).at(-1)?.path ?? 'unmatched';
    services.metrics.requests.inc({ route, method: c.req.method, status: String(c.res.status) });
  });
  app.use(headLength());
  const checkHost = hostCheck(services.config.host, services.config.allowedHosts);
  if (checkHost) app.use(checkHost);
  const checkOrigin = originCheck(services.config.allowedHosts);
  if (checkOrigin) app.use(checkOrigin);
  app.use(services.lifecycle.refuseWhileDraining());
  app.use(bodyDeadline(config.bodyTimeoutMs));

  // Each router under its mount point, and its routes' documentation under the same one.
  const documented: RouteDoc[] = [];
  const mount = (prefix: string, router: Hono, docs: RouteDoc[]) => {
    app.route(prefix, router);
    for (const doc of docs) documented.push({ ...doc, path: prefix === '/' ? doc.path : doc.path === '/' ? prefix : prefix + doc.path });
  };
  mount('/', healthRouter(services), HEALTH_DOCS);
  mount('/', playgroundRouter(), PLAYGROUND_DOCS);
  mount('/v1/captions', captionsRouter(services), captionsDocs(services.config));
  mount('/v1/chat', chatRouter(services), chatDocs(services.config));
  mount('/v1/models', modelsRouter(services), MODELS_DOCS);
  if (services.training) mount('/v1/training', trainingRouter(services.training, services.config), TRAINING_DOCS);
  documented.push(...OPENAPI_DOCS);
  const { name: title, version, description } = packageJson;
  app.route('/', openApiRouter(openApiDocument(documented, { title, version, description })));

  // Messages from deep down (a checkpoint that cannot be read) may hold server paths: shown relative.
  const names = new PathNames([services.config.dataDir, dirname(resolve(services.config.modelDir))]);
  const answer = (thrown: unknown, c: Context) => {
    const error = toApiError(thrown);
    if (error.code === 'internal_error') console.error(`${c.req.method} ${c.req.path} failed:`, thrown);
    const body = error.toJSON();
    body.error.message = names.scrub(body.error.message);
    return c.json(body, error.status, error.headers);
  };
  app.notFound((c) => answer(new ApiError(404, 'not_found', `no route ${c.req.method} ${c.req.path}`), c));
  app.onError(answer);
  return app;
}
