/**
 * Model speed on this process's backend (issue 2): image encode, prompt prefill and decode speed at
 * several context lengths, for the original extension's default configuration and a small one.
 * Each figure is set beside the same process's matmul GFLOP/s, so it reads as a fraction of what
 * the backend can do rather than as a wall-clock promise. Timings are the best of a few runs: on a
 * shared machine the best run is the least disturbed one.
 *
 * Then long prompts: prefill tokens/s at 8K and 64K tokens, read as generation reads them, for the
 * passkey model and a fresh model of the library's default configuration, and whether the logits
 * stayed finite; the default model reads on to 100K tokens to show its logits' finiteness. A token's
 * cost at each length is measured in alternation with a fresh cache's: their ratio hardly moves with
 * the machine's load, and it stays near 1 when a token's cost does not grow with the length read.
 * With a native BLAS on two cores the default model reads some 800 tokens/s: this part takes about
 * two and a half minutes (docs/performance.md, "Speed").
 *
 *   bun run bench                                      everything
 *   bun run bench small                                one configuration (and the long prompts)
 *   bun run bench -- --prefill-lengths 8192,65536      lengths of the long prompts
 *   bun run bench -- --finite-length 0                 the default model stops at the longest of them
 *   bun run bench -- --skip-prefill                    no long prompts
 *   bun run bench -- --prefill-only                    only the long prompts
 *   bun run bench -- --prefill-models passkey          the long prompts of one model (passkey, needle, default)
 *   bun run bench -- --peer                            the original configuration beside PyTorch CPU (bench/peer)
 *   bun run bench -- --peer --peer-threads 2           PyTorch on two threads (default: as many as this backend uses)
 *   MAC_MATMUL_PRECISION=bfloat16 bun run bench -- --peer   both in bfloat16, PyTorch under autocast (no training figure)
 *   bun run bench -- --matmul-size 4096 --encode-batch 32   a GPU's: its large-matmul rate, and a batch's encode
 *   bun run bench -- --contexts 64,2048                the context lengths of the decode rows
 *   bun run bench -- --decode-rows 16                  rows of the batched decode at the first context (default 8; 0 = none)
 *   bun run bench -- --software-webgpu                 on Mesa's software renderer: a GPU's shader launches
 *   bun run bench -- original --null-webgpu --skip-prefill --contexts 64
 *                                                      on Dawn's null device (512 MiB): the host's share, a GPU's floor here
 *
 * Every timing ends with an asynchronous read of the result: on a GPU a call returns once its kernels
 * are queued, and the webgpu tier cannot read synchronously (docs/gpu.md).
 * Decode rows also give the kernels one token launches (tf.profile over the timed tokens): the
 * backend's fixed cost per kernel is a large part of a small model's token. On webgpu they give the
 * shaders it launches too (fewer: reshapes and small host-side tensors launch none).
 */
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs-core';
import type { MultimodalMACOptions } from '../model/config.ts';
import { PREFILL_SEGMENTS } from '../model/generate.ts';
import type { MatmulPrecision } from '../src/backend/bfloat16.ts';
import { MultimodalMACNetwork } from '../model/multimodal.ts';
import { AdamW } from '../model/optim.ts';
import { loadCheckpoint, MultimodalMAC } from '../src/index.ts';
import { formatPeerTable, machineNow, type PeerFigure } from './peer/table.ts';
import { runTorchPeer } from './peer/torch.ts';
import { BENCH_CONFIGS } from './configs.ts';
import { releaseBufferPool, shaderLaunches, startBenchBackend, WEBGPU_WITHOUT_GPU_FLAGS } from './webgpu.ts';

