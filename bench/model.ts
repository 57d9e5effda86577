/**
 * Model speed on this process's backend (issue 2): image encode, prompt prefill and decode speed at
 * several context lengths, for the original extension's default configuration and a small one.
 * Each figure is set beside the same process's matmul GFLOP/s, so it reads as a fraction of what
 * the backend can do rather than as a wall-clock promise. Timings are the best of a few runs: on a
 * shared machine the best run is the least disturbed one.
 *
 *   bun run bench            both configurations
 *   bun run bench small      one of them
 */
import * as tf from '@tensorflow/tfjs-core';
import type { MultimodalMACOptions } from '../model/config.ts';
import { MultimodalMACNetwork } from '../model/multimodal.ts';
import { describeBackend, selectBackend } from '../src/backend.ts';

const CONFIGS: Record<string, MultimodalMACOptions> = {
  // The original README's example: ViT-B/16 on 224 x 224 images, a 384-wide, 8-deep text model.
  original: { imageSize: 224, patchSize: 16, visionDim: 768, visionDepth: 12, visionHeads: 12, visionMlpDim: 3072,
    textDim: 384, depth: 8, segmentLen: 32 },
  small: { imageSize: 64, patchSize: 8, visionDim: 128, visionDepth: 2, visionHeads: 4, visionMlpDim: 256,
    textDim: 128, depth: 2, segmentLen: 16, heads: 4, dimHead: 32, projectionDim: 128 },
};
const CONTEXTS = [64, 512, 2048];

/** The best of several timed runs: on a shared machine the best is the least disturbed. */
function matmulGflops(size = 768): number {
  const a = tf.randomNormal([size, size]);
  const b = tf.randomNormal([size, size]);
  // Not tf.tidy(() => ...dataSync()): tidy walks a returned typed array element by element.
  const once = () => {
    const c = tf.matMul(a, b);
    c.dataSync();
    c.dispose();
  };
  once();
  let best = Infinity;
  for (let i = 0; i < 10; i++) best = Math.min(best, time(once)[1]);
  tf.dispose([a, b]);
  return (2 * size ** 3) / (best / 1000) / 1e9;
}

/** Multiply-adds x 2 of one ViT forward: patch embedding, then per block qkv, scores, mix, projection, MLP. */
function vitFlops(c: Required<Pick<MultimodalMACOptions, 'imageSize' | 'patchSize' | 'visionDim' | 'visionDepth' | 'visionMlpDim'>>): number {
  const n = (c.imageSize / c.patchSize) ** 2 + 1;
  const d = c.visionDim;
  const patch = (n - 1) * 3 * c.patchSize ** 2 * d;
  const block = n * d * 3 * d + 2 * n * n * d + n * d * d + 2 * n * d * c.visionMlpDim;
  return 2 * (patch + c.visionDepth * block);
}

function time<T>(fn: () => T): [T, number] {
  const start = performance.now();
  const out = fn();
  return [out, performance.now() - start];
}

async function bench(name: string, options: MultimodalMACOptions, gflops: number): Promise<void> {
  const model = new MultimodalMACNetwork({ ...options, visionDropout: 0, fusionDropout: 0 });
  const c = model.config;
  console.log(`\n## ${name}: ${(model.parameterCount() / 1e6).toFixed(1)}M parameters (image ${c.imageSize}, ViT ${c.visionDim}x${c.visionDepth}, text ${c.textDim}x${c.depth}, segment ${c.segmentLen})`);

  const image = tf.randomNormal([1, 3, c.imageSize, c.imageSize]) as tf.Tensor4D;
  tf.tidy(() => model.encodeImages(image).dataSync()); // warm-up: kernels and buffers
  const encodes: number[] = [];
  for (let i = 0; i < 3; i++) encodes.push(time(() => tf.tidy(() => model.encodeImages(image).dataSync()))[1]);
  const encodeMs = Math.min(...encodes);
  const achieved = vitFlops(c) / (encodeMs / 1000) / 1e9;
  console.log(`image encode: ${encodeMs.toFixed(1)} ms, ${achieved.toFixed(1)} GFLOP/s = ${((100 * achieved) / gflops).toFixed(0)}% of matmul`);

  for (const context of CONTEXTS) {
    const cache = model.text.createCache(1);
    const prompt = tf.tidy(() => model.text.embed(tf.tensor2d([Array.from({ length: context }, (_, i) => 32 + (i % 90))], [1, context], 'int32')));
    const [, prefillMs] = time(() => model.text.step(prompt, cache).dispose());
    prompt.dispose();
    // Two whole windows, so that every context pays for the same window starts and memory stores.
    const token = tf.tidy(() => model.text.embed(tf.tensor2d([[101]], [1, 1], 'int32')));
    const decode = (count: number) => {
      for (let i = 0; i < count; i++) {
        const logits = model.text.step(token, cache);
        logits.dataSync();
        logits.dispose();
      }
    };
    decode(c.segmentLen); // warm-up: every key length of a window once
    const runs = [0, 1, 2].map(() => time(() => decode(2 * c.segmentLen))[1] / (2 * c.segmentLen));
    const perToken = Math.min(...runs);
    token.dispose();
    cache.dispose();
    console.log(`context ${String(context).padStart(4)}: prefill ${prefillMs.toFixed(0)} ms (${(context / (prefillMs / 1000)).toFixed(0)} tokens/s), decode ${perToken.toFixed(2)} ms/token = ${(1000 / perToken).toFixed(1)} tokens/s`);
  }
  image.dispose();
  model.dispose();
}

const info = await selectBackend();
console.log(describeBackend(info));
const gflops = matmulGflops();
console.log(`matmul: ${gflops.toFixed(1)} GFLOP/s (768 x 768, float32, best of 10)`);
const only = process.argv[2];
for (const [name, options] of Object.entries(CONFIGS)) {
  if (!only || only === name) await bench(name, options, gflops);
}
console.log(`\nmatmul again: ${matmulGflops().toFixed(1)} GFLOP/s (a large change means the machine was busy)`);
