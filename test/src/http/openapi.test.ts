/**
 * GET /openapi.json from the real server: an OpenAPI 3 document that lists every route the app
 * mounts, with the request bodies of the schemas that check them.
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import { createApp } from '../../../src/http/app.ts';
import { Lifecycle } from '../../../src/http/lifecycle.ts';
import type { RunningServer } from '../../../src/http/server.ts';
import { loadServerConfig } from '../../../src/http/settings.ts';
import { TrainingScheduler } from '../../../src/jobs/scheduler.ts';
import { makeCheckpoint, startTestServer } from '../../routes/helpers.ts';
import { tempDir, tinyJob } from '../training/helpers.ts';

interface Operation {
  summary: string;
  parameters?: { name: string; in: string }[];
  requestBody?: { content: Record<string, { schema: { type?: string; properties?: Record<string, unknown>; required?: string[] } }> };
  responses: Record<string, { description: string }>;
}

let server: RunningServer;
let document: { openapi: string; info: { title: string; version: string }; paths: Record<string, Record<string, Operation>>; components: { schemas: Record<string, unknown> } };

beforeAll(async () => {
  server = await startTestServer(await makeCheckpoint(), { INFERENCE_WORKERS: '1' });
  const response = await fetch(`${server.url}/openapi.json`);
  expect(response.status).toBe(200);
  expect(response.headers.get('content-type')).toContain('application/json');
  document = await response.json();
});

afterAll(() => server.shutdown());

describe('GET /openapi.json', () => {
  test('is an OpenAPI 3 document: version, info, and for every operation a summary and its answers', () => {
    expect(document.openapi).toMatch(/^3\.\d+\.\d+$/);
    expect(document.info).toMatchObject({ title: 'titans-mm', version: expect.stringMatching(/^\d+\.\d+\.\d+/) });
    expect(Object.keys(document.components.schemas)).toContain('Error');
    for (const [path, operations] of Object.entries(document.paths)) {
      expect(path).toStartWith('/');
      for (const [method, operation] of Object.entries(operations)) {
        expect(['get', 'post', 'put']).toContain(method);
        expect(operation.summary.length).toBeGreaterThan(10);
        expect(Object.keys(operation.responses).length).toBeGreaterThan(0);
        // Every {name} in the path is a declared path parameter, and nothing else is.
        const names = [...path.matchAll(/\{(\w+)\}/g)].map((m) => m[1]!);
        expect((operation.parameters ?? []).filter((p) => p.in === 'path').map((p) => p.name)).toEqual(names);
      }
    }
  });

  test('lists every route the app mounts, and nothing it does not', async () => {
    const config = loadServerConfig({ MODEL_DIR: 'unused', DATA_DIR: await tempDir() });
    const training = new TrainingScheduler({ dataDir: config.dataDir });
    try {
      const app = createApp({ pool: server.pool, config, training, lifecycle: new Lifecycle() });
      const mounted = app.routes.filter((route) => route.method !== 'ALL').map((route) => `${route.method.toLowerCase()} ${route.path.replace(/:(\w+)/g, '{$1}')}`);
      const documented = Object.entries(document.paths).flatMap(([path, operations]) => Object.keys(operations).map((method) => `${method} ${path}`));
      expect(mounted.length).toBeGreaterThan(15);
      expect([...new Set(mounted)].sort()).toEqual(documented.sort());
    } finally {
      training.close();
    }
  });

  test('request bodies come from the schemas that check them: fields, requirements and form coercion', () => {
    const captions = document.paths['/v1/captions']!.post!.requestBody!.content;
    expect(Object.keys(captions).sort()).toEqual(['application/json', 'multipart/form-data']);
    expect(captions['multipart/form-data']!.schema.required).toEqual(['image']);
    expect(Object.keys(captions['multipart/form-data']!.schema.properties!)).toEqual(expect.arrayContaining(['prompt', 'max_tokens', 'temperature', 'stop', 'stream', 'logprobs']));
    expect(JSON.stringify(captions['multipart/form-data']!.schema.properties!.max_tokens)).toContain('"string"');
    // A number's range is said as OpenAPI says it, not only in the description; null, which the server takes, too.
    expect(JSON.stringify(captions['application/json']!.schema.properties!.temperature)).toContain('{"type":"number","minimum":0,"maximum":2,"nullable":true}');
    const chat = document.paths['/v1/chat/completions']!.post!.requestBody!.content['application/json']!.schema;
    expect(chat.required).toEqual(['messages']);
    const job = document.paths['/v1/training/jobs']!.post!.requestBody!.content['application/json']!.schema;
    expect(job.required).toEqual(['data']);
    expect(Object.keys(job.properties!).sort()).toEqual(Object.keys(tinyJob()).concat(['activate', 'base_checkpoint', 'vision_pretraining']).sort());
    expect(document.paths['/v1/models/current']!.put!.requestBody!.content['application/json']!.schema.required).toEqual(['checkpoint']);
  });

  test('every schema uses only what OpenAPI 3.0 schemas allow: an upload is a string of format binary', () => {
    const allowed = new Set(['title', 'multipleOf', 'maximum', 'exclusiveMaximum', 'minimum', 'exclusiveMinimum', 'maxLength', 'minLength', 'pattern', 'maxItems',
      'minItems', 'uniqueItems', 'maxProperties', 'minProperties', 'required', 'enum', 'type', 'allOf', 'oneOf', 'anyOf', 'not', 'items', 'properties',
      'additionalProperties', 'description', 'format', 'default', 'nullable', 'discriminator', 'readOnly', 'writeOnly', 'example', 'deprecated', '$ref']);
    const strays: string[] = [];
    const walk = (schema: Record<string, unknown>, at: string) => {
      // OpenAPI 3.0 reads nullable only beside a type.
      if (schema.nullable === true && schema.type === undefined) strays.push(`${at}.nullable (without a type)`);
      for (const [key, value] of Object.entries(schema)) {
        if (!allowed.has(key) && !key.startsWith('x-')) strays.push(`${at}.${key}`);
        if (key === 'properties') for (const [name, property] of Object.entries(value as object)) walk(property, `${at}.properties.${name}`);
        else if (['allOf', 'oneOf', 'anyOf'].includes(key)) (value as Record<string, unknown>[]).forEach((item, i) => walk(item, `${at}.${key}[${i}]`));
        else if (['items', 'not'].includes(key) || (key === 'additionalProperties' && typeof value === 'object')) walk(value as Record<string, unknown>, `${at}.${key}`);
      }
    };
    for (const [path, operations] of Object.entries(document.paths)) {
      for (const [method, operation] of Object.entries(operations)) {
        for (const [type, { schema }] of Object.entries(operation.requestBody?.content ?? {})) walk(schema, `${method} ${path} ${type}`);
      }
    }
    for (const [name, schema] of Object.entries(document.components.schemas)) walk(schema as Record<string, unknown>, name);
    expect(strays).toEqual([]);
    expect(document.paths['/v1/captions']!.post!.requestBody!.content['multipart/form-data']!.schema.properties!.image).toEqual({ type: 'string', format: 'binary' });
  });

  test('every operation lists the answers of the checks before every route: 421, 500; 403 where it changes anything, 408 with a body, 503 but on the probes', () => {
    for (const [path, operations] of Object.entries(document.paths)) {
      for (const [method, operation] of Object.entries(operations)) {
        const statuses = Object.keys(operation.responses);
        expect({ path, method, statuses }).toEqual({ path, method, statuses: expect.arrayContaining(['421', '500']) });
        if (method !== 'get') expect({ path, method, statuses }).toEqual({ path, method, statuses: expect.arrayContaining(['403']) });
        if (operation.requestBody) expect({ path, method, statuses }).toEqual({ path, method, statuses: expect.arrayContaining(['408']) });
        expect({ path, method, has503: statuses.includes('503') }).toEqual({ path, method, has503: !['/healthz', '/readyz', '/metrics'].includes(path) || path === '/readyz' });
      }
    }
  });

  test('an answer that comes as an event stream or as JSON lists both', () => {
    const answers = (path: string) => Object.keys((document.paths[path]!.post!.responses['200'] as unknown as { content: object }).content).sort();
    expect(answers('/v1/captions')).toEqual(['application/json', 'text/event-stream']);
    expect(answers('/v1/chat/completions')).toEqual(['application/json', 'text/event-stream']);
  });

  test('HEAD gives the Content-Length of what GET sends (Bun wrote 0 for the empty body)', async () => {
    for (const path of ['/openapi.json', '/v1/models', '/']) {
      const head = await fetch(`${server.url}${path}`, { method: 'HEAD' });
      const body = await (await fetch(`${server.url}${path}`)).arrayBuffer();
      expect({ path, length: head.headers.get('content-length') }).toEqual({ path, length: String(body.byteLength) });
    }
  });

  test('the playground links to it', async () => {
    const page = await (await fetch(`${server.url}/`)).text();
    expect(page).toContain('href="/openapi.json"');
  });
});