/** The best of several timed runs: on a shared machine the best is the least disturbed. */
async function matmulGflops(size: number): Promise<number> {
  const a = tf.randomNormal([size, size]);
  const b = tf.randomNormal([size, size]);
  const once = () => settled(tf.matMul(a, b));
  await once();
  let best = Infinity;
  for (let i = 0; i < 10; i++) best = Math.min(best, await timed(once));
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

/** Milliseconds until fn's work is done. */
async function timed(fn: () => Promise<unknown>): Promise<number> {
  const start = performance.now();
  await fn();
  return performance.now() - start;
}

/**
 * Waits until a tensor is computed, by reading it, and disposes it. The read is asynchronous, as a
 * GPU's must be; there a kernel has only been queued when its call returns.
 */
async function settled(tensor: tf.Tensor): Promise<void> {
  try {
    await tensor.data();
  } finally {
    tensor.dispose();
  }
}

interface BenchResult {
  encodeMs: number;
  /** By context length. */
  decode: Map<number, { tokensPerSecond: number; kernelsPerToken: number }>;
  /** Tokens/s reading a prompt of each context length in one call. */
  prefill: Map<number, number>;
}

/** Kernels per token over `count` calls of `step`, each one token, and on webgpu the shaders launched. */
async function kernelsPerToken(step: () => Promise<void>, count: number): Promise<{ kernels: number; launches: number | null }> {
  const before = shaderLaunches();
  const { kernels } = await tf.profile(async () => {
    for (let i = 0; i < count; i++) await step();
  });
  const launches = before === null ? null : (shaderLaunches()! - before) / count;
  return { kernels: kernels.length / count, launches };
}

/** The best of three encodes of `batch` images (after one to warm up), in ms; on webgpu the shaders one launches. */
async function encode(model: MultimodalMACNetwork, batch: number): Promise<{ ms: number; launches: number | null }> {
  const images = tf.randomNormal([batch, 3, model.config.imageSize, model.config.imageSize]) as tf.Tensor4D;
  const once = () => settled(model.encodeImages(images));
  await once(); // kernels and buffers
  const runs: number[] = [];
  const before = shaderLaunches();
  for (let i = 0; i < 3; i++) runs.push(await timed(once));
  images.dispose();
  return { ms: Math.min(...runs), launches: before === null ? null : (shaderLaunches()! - before) / 3 };
}

/**
 * Tokens a model decodes, after a few short prefills, before its first timed figure, or fewer where
 * they take more than WARM_UP_SECONDS (a device check's time is short). JavaScriptCore compiles a hot
 * function in tiers over its first few hundred calls: timed after one window of warm-up, the small
 * configuration's first context decoded 295 tokens/s and the same context, timed again later in the
 * run, 1,116.
 */
const WARM_UP_TOKENS = 512;
const WARM_UP_SECONDS = 6;

async function warmUpText(model: MultimodalMACNetwork): Promise<void> {
  const cache = model.text.createCache(1);
  for (let i = 0; i < 4; i++) {
    const prompt = tf.tidy(() => model.text.embed(tf.tensor2d([Array.from({ length: 2 * model.config.segmentLen }, (_, j) => 32 + ((i + j) % 90))], [1, 2 * model.config.segmentLen], 'int32')));
    await settled(model.text.step(prompt, cache));
    prompt.dispose();
  }
  const token = tf.tidy(() => model.text.embed(tf.tensor2d([[101]], [1, 1], 'int32')));
  const started = performance.now();
  for (let i = 0; i < WARM_UP_TOKENS && performance.now() - started < WARM_UP_SECONDS * 1000; i++) await settled(model.text.step(token, cache));
  token.dispose();
  cache.dispose();
}

async function bench(name: string, options: MultimodalMACOptions, gflops: number, encodeBatch: number, contexts: number[], decodeRows: number): Promise<BenchResult> {
  const model = new MultimodalMACNetwork({ ...options, visionDropout: 0, fusionDropout: 0 });
  const c = model.config;
  console.log(`\n## ${name}: ${(model.parameterCount() / 1e6).toFixed(1)}M parameters (image ${c.imageSize}, ViT ${c.visionDim}x${c.visionDepth}, text ${c.textDim}x${c.depth}, segment ${c.segmentLen})`);

  // By batch size: one image, and the batch of --encode-batch.
  const encodes = new Map([[1, await encode(model, 1)]]);
  if (encodeBatch > 1) encodes.set(encodeBatch, await encode(model, encodeBatch));
  for (const [batch, { ms, launches }] of encodes) {
    const achieved = (batch * vitFlops(c)) / (ms / 1000) / 1e9;
    const launched = launches === null ? '' : `, ${launches.toFixed(0)} shader launches`;
    console.log(`encode of ${batch} image${batch === 1 ? '' : 's'}: ${ms.toFixed(1)} ms, ${achieved.toFixed(1)} GFLOP/s = ${((100 * achieved) / gflops).toFixed(0)}% of matmul${launched}`);
  }

  await warmUpText(model);
  const result: BenchResult = { encodeMs: encodes.get(1)!.ms, decode: new Map(), prefill: new Map() };
  for (const context of contexts) {
    const { prefillMs, stepMs, kernels, launches } = await decodeAt(model, context, 1);
    result.decode.set(context, { tokensPerSecond: 1000 / stepMs, kernelsPerToken: kernels });
    result.prefill.set(context, context / (prefillMs / 1000));
    console.log(`context ${String(context).padStart(4)}: prefill ${prefillMs.toFixed(0)} ms (${(context / (prefillMs / 1000)).toFixed(0)} tokens/s), decode ${stepMs.toFixed(2)} ms/token = ${(1000 / stepMs).toFixed(1)} tokens/s, ${kernels.toFixed(0)} kernels/token${launches === null ? '' : ` (${launches.toFixed(0)} shader launches)`}`);
  }
  if (decodeRows > 1) {
    const context = contexts[0]!;
    const { stepMs } = await decodeAt(model, context, decodeRows);
    const tokensPerSecond = (decodeRows * 1000) / stepMs;
    const ratio = tokensPerSecond / result.decode.get(context)!.tokensPerSecond;
    console.log(`decode of ${decodeRows} rows at once, context ${context}: ${stepMs.toFixed(2)} ms/step = ${tokensPerSecond.toFixed(1)} tokens/s, ${ratio.toFixed(2)}x one row's`);
  }
  model.dispose();
  releaseBufferPool();
  return result;
}

/**
 * `rows` prompts of `context` tokens read in one call, then decoding one token a row a step: the
 * prefill's ms, the best ms of a step, and the kernels (and on webgpu the shaders) a step launches.
 */
async function decodeAt(model: MultimodalMACNetwork, context: number, rows: number): Promise<{ prefillMs: number; stepMs: number; kernels: number; launches: number | null }> {
  releaseBufferPool();
  const segmentLen = model.config.segmentLen;
  const cache = model.text.createCache(rows);
  const prompt = tf.tidy(() => model.text.embed(tf.tensor2d(Array.from({ length: rows }, () => Array.from({ length: context }, (_, i) => 32 + (i % 90))), [rows, context], 'int32')));
  const prefillMs = await timed(() => settled(model.text.step(prompt, cache)));
  prompt.dispose();
  // Two whole windows, so that every context pays for the same window starts and memory stores.
  const token = tf.tidy(() => model.text.embed(tf.tensor2d(Array.from({ length: rows }, () => [101]), [rows, 1], 'int32')));
  const step = () => settled(model.text.step(token, cache));
  const decode = async (count: number) => {
    for (let i = 0; i < count; i++) await step();
  };
  await decode(segmentLen); // warm-up: every key length of a window once
  const runs: number[] = [];
  for (let i = 0; i < 3; i++) runs.push((await timed(() => decode(2 * segmentLen))) / (2 * segmentLen));
  const { kernels, launches } = await kernelsPerToken(step, 2 * segmentLen);
  token.dispose();
  cache.dispose();
  return { prefillMs, stepMs: Math.min(...runs), kernels, launches };
}

/** Tokens a training step reads in the peer comparison: one sequence of 8 segments (bench/peer/torch_peer.py's TRAIN_TOKENS). */
const TRAIN_TOKENS = 256;

/**
 * Tokens/s of the text model's training steps on one sequence of TRAIN_TOKENS: forward, backward
 * through every memory store, AdamW. The best of three, after three: a training step settles from
 * about the fourth on.
 */
async function trainingRate(options: MultimodalMACOptions): Promise<number> {
  const model = new MultimodalMACNetwork({ ...options, visionDropout: 0, fusionDropout: 0 });
  const params = model.text.namedParameters();
  const optimizer = new AdamW(params, { lr: 1e-4 });
  const ids = tf.tensor2d([Array.from({ length: TRAIN_TOKENS + 1 }, (_, i) => 32 + (i % 90))], [1, TRAIN_TOKENS + 1], 'int32');
  const step = async () => {
    const { value, grads } = tf.variableGrads(() => model.loss(ids), params.map(([, variable]) => variable));
    try {
      await value.data();
      optimizer.step(Object.fromEntries(params.flatMap(([name, variable]) => (grads[variable.name] ? [[name, grads[variable.name]!]] : []))));
    } finally {
      tf.dispose([value, ...Object.values(grads)]);
    }
    Bun.gc(false); // as Replica.gradients does after each micro-batch
  };
  for (let i = 0; i < 3; i++) await step();
  const runs: number[] = [];
  for (let i = 0; i < 3; i++) runs.push(await timed(step));
  ids.dispose();
  optimizer.dispose();
  model.dispose();
  return TRAIN_TOKENS / (Math.min(...runs) / 1000);
}

/**
 * The original configuration beside PyTorch CPU on the same machine (bench/peer), both in the
 * precision this backend multiplies in. Training runs in float32 whatever serving multiplies in
 * (src/backend/bfloat16.ts), so in bfloat16 there is no training figure.
 */
async function peerBench(gflops: number, python: string, threads: number, precision: MatmulPrecision): Promise<void> {
  const before = machineNow();
  const ours = await bench('original', BENCH_CONFIGS.original, gflops, 0, contexts, 0);
  const trains = precision === 'float32';
  const trainTokensPerSecond = trains ? await trainingRate(BENCH_CONFIGS.original) : 0;
  if (trains) console.log(`training step on ${TRAIN_TOKENS} tokens (text model, AdamW): ${trainTokensPerSecond.toFixed(0)} tokens/s`);
  const [first, last] = [contexts[0]!, contexts.at(-1)!];
  console.error(`PyTorch peer: ${python} bench/peer/torch_peer.py, ${threads} thread(s), ${precision} (a few minutes)`);
  const run = await runTorchPeer({ python, threads, precision, contexts: [first, last], figures: ['decode', 'prefill', 'encode', ...(trains ? ['train' as const] : [])] });
  const rows: PeerFigure[] = [
    ...[first, last].map((context) => ({ figure: `decode at context ${context}`, unit: 'tokens/s', titans: ours.decode.get(context)!.tokensPerSecond })),
    { figure: `prefill of ${last} tokens`, unit: 'tokens/s', titans: ours.prefill.get(last)! },
    { figure: 'ViT-B/16 encode of one image', unit: 'ms', titans: ours.encodeMs },
    ...(trains ? [{ figure: `training step on ${TRAIN_TOKENS} tokens`, unit: 'tokens/s', titans: trainTokensPerSecond }] : []),
  ].map((row) => ({ ...row, peer: run.available ? (run.figures.get(row.figure)?.value ?? null) : null }));
  console.log(`\n## titans-mm beside PyTorch CPU (original configuration: text 384 x 8, ViT-B/16 at 224 px)\n`);
  console.log(formatPeerTable(rows, run, { cores: before.cores, cpu: before.cpu, loadBefore: before.load, loadAfter: machineNow().load }));
}

/** What a long prompt is to a byte model: text, here one paragraph over and over. */
const FILLER = new TextEncoder().encode(
  'The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ' +
    'A pass key hides somewhere in a long text, and the memory has to keep it while it reads on. ',
);
/** Tokens over which a token's cost is measured: at each length, and on a fresh cache. */
const WINDOW = 2048;

type Cache = ReturnType<MultimodalMACNetwork['text']['createCache']>;

interface PrefillPoint {
  length: number;
  /** Reading the prompt up to `length`. */
  elapsedMs: number;
  /** Per token, over the WINDOW tokens that end at `length`. */
  msPerToken: number;
  /** Per token, over the first WINDOW tokens of a fresh cache, read in alternation with those. */
  freshMsPerToken: number;
  /** Tokens read when the logits were first not finite; null while they are. */
  firstNonFinite: number | null;
}

/**
 * Reads FILLER into a cache as generation does (PREFILL_SEGMENTS segments per piece, each piece's
 * last row of logits checked) up to the last of `lengths`. The WINDOW tokens before each length are
 * read piece by piece in alternation with the first WINDOW tokens of a fresh cache, so that both see
 * the same load of the machine. Prints progress to stderr.
 */
async function prefillRun(name: string, model: MultimodalMACNetwork, lengths: number[]): Promise<PrefillPoint[]> {
  const pieceLength = PREFILL_SEGMENTS * model.config.segmentLen;
  /** Reads tokens [start, end) into `cache`: the milliseconds, and whether the last logits were finite. */
  const read = async (cache: Cache, start: number, end: number) => {
    const began = performance.now();
    const tokens = Array.from({ length: end - start }, (_, i) => FILLER[(start + i) % FILLER.length]!);
    const embeddings = model.embedRows(tokens, start, null, []);
    const logits = model.text.step(embeddings, cache);
    const last = logits.slice([0, end - start - 1, 0], [1, 1, -1]);
    tf.dispose([embeddings, logits]);
    const finite = ((await last.data()) as Float32Array).every(Number.isFinite);
    last.dispose();
    return { ms: performance.now() - began, finite };
  };
  const warmUp = model.text.createCache(1);
  for (let at = 0; at < WINDOW; at += pieceLength) await read(warmUp, at, at + pieceLength); // kernels, buffers and the JIT
  warmUp.dispose();

  const points: PrefillPoint[] = [];
  const cache = model.text.createCache(1);
  let length = 0;
  let readMs = 0;
  let firstNonFinite: number | null = null;
  let reported = performance.now();
  const next = async (end: number) => {
    const stop = Math.min(length + pieceLength, end);
    const { ms, finite } = await read(cache, length, stop);
    if (!finite) firstNonFinite ??= stop;
    readMs += ms;
    length = stop;
    if (performance.now() - reported > 5000) {
      reported = performance.now();
      console.error(`  ${name}: ${length} / ${lengths.at(-1)} tokens in ${(readMs / 1000).toFixed(0)} s`);
    }
    return ms;
  };
  for (const target of lengths) {
    while (length < target - WINDOW) await next(target - WINDOW);
    const fresh = model.text.createCache(1);
    let windowMs = 0;
    let freshMs = 0;
    for (let freshLength = 0; length < target; ) {
      const before = length;
      windowMs += await next(target);
      freshMs += (await read(fresh, freshLength, freshLength + length - before)).ms;
      freshLength += length - before;
    }
    fresh.dispose();
    points.push({ length, elapsedMs: readMs, msPerToken: windowMs / WINDOW, freshMsPerToken: freshMs / WINDOW, firstNonFinite });
  }
  cache.dispose();
  return points;
}

async function prefillBench(name: string, model: MultimodalMACNetwork, lengths: number[], finiteLength: number): Promise<void> {
  const c = model.config;
  const runTo = [...lengths, ...(finiteLength > lengths.at(-1)! ? [finiteLength] : [])];
  console.log(`\n## prefill: ${name} (text ${c.textDim} x ${c.depth}, segment ${c.segmentLen}, memory on layers ${c.neuralMemoryLayers.join(',') || 'none'}; pieces of ${PREFILL_SEGMENTS * c.segmentLen} tokens)`);
  const started = performance.now();
  const points = await prefillRun(name, model, runTo);
  for (const p of points) {
    const finite = p.firstNonFinite === null ? 'logits finite' : `logits NOT finite (first at ${p.firstNonFinite} tokens)`;
    console.log(
      `${String(p.length).padStart(7)} tokens: ${((1000 * p.length) / p.elapsedMs).toFixed(0)} tokens/s (${(p.elapsedMs / 1000).toFixed(1)} s); ` +
        `the last ${WINDOW} tokens ${p.msPerToken.toFixed(2)} ms/token = ${(p.msPerToken / p.freshMsPerToken).toFixed(2)}x a fresh cache's first ${WINDOW}; ${finite}`,
    );
  }
  const [first, last] = [points.find((p) => p.length === lengths[0]), points.find((p) => p.length === lengths.at(-1))];
  if (first && last && first !== last) {
    const direct = last.msPerToken / first.msPerToken;
    const relative = last.msPerToken / last.freshMsPerToken / (first.msPerToken / first.freshMsPerToken);
    console.log(`cost per token at ${last.length} / at ${first.length}: ${relative.toFixed(2)}x, each against a fresh cache read alongside, ${direct.toFixed(2)}x directly (goal: within 1.1x)`);
  }
  console.log(`(${((performance.now() - started) / 1000).toFixed(0)} s in all)`);
}

const { values: flags, positionals } = parseArgs({
  args: process.argv.slice(2),
  allowPositionals: true,
  options: {
    'prefill-lengths': { type: 'string', default: '8192,65536' },
    'finite-length': { type: 'string', default: '100000' },
    'skip-prefill': { type: 'boolean', default: false },
    'prefill-only': { type: 'boolean', default: false },
    'prefill-models': { type: 'string', default: 'passkey,default' },
    peer: { type: 'boolean', default: false },
    'peer-python': { type: 'string', default: '/usr/bin/python3' },
    // Default: as many threads as the backend runs, so that both sides use the same cores.
    'peer-threads': { type: 'string' },
    // A GPU's figures: its large-matmul rate, and the encode of a batch as training and a busy server run it.
    'matmul-size': { type: 'string', default: '768' },
    'encode-batch': { type: 'string', default: '0' },
    contexts: { type: 'string', default: '64,512,2048' },
    'decode-rows': { type: 'string', default: '8' },
    ...WEBGPU_WITHOUT_GPU_FLAGS,
  },
});
const prefillLengths = flags['prefill-lengths'].split(',').map(Number).sort((a, b) => a - b);
const finiteLength = Number(flags['finite-length']);
// Each length's figure is the WINDOW tokens before it: two lengths closer than that would share them.
if (prefillLengths.some((n, i) => !Number.isInteger(n) || n < WINDOW || (i > 0 && n - prefillLengths[i - 1]! < WINDOW)) || !Number.isInteger(finiteLength)) {
  throw new Error(`--prefill-lengths must be whole numbers of at least ${WINDOW}, each at least ${WINDOW} past the one before; --finite-length a whole number`);
}

const matmulSize = Number(flags['matmul-size']);
const encodeBatch = Number(flags['encode-batch']);
const contexts = flags.contexts.split(',').map(Number).sort((a, b) => a - b);
const decodeRows = Number(flags['decode-rows']);
if (!Number.isInteger(matmulSize) || matmulSize < 1 || !Number.isInteger(encodeBatch) || encodeBatch < 0 || !Number.isInteger(decodeRows) || decodeRows < 0 || !contexts.every((n) => Number.isInteger(n) && n >= 1)) {
  throw new Error('--matmul-size must be a whole number >= 1, --encode-batch and --decode-rows whole numbers >= 0, --contexts whole numbers >= 1');
}

const { info, line } = await startBenchBackend(flags);
console.log(line);
const gflops = await matmulGflops(matmulSize);
console.log(`matmul: ${gflops.toFixed(1)} GFLOP/s (${matmulSize} x ${matmulSize}, float32, best of 10)`);
const peerThreads = Number(flags['peer-threads'] ?? info.threads);
if (!Number.isInteger(peerThreads) || peerThreads < 1) throw new Error('--peer-threads must be a whole number >= 1');
if (flags.peer) {
  await peerBench(gflops, flags['peer-python'], peerThreads, info.matmulPrecision);
} else {
  if (!flags['prefill-only']) {
    const only = positionals[0];
    for (const [name, options] of Object.entries(BENCH_CONFIGS)) {
      if (!only || only === name) await bench(name, options, gflops, encodeBatch, contexts, decodeRows);
    }
  }
  if (!flags['skip-prefill']) {
    const models = flags['prefill-models'].split(',');
    for (const [name, title, dir] of [['passkey', 'the passkey model', 'models/passkey'], ['needle', 'the needle model', 'models/passkey-long']] as const) {
      if (!models.includes(name)) continue;
      const model = await loadCheckpoint(dir);
      await prefillBench(`${title} (${dir})`, model, prefillLengths, 0);
      model.dispose();
    }
    if (models.includes('default')) {
      // The library's defaults are the original extension's: text 384 x 8, segments of 32 (and a ViT-B/16, unused here).
      const fresh = new MultimodalMAC();
      await prefillBench('a fresh model of the default configuration', fresh, prefillLengths, finiteLength);
      fresh.dispose();
    }
  }
}
console.log(`\nmatmul again: ${(await matmulGflops(matmulSize)).toFixed(1)} GFLOP/s (a large change means the machine was busy)`);
