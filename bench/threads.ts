/**
 * `bun bench/threads.ts`: what MAC_THREADS and the native BLAS products (src/backend/blas.ts) buy,
 * side by side. A backend's threads are fixed when its process starts, so each setting runs in a
 * child process; the settings take turns, round after round, and each figure is the median over the
 * rounds (a shared machine's load then falls on every setting alike). Settings:
 *   1 thread        MAC_THREADS=1 MAC_BLAS=off: the WASM backend as it was
 *   N threads       MAC_THREADS=N MAC_BLAS=off: the threaded WASM build
 *   N + oneDNN      MAC_THREADS=N MAC_BLAS=<its soname>: products on that library with N threads,
 *   N + OpenBLAS    the rest on one WASM thread (each where the system has it)
 * Figures: matmul GFLOP/s at a decode step's, an encoder's and a square product's size; ViT-B/16
 * encode (224 px) in ms per image, one image per call and --batch images per call, and its share of
 * the 768 x 768 x 768 matmul speed; decode ms/token of the 384 x 8 text model at context 64; training
 * samples/s of SMALL_MODEL (one worker). `--json` prints the medians as JSON too (for a peer table).
 *   bun bench/threads.ts [--rounds 3] [--threads N] [--batch 4] [--skip-train]
 */
import { availableParallelism, loadavg } from 'node:os';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs-core';
import { resolveConfig } from '../model/config.ts';
import { MemoryAsContextTransformer } from '../model/mac.ts';
import { Random } from '../model/random.ts';
import { VisionTransformerEncoder } from '../model/vit.ts';
import { availableBlas } from '../src/backend/blas.ts';
import { describeBackend, selectBackend } from '../src/backend/select.ts';
import { SMALL_MODEL } from '../src/training/presets.ts';
import { runTraining } from '../src/training/run.ts';
import { parseJobSpec } from '../src/training/spec.ts';
import { BENCH_CONFIGS } from './configs.ts';

const { values: flags } = parseArgs({
  options: {
    rounds: { type: 'string', default: '3' },
    threads: { type: 'string', default: String(Math.min(8, availableParallelism())) },
    batch: { type: 'string', default: '4' },
    'skip-train': { type: 'boolean', default: false },
    json: { type: 'boolean', default: false },
    child: { type: 'boolean', default: false },
  },
});

/** ViT-B/16 at 224 px and the 384 x 8 text model: the original extension's default configuration. */
const ORIGINAL = BENCH_CONFIGS.original;
const PRODUCTS: [number, number, number][] = [[1, 384, 1152], [197, 768, 3072], [768, 768, 768]];
const TRAIN_STEPS = 8;
const TRAIN_WARMUP = 2;

type Figures = Record<string, number>;

function msOf(fn: () => void, runs: number): number {
  fn(); // warm-up: kernels, packed weights, buffers
  const times: number[] = [];
  for (let i = 0; i < runs; i++) {
    const start = performance.now();
    fn();
    times.push(performance.now() - start);
  }
  return Math.min(...times);
}

function matmulGflops([m, k, n]: [number, number, number]): number {
  const [a, b] = [tf.randomNormal([m, k]), tf.randomNormal([k, n])];
  const reps = Math.max(1, Math.round(2e8 / (2 * m * k * n)));
  const ms = msOf(() => {
    for (let i = 0; i < reps; i++) tf.matMul(a, b).dispose();
    // One read at the end: the products above ran; WASM runs kernels synchronously anyway.
    const c = tf.matMul(a, b);
    c.dataSync();
    c.dispose();
  }, 5) / (reps + 1);
  tf.dispose([a, b]);
  return (2 * m * k * n) / ms / 1e6;
}

