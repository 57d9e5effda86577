import { afterAll, describe, expect, setDefaultTimeout, test } from 'bun:test';
import * as tf from '@tensorflow/tfjs-core';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describeBackend, selectBackend } from '../../../src/backend/select.ts';
import type { BackendInfo } from '../../../src/backend/select.ts';
import { hasGpuDeviceNode } from '../../../src/backend/webgpu.ts';
import { bfloat16Unavailable } from '../../../src/backend/bfloat16.ts';
import { openBlas } from '../../../src/backend/blas.ts';
import { openOneDnnPrimitives } from '../../../src/backend/onednn-primitives.ts';
import { isInstalled } from './helpers.ts';
import { parseThreadsSetting, threadsPerInstance } from '../../../src/backend/threads.ts';

const backendModule = Bun.resolveSync('../../../src/backend/select.ts', import.meta.dir);
const tfModule = Bun.resolveSync('@tensorflow/tfjs-core', import.meta.dir);
const layersModule = Bun.resolveSync('../../../model/layers.ts', import.meta.dir);
const cudaInstalled = isInstalled('@tensorflow/tfjs-node-gpu');
// oneDNN or OpenBLAS where the system has one (src/backend/blas.ts): the suite's own backend found it.
const blasLibrary = (await selectBackend()).blas;
const gpuNode = hasGpuDeviceNode();
const NO_GPU_NODE = 'no GPU device node (/dev/nvidia0, /dev/dri/renderD*)';
// Each fresh process starts the threaded WASM build, eight pthread workers: seconds on a busy machine.
setDefaultTimeout(30_000);
const scratch = mkdtempSync(join(tmpdir(), 'backend-test-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

/** wasmThreads: the threads of XNNPACK's pool, where wasm runs; probe: what the caller's `after` returned. */
type Outcome = { ok: true; info: BackendInfo; gradient: number; wasmThreads?: number; probe?: unknown } | { ok: false; name: string; message: string };

/**
 * selectBackend() is memoized per process, so each MAC_BACKEND value gets a fresh Bun process. It
 * prints what it selected and the gradient of x^2 at 3, proving gradients and chained ops exist.
 * `prelude` runs before the selection, `after` (a function body, with `layers`: model/layers.ts) after it.
 */
async function selectInChild(
  macBackend: string | undefined,
  { cwd = scratch, prelude = '', after = '', options = {}, env: extra = {} }: { cwd?: string; prelude?: string; after?: string; options?: object; env?: Record<string, string> } = {},
): Promise<Outcome & { stderr: string }> {
  const script = `
    import { selectBackend } from ${JSON.stringify(backendModule)};
    import * as tf from ${JSON.stringify(tfModule)};
    import * as layers from ${JSON.stringify(layersModule)};
    ${prelude}
    try {
      const info = await selectBackend(${JSON.stringify(options)});
      const gradient = tf.grad((x) => x.square())(tf.scalar(3)).dataSync()[0];
      const wasmThreads = info.name === 'wasm' ? tf.backend().wasm._get_threads_count() : undefined;
      const probe = await (async () => { ${after} })();
      console.log(JSON.stringify({ ok: true, info, gradient, wasmThreads, probe }));
    } catch (error) {
      console.log(JSON.stringify({ ok: false, name: error.name, message: error.message }));
    }`;
  const env: Record<string, string | undefined> = { ...process.env, MAC_BACKEND: macBackend, ...extra };
  if (macBackend === undefined) delete env.MAC_BACKEND;
  const child = Bun.spawn([process.execPath, '-e', script], { cwd, env, stdout: 'pipe', stderr: 'pipe' });
  const [stdout, stderr] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text()]);
  await child.exited;
  const lastLine = stdout.trim().split('\n').at(-1) ?? '';
  return { ...(JSON.parse(lastLine) as Outcome), stderr };
}

