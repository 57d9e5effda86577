/**
 * The Host check against DNS rebinding (src/http/host-check.ts) and the Origin check against
 * cross-site requests (src/http/origin-check.ts), with the real curl binary, which sends whatever Host
 * and Origin it is told to.
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import { Hono } from 'hono';
import { hostCheck, isLoopback } from '../../../src/http/host-check.ts';
import { originCheck } from '../../../src/http/origin-check.ts';
import type { RunningServer } from '../../../src/http/server.ts';
import { curl, makeCheckpoint, startTestServer } from '../../routes/helpers.ts';

let server: RunningServer;
let port: string;

beforeAll(async () => {
  server = await startTestServer(await makeCheckpoint(), { INFERENCE_WORKERS: '1', ALLOWED_HOSTS: 'titans.internal,public.example:8443' });
  port = new URL(server.url).port;
});

afterAll(async () => {
  await server.shutdown();
});

/** The status and body of GET `path` sent with `Host: host`. */
async function withHost(host: string, path = '/v1/models', extra: string[] = []): Promise<{ status: number; body: any }> {
  const { stdout, exitCode } = await curl(['-H', `Host: ${host}`, '-w', '\n%{http_code}', ...extra, `${server.url}${path}`]);
  expect(exitCode).toBe(0);
  const newline = stdout.lastIndexOf('\n');
  return { status: Number(stdout.slice(newline + 1)), body: JSON.parse(stdout.slice(0, newline)) };
}

describe('a server bound to 127.0.0.1', () => {
  test('answers the loopback names, with any port', async () => {
    for (const host of ['localhost', `localhost:${port}`, '127.0.0.1', `127.0.0.1:${port}`, `[::1]:${port}`, 'LOCALHOST']) {
      expect((await withHost(host)).status).toBe(200);
    }
  });

  test('answers the names ALLOWED_HOSTS adds, by name whatever port an entry names', async () => {
    expect((await withHost(`titans.internal:${port}`)).status).toBe(200);
    expect((await withHost('public.example')).status).toBe(200);
  });

  test('refuses any other name with 421 and the JSON error, on every route', async () => {
    const requests: [host: string, path: string][] = [
      ['attacker.example', '/v1/models'],
      [`attacker.example:${port}`, '/v1/training/jobs'],
      ['127.0.0.1.attacker.example', '/healthz'],
      ['localhost.attacker.example', '/'],
      // Not a host at all, though it starts with one: a URL parser reads it otherwise.
      [`localhost:${port}@attacker.example`, '/v1/models'],
    ];
    for (const [host, path] of requests) {
      const { status, body } = await withHost(host, path);
      expect(status).toBe(421);
      expect(body.error.code).toBe('misdirected_request');
      expect(body.error.message).toContain('ALLOWED_HOSTS');
    }
  });

  test('/metrics counts a refusal under the route it was sent to', async () => {
    expect((await withHost('attacker.example', '/v1/training/jobs/some-job/events')).status).toBe(421);
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    expect(metrics).toMatch(/^http_requests_total\{route="\/v1\/training\/jobs\/:id\/events",method="GET",status="421"\} 1$/m);
  });

  test('a training job cannot be started through a rebound name', async () => {
    const { status } = await withHost('attacker.example', '/v1/training/jobs', ['-H', 'Content-Type: application/json', '-d', '{"data":{"type":"synthetic-shapes"},"train":{"steps":1}}']);
    expect(status).toBe(421);
    expect((await withHost('localhost', '/v1/training/jobs')).body.data).toEqual([]);
  });
});

