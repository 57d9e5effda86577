/**
 * What one of our kernels is worth: ViT-B/16 encodes of one image (the original configuration's) and
 * decoded tokens, alternating in one process between the kernel as the backend registers it and its
 * op written out (model/layers.ts kernelOr), so that the machine's load falls on both alike. On a
 * shared machine two processes run minutes apart can differ by more than a kernel saves; pairs run
 * seconds apart differ by their kernel. Prints the median and the fastest of each, and their ratio.
 *   bun run bench:kernel -- TitansSelfAttention [--rounds 15]
 *   MAC_MATMUL_PRECISION=bfloat16 bun bench/kernel.ts TitansFeedForward TitansSelfAttention
 */
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs-core';
import { MultimodalMACNetwork } from '../model/multimodal.ts';
import { describeBackend, selectBackend } from '../src/backend/select.ts';
import { BENCH_CONFIGS } from './configs.ts';

const { values, positionals: kernelNames } = parseArgs({ allowPositionals: true, options: { rounds: { type: 'string', default: '15' } } });
const rounds = Number(values.rounds);
const info = await selectBackend();
console.log(describeBackend(info));
/** Ours, of those the backend registers here: the kernels this bench can weigh. */
const ours = tf.getKernelsForBackend(tf.getBackend()).map((kernel) => kernel.kernelName).filter((name) => name.startsWith('Titans')).sort();
const unknown = kernelNames.filter((name) => !ours.includes(name));
if (kernelNames.length === 0 || unknown.length > 0 || !Number.isInteger(rounds) || rounds < 1) {
  if (unknown.length > 0) console.error(`not registered for '${tf.getBackend()}' here: ${unknown.join(', ')} (MAC_MATMUL_PRECISION and the BLAS decide some)`);
  console.error(`usage: bun bench/kernel.ts KERNEL... [--rounds N]\nkernels here: ${ours.join(' ')}`);
  process.exit(2);
}
const kernels = kernelNames.map((name) => tf.getKernel(name, tf.getBackend()) as tf.KernelConfig);
const setRegistered = (registered: boolean) => {
  for (const kernel of kernels) {
    const present = tf.getKernel(kernel.kernelName, kernel.backendName) !== undefined;
    if (present && !registered) tf.unregisterKernel(kernel.kernelName, kernel.backendName);
    if (!present && registered) tf.registerKernel(kernel);
  }
};

const model = new MultimodalMACNetwork({ ...BENCH_CONFIGS.original, visionDropout: 0, fusionDropout: 0 });
const image = tf.randomUniform([1, 3, model.config.imageSize, model.config.imageSize]) as tf.Tensor4D;
const cache = model.text.createCache(1);
const token = tf.tidy(() => model.text.embed(tf.tensor2d([[101]], [1, 1], 'int32')));
/** Milliseconds of one encode, and of one decoded token (the mean of a window's). */
const figures = {
  'encode (ms)': async () => {
    const started = performance.now();
    const features = model.vision.encode(image);
    await features.data();
    features.dispose();
    return performance.now() - started;
  },
  'decode (ms a token)': async () => {
    const started = performance.now();
    for (let i = 0; i < model.config.segmentLen; i++) {
      const logits = model.text.step(token, cache);
      await logits.data();
      logits.dispose();
    }
    return (performance.now() - started) / model.config.segmentLen;
  },
};

const times = new Map<string, number[]>();
for (let round = -1; round < rounds; round++) {
  for (const registered of [true, false]) {
    setRegistered(registered);
    for (const [figure, measure] of Object.entries(figures)) {
      // Each is taken twice and the second kept: the first after a switch finds the other way's
      // data in the caches (and, in the first round, primitives to make and weights to pack).
      await measure();
      const ms = await measure();
      if (round >= 0) times.set(`${figure} ${registered}`, [...(times.get(`${figure} ${registered}`) ?? []), ms]);
    }
  }
}
setRegistered(true);

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
console.log(`\n${kernelNames.join(' + ')}: ${rounds} rounds, each with and without, alternating\n`);
console.log('| figure | with | written out | with / without (median) |');
console.log('| --- | --- | --- | --- |');
for (const figure of Object.keys(figures)) {
  const [withKernel, without] = [times.get(`${figure} true`)!, times.get(`${figure} false`)!];
  const cell = (xs: number[]) => `${median(xs).toFixed(2)} (fastest ${Math.min(...xs).toFixed(2)})`;
  console.log(`| ${figure} | ${cell(withKernel)} | ${cell(without)} | ${(median(withKernel) / median(without)).toFixed(3)} |`);
}
tf.dispose([image, token]);
cache.dispose();
model.dispose();