describe('selectBackend in this process', () => {
  test('runs once: every call returns the same promise', async () => {
    expect(selectBackend()).toBe(selectBackend());
    const info = await selectBackend();
    expect(tf.getBackend()).toBe(info.tfBackend);
  });

  test('leaves gradients and chained ops registered', async () => {
    await selectBackend();
    const gradient = tf.tidy(() => tf.grad((x) => x.square())(tf.scalar(3)).dataSync()[0]);
    expect(gradient).toBe(6);
  });

  test('describeBackend gives one line for the startup log', () => {
    const line = describeBackend({
      name: 'wasm',
      tfBackend: 'wasm',
      skipped: [{ name: 'cuda', reason: 'package @tensorflow/tfjs-node-gpu is not installed' }],
      threads: 1,
      simd: true,
      matmulPrecision: 'float32',
    });
    expect(line).toBe(
      "backend wasm (tfjs 'wasm', 1 thread, SIMD); skipped: cuda (package @tensorflow/tfjs-node-gpu is not installed)",
    );
    expect(describeBackend({ name: 'cpu', tfBackend: 'cpu', skipped: [], threads: 1, simd: false, matmulPrecision: 'float32' })).toBe(
      "backend cpu (tfjs 'cpu', 1 thread)",
    );
    expect(describeBackend({ name: 'wasm', tfBackend: 'wasm', skipped: [], threads: 2, simd: true, blas: 'libopenblas.so.0', matmulPrecision: 'float32' })).toBe(
      "backend wasm (tfjs 'wasm', products on libopenblas.so.0 with 2 threads, the rest on one thread, SIMD)",
    );
    expect(describeBackend({ name: 'wasm', tfBackend: 'wasm', skipped: [], threads: 2, simd: true, blas: 'libdnnl.so.2', matmulPrecision: 'bfloat16' })).toBe(
      "backend wasm (tfjs 'wasm', products on libdnnl.so.2 (the weights in bfloat16) with 2 threads, the rest on one thread, SIMD)",
    );
  });

  test('starts inside a Bun Worker, which selects on its own', async () => {
    const workerFile = join(scratch, 'select-worker.ts');
    writeFileSync(
      workerFile,
      `import { selectBackend } from ${JSON.stringify(backendModule)};\npostMessage(await selectBackend());\n`,
    );
    const worker = new Worker(workerFile);
    const fromWorker = await new Promise<BackendInfo>((resolve, reject) => {
      worker.onmessage = (event) => resolve(event.data as BackendInfo);
      worker.onerror = (event) => reject(new Error(event.message));
    });
    worker.terminate();
    expect(fromWorker.name).toBe((await selectBackend()).name);
  });
});

