/** GET /openapi.json: the OpenAPI 3 document of every route (src/http/openapi.ts), built once with the app. */
import { Hono } from 'hono';
import type { RouteDoc } from '../src/http/openapi.ts';

export const OPENAPI_DOCS: RouteDoc[] = [{ method: 'get', path: '/openapi.json', summary: 'This document: the OpenAPI 3 description of every route', responses: { 200: 'the document' } }];

export function openApiRouter(document: object): Hono {
  const router = new Hono();
  router.get('/openapi.json', (c) => c.json(document));
  return router;
}