/** One child: every figure once, on the backend MAC_THREADS / MAC_BLAS give it. */
async function measure(batch: number, train: boolean): Promise<{ backend: string; figures: Figures }> {
  const info = await selectBackend();
  const figures: Figures = {};
  for (const size of PRODUCTS) figures[`matmul ${size.join('x')} GFLOP/s`] = matmulGflops(size);

  const config = resolveConfig(ORIGINAL);
  const encoder = new VisionTransformerEncoder(new Random(1), config);
  const encodeMs = (count: number) => {
    const images = tf.randomNormal([count, 3, 224, 224]) as tf.Tensor4D;
    const ms = msOf(() => tf.tidy(() => encoder.encode(images)).dispose(), 1) / count;
    images.dispose();
    return ms;
  };
  figures['encode batch 1 ms/image'] = encodeMs(1);
  figures[`encode batch ${batch} ms/image`] = encodeMs(batch);
  const n = (224 / 16) ** 2 + 1;
  const vitFlops = 2 * ((n - 1) * 3 * 256 * 768 + 12 * (n * 768 * 3 * 768 + 2 * n * n * 768 + n * 768 * 768 + 2 * n * 768 * 3072));
  figures['encode batch 1 / matmul 768^3'] = vitFlops / figures['encode batch 1 ms/image']! / 1e6 / figures['matmul 768x768x768 GFLOP/s']!;
  encoder.dispose();

  const text = new MemoryAsContextTransformer(new Random(2), config);
  const cache = text.createCache(1);
  const prompt = tf.tidy(() => text.embed(tf.tensor2d([Array.from({ length: 64 }, (_, i) => 32 + (i % 90))], [1, 64], 'int32')));
  text.step(prompt, cache).dispose();
  prompt.dispose();
  const token = tf.tidy(() => text.embed(tf.tensor2d([[101]], [1, 1], 'int32')));
  // Not in tf.tidy: the cache keeps what a step makes.
  const decode = () => {
    for (let i = 0; i < config.segmentLen; i++) {
      const logits = text.step(token, cache);
      logits.dataSync();
      logits.dispose();
    }
  };
  figures['decode ms/token'] = msOf(decode, 2) / config.segmentLen;
  tf.dispose([token]);
  cache.dispose();
  text.dispose();

  if (train) {
    const outDir = await mkdtemp(join(tmpdir(), 'bench-threads-'));
    const spec = parseJobSpec({ model: SMALL_MODEL, data: { type: 'synthetic-shapes', val_size: 0 }, train: { steps: TRAIN_STEPS, batch_size: 32, workers: 1 } });
    const times: number[] = [];
    await runTraining(spec, { outDir, onEvent: (event) => event.type === 'progress' && times.push(performance.now()) });
    await rm(outDir, { recursive: true, force: true });
    const steps = times.slice(TRAIN_WARMUP).slice(1).map((t, i) => t - times[TRAIN_WARMUP + i]!).sort((a, b) => a - b);
    figures['training samples/s'] = (32 * 1000) / steps[Math.floor(steps.length / 2)]!;
  }
  return { backend: describeBackend(info), figures };
}

if (flags.child) {
  console.log(JSON.stringify(await measure(Number(flags.batch), !flags['skip-train'])));
  process.exit(0);
}

const threads = Number(flags.threads);
const settings: { name: string; env: Record<string, string> }[] = [
  { name: '1 thread', env: { MAC_THREADS: '1', MAC_BLAS: 'off' } },
  { name: `${threads} threads`, env: { MAC_THREADS: String(threads), MAC_BLAS: 'off' } },
  ...availableBlas().map(({ name, library }) => ({ name: `${threads} + ${name}`, env: { MAC_THREADS: String(threads), MAC_BLAS: library } })),
];
const runs = new Map<string, { backend: string; figures: Figures }[]>();
const load = [loadavg()[0]!];
for (let round = 0; round < Number(flags.rounds); round++) {
  for (const setting of settings) {
    const args = [process.execPath, import.meta.path, '--child', '--batch', flags.batch!, ...(flags['skip-train'] ? ['--skip-train'] : [])];
    const child = Bun.spawn(args, { env: { ...process.env, MAC_BACKEND: 'wasm', ...setting.env }, stdout: 'pipe', stderr: 'inherit' });
    const out = await new Response(child.stdout).text();
    if ((await child.exited) !== 0) throw new Error(`${setting.name}: the child failed`);
    runs.set(setting.name, [...(runs.get(setting.name) ?? []), JSON.parse(out.trim().split('\n').at(-1)!)]);
    load.push(loadavg()[0]!);
  }
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const names = [...runs.keys()];
const table: Record<string, Figures> = Object.fromEntries(names.map((name) => [name, Object.fromEntries(Object.keys(runs.get(name)![0]!.figures).map((key) => [key, median(runs.get(name)!.map((r) => r.figures[key]!))]))]));
console.log(`${availableParallelism()} cores; ${flags.rounds} rounds, medians; load average (1 min) ${Math.min(...load).toFixed(1)}-${Math.max(...load).toFixed(1)} while it ran`);
for (const name of names) console.log(`${name.padEnd(16)} ${runs.get(name)![0]!.backend}`);
const width = Math.max(...Object.keys(table[names[0]!]!).map((k) => k.length));
// Speed-ups against 1 thread: a rate over the baseline's, or the baseline's time over this one.
console.log(`\n${''.padEnd(width)}  ${names.map((n) => n.padStart(16)).join('')}  ${names.slice(1).map((n) => `${n}: speed-up`.padStart(24)).join('')}`);
for (const key of Object.keys(table[names[0]!]!)) {
  const cells = names.map((n) => table[n]![key]!);
  const fmt = (x: number) => (x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2));
  const speedUp = (x: number) => (key.includes(' ms/') ? cells[0]! / x : x / cells[0]!);
  console.log(`${key.padEnd(width)}  ${cells.map((x) => fmt(x).padStart(16)).join('')}  ${cells.slice(1).map((x) => `${speedUp(x).toFixed(2)}x`.padStart(24)).join('')}`);
}
if (flags.json) console.log(JSON.stringify({ cores: availableParallelism(), load, table }));