describe('MAC_BACKEND (each in a fresh process)', () => {
  test.if(!cudaInstalled && !gpuNode)('auto picks WASM with SIMD here, saying why cuda and webgpu were skipped', async () => {
    const outcome = await selectInChild(undefined);
    if (!outcome.ok) throw new Error(outcome.message);
    expect(outcome.info).toEqual({
      name: 'wasm',
      tfBackend: 'wasm',
      skipped: [
        { name: 'cuda', reason: 'package @tensorflow/tfjs-node-gpu is not installed' },
        { name: 'webgpu', reason: NO_GPU_NODE },
      ],
      threads: threadsPerInstance(parseThreadsSetting(process.env.MAC_THREADS)),
      simd: true,
      matmulPrecision: 'float32',
      ...(blasLibrary && { blas: blasLibrary }),
    });
    expect(outcome.gradient).toBe(6);
  });

  test.if(!cudaInstalled)("'auto' and an empty value mean the same as unset", async () => {
    for (const value of ['auto', '']) {
      const outcome = await selectInChild(value);
      expect(outcome.ok && outcome.info.name).toBe('wasm');
    }
  });

  test('wasm runs with SIMD and the threads MAC_THREADS asks for, from any working directory', async () => {
    for (const cwd of [scratch, '/']) {
      const outcome = await selectInChild('wasm', { cwd });
      if (!outcome.ok) throw new Error(outcome.message);
      const threads = threadsPerInstance(parseThreadsSetting(process.env.MAC_THREADS));
      expect(outcome.info).toMatchObject({ name: 'wasm', tfBackend: 'wasm', skipped: [], threads, simd: true });
      expect(outcome.gradient).toBe(6);
    }
  });

  test.if(blasLibrary !== undefined)("with a native BLAS, its products get the threads and WASM's kernels run on one; without it, WASM gets them", async () => {
    const withBlas = await selectInChild('wasm', { env: { MAC_THREADS: '2' } });
    const without = await selectInChild('wasm', { env: { MAC_THREADS: '2', MAC_BLAS: 'off' } });
    if (!withBlas.ok || !without.ok) throw new Error('wasm did not start');
    expect(withBlas.info).toMatchObject({ threads: 2, blas: blasLibrary });
    expect(withBlas.wasmThreads).toBe(1);
    expect(without.info.blas).toBeUndefined();
    expect(without.info.threads).toBe(2);
    expect(without.wasmThreads).toBe(2);
  });

  test('cpu runs the pure-JS backend, without its advice to install tfjs-node', async () => {
    const outcome = await selectInChild('cpu');
    if (!outcome.ok) throw new Error(outcome.message);
    expect(outcome.info).toEqual({ name: 'cpu', tfBackend: 'cpu', skipped: [], threads: 1, simd: false, matmulPrecision: 'float32' });
    expect(outcome.gradient).toBe(6);
    expect(outcome.stderr).not.toContain('tfjs-node');
  });

  test('the value is read case- and space-insensitively', async () => {
    const outcome = await selectInChild(' CPU ');
    expect(outcome.ok && outcome.info.name).toBe('cpu');
  });

  test.if(!cudaInstalled)('a forced cuda fails with the reason instead of falling back', async () => {
    const outcome = await selectInChild('cuda');
    expect(outcome).toMatchObject({
      ok: false,
      name: 'BackendUnavailableError',
      message: 'MAC_BACKEND=cuda: cannot start: package @tensorflow/tfjs-node-gpu is not installed',
    });
  });

  test('a backend whose initialization fails is skipped by auto, with the error as the reason', async () => {
    // Replaces the WASM backend with one that cannot start, as a missing .wasm file would.
    const prelude = `tf.removeBackend('wasm');
      tf.registerBackend('wasm', async () => { throw new Error('simulated failure'); }, 2);`;
    const reason = 'Initialization of backend wasm failed: Error: simulated failure';

    const auto = await selectInChild('auto', { prelude });
    expect(auto.ok && auto.info.name).toBe('cpu');
    expect(auto.ok && auto.info.skipped.find((s) => s.name === 'wasm')).toEqual({ name: 'wasm', reason });

    const forced = await selectInChild('wasm', { prelude });
    expect(forced).toMatchObject({ ok: false, message: `MAC_BACKEND=wasm: cannot start: ${reason}` });
  });

  test('a tier the caller skips is passed over by auto with the caller\'s reason, and still starts when forced', async () => {
    const options = { skip: { wasm: 'not wanted here' } };
    const auto = await selectInChild('auto', { options });
    expect(auto.ok && auto.info.name).toBe('cpu');
    expect(auto.ok && auto.info.skipped.find((s) => s.name === 'wasm')).toEqual({ name: 'wasm', reason: 'not wanted here' });
    const forced = await selectInChild('wasm', { options });
    expect(forced.ok && forced.info.name).toBe('wasm');
  });

  test.if(!gpuNode)('a forced webgpu on a machine without a GPU fails with the reason, before loading Dawn', async () => {
    const outcome = await selectInChild('webgpu');
    expect(outcome).toMatchObject({ ok: false, name: 'BackendUnavailableError', message: `MAC_BACKEND=webgpu: cannot start: ${NO_GPU_NODE}` });
    expect(outcome.stderr).not.toContain('Vulkan');
  });

  test('a MAC_BLAS that does not load stops the start under auto too, rather than fall to the cpu backend', async () => {
    const outcome = await selectInChild(undefined, { env: { MAC_BLAS: '/nonexistent/libblas.so' } });
    expect(outcome).toMatchObject({ ok: false, name: 'BlasSettingError', message: expect.stringContaining('MAC_BLAS=/nonexistent/libblas.so: cannot load oneDNN or OpenBLAS from it') });
  });

  test('an unknown value is refused, naming the allowed ones', async () => {
    const outcome = await selectInChild('tpu');
    expect(outcome).toMatchObject({
      ok: false,
      message: "MAC_BACKEND must be one of auto, cuda, webgpu, wasm, cpu; got 'tpu'",
    });
  });
});

