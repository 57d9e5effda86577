/**
 * `bun run bench:tokens`: what a trained captioner's image tokens hold. The checkpoint is frozen; its
 * image tokens (after the projection, as the text model reads them) of one-object scenes are pooled
 * by max and mean over the tokens, and one linear classifier per attribute (shape, colour, size) is
 * fitted on 75% of them and scored on the rest. An attribute that these probes cannot read is lost
 * on the vision side, whatever the text model does; one that they read but captions get wrong is
 * lost on the text side. Compare checkpoints of a run, or runs at the same step.
 *   bun bench/tokens.ts [--model models/default] [--images 800] [--steps 300]
 */
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs-core';
import { AdamW } from '../model/optim.ts';
import { describeBackend, selectBackend } from '../src/backend/select.ts';
import { sceneAt } from '../src/data/shapes.ts';
import { SyntheticShapes } from '../src/data/sources.ts';
import { loadCheckpoint } from '../src/multimodal-mac.ts';
import { ATTRIBUTES, attributeLabels } from '../src/data/attributes.ts';

const { values } = parseArgs({
  options: { model: { type: 'string', default: 'models/default' }, images: { type: 'string', default: '800' }, steps: { type: 'string', default: '300' } },
});
const [imageCount, steps] = [Number(values.images), Number(values.steps)];
// Scenes the bundled model never saw: the training split of another seed.
const SEED = 99;

console.log(describeBackend(await selectBackend()));
const model = await loadCheckpoint(values.model!);
const side = model.config.imageSize;
const source = new SyntheticShapes(SEED, 'train', model.imageProcessor);

/** [N, 2 * textDim] max and mean of each scene's image tokens, and the scenes' labels per attribute. */
const rows: Float32Array[] = [];
const labels: number[][] = [];
for (let index = 0; rows.length < imageCount; index++) {
  const scene = sceneAt(SEED, 'train', index);
  if (scene.objects.length !== 1) continue;
  const { pixels } = await source.load(index);
  rows.push(tf.tidy(() => {
    const tokens = (model.encodeImages(tf.tensor4d(pixels, [1, 3, side, side])) as tf.Tensor).reshape([-1, model.config.textDim]);
    return tf.concat([tokens.max(0), tokens.mean(0)]).dataSync() as Float32Array;
  }));
  labels.push(attributeLabels(scene.objects[0]!));
}
model.dispose();

const width = rows[0]!.length;
const fitted = Math.floor(imageCount * 0.75);
const features = tf.tidy(() => {
  const all = tf.tensor2d(rows.flatMap((r) => Array.from(r)), [imageCount, width]);
  const { mean, variance } = tf.moments(all, 0);
  return all.sub(mean).div(variance.sqrt().add(1e-5)); // standardised: the probes compare directions, not scales
});
const [train, test] = [features.slice([0, 0], [fitted, -1]), features.slice([fitted, 0], [-1, -1])];

console.log(`${values.model}: linear probes on the image tokens of ${imageCount} one-object scenes (${fitted} fitted, ${imageCount - fitted} held out)`);
for (const [a, { name, classes }] of ATTRIBUTES.entries()) {
  const weight = tf.variable(tf.zeros([width, classes.length]), true, `probe.${name}.weight`);
  const bias = tf.variable(tf.zeros([classes.length]), true, `probe.${name}.bias`);
  const optimizer = new AdamW([[weight.name, weight], [bias.name, bias]], { lr: 0.01, weightDecay: 0.01 });
  const targets = tf.oneHot(tf.tensor1d(labels.slice(0, fitted).map((l) => l[a]!), 'int32'), classes.length).toFloat();
  for (let step = 0; step < steps; step++) {
    const { value, grads } = tf.variableGrads(() => tf.tidy(() =>
      tf.logSoftmax(train.matMul(weight).add(bias)).mul(targets).sum(-1).mean().neg() as tf.Scalar), [weight, bias]);
    optimizer.step(grads);
    tf.dispose([value, ...Object.values(grads)]);
  }
  const predicted = tf.tidy(() => test.matMul(weight).add(bias).argMax(-1).arraySync() as number[]);
  const accuracy = predicted.filter((p, i) => p === labels[fitted + i]![a]).length / predicted.length;
  console.log(`  ${name}: ${accuracy.toFixed(3)} (chance ${(1 / classes.length).toFixed(2)})`);
  tf.dispose([weight, bias, targets]);
}
tf.dispose([features, train, test]);
