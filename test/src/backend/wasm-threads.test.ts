/**
 * The threaded WASM build (src/backend/wasm-threads.ts). selectBackend() runs once per process, so
 * each thread count gets a fresh Bun process; both read the bundled model with every kernel on the
 * thread pool (SERIAL_BELOW zeroed), the hardest case for agreement. The native BLAS is off here:
 * its own thread count changes how it splits a product (test/src/backend/blas.test.ts checks it).
 */
import { describe, expect, test } from 'bun:test';
import { readFileSync } from 'node:fs';
import { backendWorkerEnv, parseThreadsSetting, threadsPerInstance } from '../../../src/backend/threads.ts';
import { threadPoolAddress } from '../../../src/backend/wasm-threads.ts';
import { form, imageBlob, jpeg, makeCheckpoint, startTestServer } from '../../routes/helpers.ts';

const root = `${import.meta.dir}/../../..`;
const module = (path: string) => JSON.stringify(Bun.resolveSync(path, root));

interface Run {
  backend: { threads: number; singleThreadReason?: string };
  logits: number[];
  text: string;
  /** pthreads running in XNNPACK's pool: threads - 1 (the calling thread is the other). */
  pooled: number;
}

async function runChild(threads: string, prelude = ''): Promise<{ run?: Run; stdout: string; stderr: string; exitCode: number }> {
  const script = `
    import * as tf from '@tensorflow/tfjs-core';
    import { SERIAL_BELOW } from ${module('./src/backend/wasm-threads.ts')};
    import { selectBackend } from ${module('./src/backend/select.ts')};
    import { loadCheckpoint } from ${module('./src/index.ts')};
    ${prelude}
    SERIAL_BELOW.productFlops = 0;
    SERIAL_BELOW.elements = 0;
    const backend = await selectBackend();
    const model = await loadCheckpoint(${JSON.stringify(`${root}/models/default`)});
    const { imageSize } = model.config;
    const pixels = Float32Array.from({ length: 3 * imageSize * imageSize }, (_, i) => Math.sin(i * 0.37));
    const image = tf.tensor(pixels, [1, 1, 3, imageSize, imageSize]);
    const prompt = Array.from(new TextEncoder().encode('A photo of'));
    const { tokens, imagePositions } = model.withImageSlots([...prompt, model.imageTokenId], [prompt.length]);
    const ids = tf.tensor2d([tokens], [1, tokens.length], 'int32');
    const out = model.forward(ids, { images: image, imagePositions: [imagePositions] });
    const logits = Array.from(out.dataSync());
    const pooled = tf.backend().wasm.PThread?.runningWorkers.length ?? 0;
    let text = '';
    for await (const token of model.generate(tokens, { images: image.reshape([1, 3, imageSize, imageSize]), imagePositions, temperature: 0, maxLength: 24 })) text += token.text;
    console.log(JSON.stringify({ backend, logits, text, pooled }));
    process.exit(0);`;
  const child = Bun.spawn([process.execPath, '-e', script], { cwd: root, env: { ...process.env, MAC_BACKEND: 'wasm', MAC_THREADS: threads, MAC_BLAS: 'off' }, stdout: 'pipe', stderr: 'pipe' });
  const [stdout, stderr] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text()]);
  const exitCode = await child.exited;
  const last = stdout.trim().split('\n').at(-1) ?? '';
  return { run: last.startsWith('{') ? (JSON.parse(last) as Run) : undefined, stdout, stderr, exitCode };
}

describe('threaded WASM', () => {
  test('two threads give the logits of one (within 1e-5) and the same greedy text', async () => {
    const [one, two] = [await runChild('1'), await runChild('2')];
    expect(one.run?.backend.threads, one.stdout + one.stderr).toBe(1);
    expect(two.run?.backend.threads, two.stderr).toBe(2);
    expect([one.run!.pooled, two.run!.pooled]).toEqual([0, 1]);
    expect(two.run!.logits.length).toBe(one.run!.logits.length);
    const largest = Math.max(...two.run!.logits.map((value, i) => Math.abs(value - one.run!.logits[i]!)));
    expect(largest).toBeLessThanOrEqual(1e-5);
    expect(two.run!.text).toBe(one.run!.text);
  }, 120_000);

  test('a pthread worker that cannot load leaves one thread running, with the reason, not a crash', async () => {
    // Bun cannot find the script of any pthread worker: each reports an error after it was made.
    const prelude = `
      const workerThreads = (await import('node:worker_threads')).default;
      const Real = workerThreads.Worker;
      workerThreads.Worker = class extends Real { constructor(url, options) { super('/nonexistent/pthread.js', options); } };`;
    const { run, stderr } = await runChild('2', prelude.replace(/\n/g, ' '));
    expect(run?.backend.threads, stderr).toBe(1);
    expect(run?.backend.singleThreadReason).toContain("the threaded WASM build could not start: a pthread worker failed: Cannot find module '/nonexistent/pthread.js'");
    expect(stderr).toContain('running one thread');
  }, 120_000);
});