describe('MAC_MATMUL_PRECISION (each in a fresh process)', () => {
  // What the child's own start will find.
  const blas = openBlas();
  const bfloat16Reason = bfloat16Unavailable(blas, 'sgemm' in blas && blas.name === 'oneDNN' ? openOneDnnPrimitives(blas.library) : { reason: 'no oneDNN' });
  // x W + b, x W and a feed-forward against the same products through BatchMatMul, which stays
  // float32: their largest differences, relative.
  const affineAgainstFloat32 = `
    const [x, w, b] = [tf.randomNormal([64, 384], 0, 1, 'float32', 1), tf.randomNormal([384, 96], 0, 0.05, 'float32', 2), tf.randomNormal([96], 0, 1, 'float32', 3)];
    const [down, downBias] = [tf.randomNormal([96, 32], 0, 0.1, 'float32', 4), tf.randomNormal([32], 0, 1, 'float32', 5)];
    const difference = (y, plain) => Math.max(...plain.map((v, i) => Math.abs(v - y[i]))) / Math.max(...plain.map(Math.abs));
    return [
      difference(layers.affine(x, w, b).dataSync(), x.matMul(w).add(b).dataSync()),
      difference(layers.product(x, w).dataSync(), x.matMul(w).dataSync()),
      difference(layers.feedForward(x, w, b, down, downBias).dataSync(), layers.gelu(x.matMul(w).add(b)).matMul(down).add(downBias).dataSync()),
    ];`;

  test.if(bfloat16Reason === undefined)('bfloat16 runs x W + b, x W and a feed-forward in bfloat16 where oneDNN and the CPU can', async () => {
    const outcome = await selectInChild('wasm', { env: { MAC_MATMUL_PRECISION: 'bfloat16' }, after: affineAgainstFloat32 });
    if (!outcome.ok) throw new Error(outcome.message);
    expect(outcome.info.matmulPrecision).toBe('bfloat16');
    expect(describeBackend(outcome.info)).toContain('(the weights in bfloat16)');
    for (const difference of outcome.probe as number[]) {
      expect(difference).toBeGreaterThan(1e-4);
      expect(difference).toBeLessThan(1e-2);
    }
  });

  test.if(bfloat16Reason !== undefined)('bfloat16 is refused at startup, with the reason, where this machine cannot run it', async () => {
    const outcome = await selectInChild(undefined, { env: { MAC_MATMUL_PRECISION: 'bfloat16' } });
    expect(outcome).toMatchObject({ ok: false, name: 'MatmulPrecisionError', message: `MAC_MATMUL_PRECISION=bfloat16: ${bfloat16Reason}` });
  });

  test('float32, the default, multiplies x W + b, x W and a feed-forward in float32', async () => {
    const outcome = await selectInChild('wasm', { after: affineAgainstFloat32 });
    if (!outcome.ok) throw new Error(outcome.message);
    expect(outcome.info.matmulPrecision).toBe('float32');
    for (const difference of outcome.probe as number[]) expect(difference).toBeLessThan(1e-5);
  });

  test('bfloat16 without oneDNN, or on a tier that multiplies in float32 only, stops the start rather than run float32', async () => {
    const withoutBlas = await selectInChild('wasm', { env: { MAC_MATMUL_PRECISION: 'bfloat16', MAC_BLAS: 'off' } });
    expect(withoutBlas).toMatchObject({ ok: false, name: 'MatmulPrecisionError', message: 'MAC_MATMUL_PRECISION=bfloat16: it needs oneDNN, and no native BLAS runs (MAC_BLAS=off)' });
    const onCpu = await selectInChild('cpu', { env: { MAC_MATMUL_PRECISION: 'bfloat16' } });
    expect(onCpu).toMatchObject({ ok: false, name: 'MatmulPrecisionError', message: 'MAC_MATMUL_PRECISION=bfloat16: the cpu backend multiplies in float32 only' });
  });

  test('a training replica asks for float32 whatever the setting', async () => {
    const outcome = await selectInChild('wasm', { env: { MAC_MATMUL_PRECISION: 'bfloat16' }, options: { matmulPrecision: 'float32' }, after: affineAgainstFloat32 });
    if (!outcome.ok) throw new Error(outcome.message);
    expect(outcome.info.matmulPrecision).toBe('float32');
    for (const difference of outcome.probe as number[]) expect(difference).toBeLessThan(1e-5);
  });

  test('an unknown value is refused, naming the allowed ones', async () => {
    const outcome = await selectInChild(undefined, { env: { MAC_MATMUL_PRECISION: 'fp8' } });
    expect(outcome).toMatchObject({ ok: false, message: "MAC_MATMUL_PRECISION must be one of float32, bfloat16; got 'fp8'" });
  });
});