describe('a request that changes something, sent by a page of another site', () => {
  /** The status and error code of POST `path` with `Origin: origin`, as a browser sends it. */
  async function postFrom(origin: string, path: string, body: string[] = []): Promise<{ status: number; code?: string }> {
    const { stdout } = await curl(['-X', 'POST', '-H', `Origin: ${origin}`, ...body, '-w', '\n%{http_code}', `${server.url}${path}`]);
    const newline = stdout.lastIndexOf('\n');
    return { status: Number(stdout.slice(newline + 1)), code: JSON.parse(stdout.slice(0, newline) || '{}').error?.code };
  }
  const upload = ['-F', 'image=@examples/red-circle.png', '-F', 'max_tokens=2', '-H', 'Accept: application/json'];

  test('is refused with 403: an upload form posted to the captions, a bodiless cancel, from a sandboxed frame too', async () => {
    expect(await postFrom('http://attacker.example', '/v1/captions', upload)).toEqual({ status: 403, code: 'cross_origin' });
    expect(await postFrom(`http://attacker.example:${port}`, '/v1/training/jobs/some-job/cancel')).toEqual({ status: 403, code: 'cross_origin' });
    expect(await postFrom('null', '/v1/training/jobs/some-job/resume')).toEqual({ status: 403, code: 'cross_origin' });
    // A host ALLOWED_HOSTS names, but another port of it: another application's pages.
    expect(await postFrom('http://titans.internal:9999', '/v1/training/jobs/some-job/cancel')).toEqual({ status: 403, code: 'cross_origin' });
  });

  test('from the server\'s own origin (the playground) or a host ALLOWED_HOSTS names, goes through', async () => {
    expect((await postFrom(`http://127.0.0.1:${port}`, '/v1/captions', upload)).status).toBe(200);
    expect(await postFrom('https://titans.internal', '/v1/training/jobs/some-job/cancel')).toEqual({ status: 404, code: 'not_found' });
    // An entry that names a port: the public host's pages on that port.
    expect(await postFrom('https://public.example:8443', '/v1/training/jobs/some-job/cancel')).toEqual({ status: 404, code: 'not_found' });
    expect(await postFrom('https://public.example:9443', '/v1/training/jobs/some-job/cancel')).toEqual({ status: 403, code: 'cross_origin' });
  });

  test('reads are not affected, nor clients that send no Origin', async () => {
    expect((await withHost('localhost', '/v1/models', ['-H', 'Origin: http://attacker.example'])).status).toBe(200);
    expect((await curl(['-s', '-o', '/dev/null', '-w', '%{http_code}', ...upload, `${server.url}/v1/captions`])).stdout).toBe('200');
  });
});

test('the check applies to loopback bindings, or wherever ALLOWED_HOSTS is set', async () => {
  expect(['127.0.0.1', '127.1.2.3', 'localhost', '::1', '[::1]', '0:0:0:0:0:0:0:1', '[0::1]', '::ffff:127.0.0.1', '::ffff:7f00:1'].every(isLoopback)).toBe(true);
  expect(['0.0.0.0', '::', '192.168.1.5', 'example.com', '::ffff:192.168.1.5', '127.0.0.1.example.com'].some(isLoopback)).toBe(false);
  expect(hostCheck('0.0.0.0', [])).toBeUndefined();
  expect(hostCheck('0.0.0.0', ['titans.example'])).toBeDefined();
  expect(hostCheck('127.0.0.1', ['*'])).toBeUndefined();
  // A loopback bind written otherwise is answered by the address it was written as, and the loopback names.
  const app = new Hono().use(hostCheck('0:0:0:0:0:0:0:1', [])!).get('/', (c) => c.text('ok'));
  app.onError((error, c) => c.text(error.message, 421));
  const status = async (host: string) => (await app.request('/', { headers: { Host: host } })).status;
  expect([await status('[0:0:0:0:0:0:0:1]:8080'), await status('localhost:8080'), await status('rebound.example:8080')]).toEqual([200, 200, 421]);
  // As written, and as a browser writes it.
  const mapped = new Hono().use(hostCheck('::ffff:127.0.0.1', [])!).get('/', (c) => c.text('ok'));
  mapped.onError((error, c) => c.text(error.message, 421));
  const mappedStatus = async (host: string) => (await mapped.request('/', { headers: { Host: host } })).status;
  expect([await mappedStatus('[::ffff:127.0.0.1]:3000'), await mappedStatus(new URL('http://[::ffff:127.0.0.1]:3000').host)]).toEqual([200, 200]);
  // '*' turns the Origin check off as well: any site's pages may send requests.
  expect(originCheck(['*'])).toBeUndefined();
  expect(originCheck([])).toBeDefined();
});