describe('MAC_THREADS', () => {
  test('the server gives its one inference worker two threads, says so on /healthz, and answers', async () => {
    const server = await startTestServer(await makeCheckpoint(), { INFERENCE_WORKERS: '1', MAC_THREADS: '2' });
    try {
      const health = (await (await fetch(`${server.url}/healthz`)).json()) as { backend: { name: string; threads: number; singleThreadReason?: string } };
      expect(health.backend).toMatchObject({ name: 'wasm', threads: 2 });
      expect(health.backend.singleThreadReason).toBeUndefined();
      const caption = await fetch(`${server.url}/v1/captions`, { method: 'POST', body: form({ image: imageBlob(await jpeg()), max_tokens: '4', stream: 'false' }) });
      expect(caption.status).toBe(200);
    } finally {
      await server.shutdown();
    }
  }, 60_000);

  test("is 'auto' or a whole number from 1 to 8", () => {
    expect(parseThreadsSetting(undefined)).toBe('auto');
    expect(parseThreadsSetting(' AUTO ')).toBe('auto');
    expect(parseThreadsSetting('4')).toBe(4);
    for (const bad of ['0', '9', '1.5', 'two', '-1', '2x']) {
      expect(() => parseThreadsSetting(bad)).toThrow(`MAC_THREADS must be 'auto' or a whole number from 1 to 8; got '${bad}'`);
    }
  });

  test('auto shares the cores among the instances side by side, at least one thread each', () => {
    expect(threadsPerInstance('auto', 1, 2)).toBe(2);
    expect(threadsPerInstance('auto', 2, 2)).toBe(1);
    expect(threadsPerInstance('auto', 3, 2)).toBe(1);
    expect(threadsPerInstance('auto', 2, 16)).toBe(8);
    expect(threadsPerInstance('auto', 1, 64)).toBe(8);
    expect(threadsPerInstance(3, 4, 2)).toBe(3);
    expect(backendWorkerEnv(3, { MAC_THREADS: 'auto', OTHER: 'x', UNSET: undefined })).toEqual({ MAC_THREADS: '3', OTHER: 'x' });
  });

  test('a bad value stops the server at startup, before any worker starts', async () => {
    const server = Bun.spawn([process.execPath, 'src/http/server.ts'], { cwd: root, env: { ...process.env, PORT: '0', MAC_THREADS: '0' }, stdout: 'pipe', stderr: 'pipe' });
    const timer = setTimeout(() => server.kill(), 30_000);
    const [exitCode, stderr] = await Promise.all([server.exited, new Response(server.stderr).text()]);
    clearTimeout(timer);
    expect(exitCode).not.toBe(0);
    expect(stderr).toContain("MAC_THREADS must be 'auto' or a whole number from 1 to 8; got '0'");
  }, 60_000);

  test('a bad value is a startup error of the backend', async () => {
    const { stdout, stderr, exitCode } = await runChild('lots');
    expect(exitCode).not.toBe(0);
    expect(stderr).toContain("MAC_THREADS must be 'auto' or a whole number from 1 to 8; got 'lots'");
    expect(stdout).not.toContain('"logits"');
  }, 60_000);
});

test("the thread pool's address is found in the pinned binary", () => {
  const binary = readFileSync(Bun.resolveSync('@tensorflow/tfjs-backend-wasm/dist/tfjs-backend-wasm-threaded-simd.wasm', root));
  expect(threadPoolAddress(binary)).toBe(23564);
  expect(() => threadPoolAddress(new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0]))).toThrow("cannot find XNNPACK's thread pool");
});
