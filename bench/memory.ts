/**
 * What each memory option of the reference implementation costs and what it buys on long inputs
 * (the long-context issue, item 1): a freshly initialised model reads LENGTH tokens of repeated
 * filler, the hardest text for a memory whose stores feed on each other, at the default step size
 * and at 100 times it. For each option set: whether the logits stayed finite (and the first token
 * where they did not), the largest |logit|, and the prefill speed as a ratio to the defaults' in
 * the same process. Nothing here is asserted; test/model/long-context.test.ts holds the checks.
 *
 *   bun run bench:memory [--length 16384] [--config small|original]
 */
import * as tf from '@tensorflow/tfjs-core';
import { parseArgs } from 'node:util';
import type { MultimodalMACOptions } from '../model/config.ts';
import { MultimodalMACNetwork } from '../model/multimodal.ts';
import { FILLER } from '../src/data/passkey.ts';
import { describeBackend, selectBackend } from '../src/backend/select.ts';

const { values: args } = parseArgs({ options: { length: { type: 'string', default: '16384' }, config: { type: 'string', default: 'small' } } });
const LENGTH = Number(args.length);
const PIECE = 2048;

const CONFIGS: Record<string, MultimodalMACOptions> = {
  small: { textDim: 64, depth: 4, heads: 4, dimHead: 16, segmentLen: 32 },
  // The original README's text model: 384 wide, 8 deep, 32-token segments.
  original: { textDim: 384, depth: 8, segmentLen: 32 },
};
const VISION: MultimodalMACOptions = { imageSize: 16, patchSize: 8, visionDim: 16, visionDepth: 1, visionHeads: 1, visionMlpDim: 16, projectionDim: 16 };

const VARIANTS: [string, MultimodalMACOptions][] = [
  ['defaults (residual norm, surprise clip 1)', {}],
  ['no residual norm', { neuralMemoryKwargs: { memModelNormAddResidual: false } }],
  ['no surprise clip', { neuralMemoryKwargs: { maxGradNorm: 0 } }],
  ['neither', { neuralMemoryKwargs: { memModelNormAddResidual: false, maxGradNorm: 0 } }],
  ['spectral-norm surprises', { neuralMemoryKwargs: { spectralNormSurprises: true } }],
  ['memory weight residual', { neuralMemWeightResidual: true }],
  ['attention value residual', { acceptValueResidual: true }],
  ['batches of 4 chunks of 8 tokens', { neuralMemorySegmentLen: 8, neuralMemoryBatchSize: 32 }],
  ['forget gate starting at 1/2', { neuralMemoryKwargs: { initDecayBias: 0 } }],
];

interface Reading { finite: boolean; firstNonFinite: number | null; largest: number; tokensPerSecond: number }

function read(options: MultimodalMACOptions): Reading {
  const model = new MultimodalMACNetwork(options);
  const cache = model.text.createCache(1);
  let largest = 0;
  let firstNonFinite: number | null = null;
  const started = performance.now();
  for (let at = 0; at < LENGTH && firstNonFinite === null; at += PIECE) {
    const tokens = Array.from({ length: PIECE }, (_, i) => FILLER.charCodeAt((at + i) % FILLER.length));
    const embeddings = tf.tidy(() => model.text.embed(tf.tensor2d([tokens], [1, PIECE], 'int32')));
    const logits = model.text.step(embeddings, cache);
    const value = tf.tidy(() => logits.abs().max().dataSync()[0]!);
    tf.dispose([embeddings, logits]);
    if (Number.isFinite(value)) largest = Math.max(largest, value);
    else firstNonFinite = at;
  }
  const seconds = (performance.now() - started) / 1000;
  cache.dispose();
  model.dispose();
  return { finite: firstNonFinite === null, firstNonFinite, largest, tokensPerSecond: LENGTH / seconds };
}

const backend = await selectBackend();
const base = CONFIGS[args.config!];
if (!base) throw new Error(`--config must be one of ${Object.keys(CONFIGS).join(', ')}`);
console.log(`memory options over ${LENGTH} tokens of repeated filler, config ${args.config} (${JSON.stringify(base)}), ${describeBackend(backend)}`);
console.log('| option | step size | finite | largest logit | prefill speed vs defaults |');
console.log('| --- | --- | --- | --- | --- |');
// The first model a process builds pays for the backend's warm-up; no variant should.
read({ ...VISION, ...base });
for (const stepSize of [0.1, 10]) {
  let baseline = 0;
  for (const [name, variant] of VARIANTS) {
    const options = { ...VISION, ...base, ...variant, neuralMemoryKwargs: { ...variant.neuralMemoryKwargs, maxLr: stepSize } };
    const r = read(options);
    if (baseline === 0) baseline = r.tokensPerSecond;
    const finite = r.finite ? 'yes' : `no (from token ${r.firstNonFinite})`;
    const speed = r.finite ? `${(r.tokensPerSecond / baseline).toFixed(2)}x (${Math.round(r.tokensPerSecond)} tokens/s)` : '-';
    console.log(`| ${name} | ${stepSize} | ${finite} | ${r.largest.toFixed(2)} | ${speed} |`);
  }
}
