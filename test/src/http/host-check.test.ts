/**
 * The Host check against DNS rebinding (src/http/host-check.ts), with the real curl binary, which sends
 * whatever Host it is told to.
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import { hostCheck, isLoopback } from '../../../src/http/host-check.ts';
import type { RunningServer } from '../../../src/http/server.ts';
import { curl, makeCheckpoint, startTestServer } from '../../routes/helpers.ts';

let server: RunningServer;
let port: string;

beforeAll(async () => {
  server = await startTestServer(await makeCheckpoint(), { INFERENCE_WORKERS: '1', ALLOWED_HOSTS: 'titans.internal' });
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

  test('answers the names ALLOWED_HOSTS adds', async () => {
    expect((await withHost(`titans.internal:${port}`)).status).toBe(200);
  });

  test('refuses any other name with 421 and the JSON error, on every route', async () => {
    const requests: [host: string, path: string][] = [
      ['attacker.example', '/v1/models'],
      [`attacker.example:${port}`, '/v1/training/jobs'],
      ['127.0.0.1.attacker.example', '/healthz'],
      ['localhost.attacker.example', '/'],
    ];
    for (const [host, path] of requests) {
      const { status, body } = await withHost(host, path);
      expect(status).toBe(421);
      expect(body.error.code).toBe('misdirected_request');
      expect(body.error.message).toContain('ALLOWED_HOSTS');
    }
  });

  test('a training job cannot be started through a rebound name', async () => {
    const { status } = await withHost('attacker.example', '/v1/training/jobs', ['-H', 'Content-Type: application/json', '-d', '{"data":{"type":"synthetic-shapes"},"train":{"steps":1}}']);
    expect(status).toBe(421);
    expect((await withHost('localhost', '/v1/training/jobs')).body.data).toEqual([]);
  });
});

test('the check applies to loopback bindings, or wherever ALLOWED_HOSTS is set', () => {
  expect(['127.0.0.1', '127.1.2.3', 'localhost', '::1', '[::1]'].every(isLoopback)).toBe(true);
  expect(['0.0.0.0', '::', '192.168.1.5', 'example.com'].some(isLoopback)).toBe(false);
  expect(hostCheck('0.0.0.0', [])).toBeUndefined();
  expect(hostCheck('0.0.0.0', ['titans.example'])).toBeDefined();
  expect(hostCheck('127.0.0.1', ['*'])).toBeUndefined();
});
