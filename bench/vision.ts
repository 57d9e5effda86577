/**
 * `bun run bench:vision`: how fast the image encoder of a preset learns, on its own, what a caption
 * needs of a one-object scene. Its ViT and one linear head per attribute (shape, colour, size) are
 * trained with AdamW on the training split; held-out accuracy is printed every --every steps. The heads
 * read the image tokens that the captioner gets (patch features pooled into numImageTokens cells),
 * through a max over the cells in place of the text model's attention. Captioning can be no better
 * than this, so it isolates the vision side cheaply. --set overrides model options, to try a change
 * before a full training run: --set '{"visionStem": [32, 64, 128]}'.
 *   bun bench/vision.ts [--preset shapes] [--steps 300] [--batch 32] [--every 100] [--set JSON]
 */
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs-core';
import { resolveConfig, type MultimodalMACOptions } from '../model/config.ts';
import { Linear } from '../model/layers.ts';
import { AdamW } from '../model/optim.ts';
import { poolPatchGrid } from '../model/multimodal.ts';
import { Random } from '../model/random.ts';
import { VisionTransformerEncoder } from '../model/vit.ts';
import { describeBackend, selectBackend } from '../src/backend/select.ts';
import { sceneAt, type Split } from '../src/data/shapes.ts';
import { SyntheticShapes } from '../src/data/sources.ts';
import { ImageProcessor } from '../src/image.ts';
import { PRESETS } from '../src/training/presets.ts';
import { ATTRIBUTES, attributeLabels } from '../src/data/attributes.ts';

const { values } = parseArgs({
  options: { preset: { type: 'string', default: 'shapes' }, steps: { type: 'string', default: '300' }, batch: { type: 'string', default: '32' }, every: { type: 'string', default: '100' }, set: { type: 'string', default: '{}' } },
});
const preset = PRESETS[values.preset!];
if (!preset) throw new Error(`unknown --preset '${values.preset}' (known: ${Object.keys(PRESETS).join(', ')})`);
const [steps, batchSize, every] = [Number(values.steps), Number(values.batch), Number(values.every)];
const SEED = 7;
const VALIDATION_SIZE = 256;

console.log(describeBackend(await selectBackend()));
const config = resolveConfig({ ...(preset.model as MultimodalMACOptions), ...(JSON.parse(values.set!) as MultimodalMACOptions) });
const random = new Random(config.seed);
const encoder = new VisionTransformerEncoder(random, config);
const heads = ATTRIBUTES.map(({ classes }) => new Linear(random, config.visionDim, classes.length));
const parameters: [string, tf.Variable][] = [...encoder.namedParameters('vision.'), ...heads.flatMap((head, i) => head.namedParameters(`heads.${i}.`))];
const optimizer = new AdamW(parameters, { lr: (preset.train as { lr: number }).lr });
const processor = new ImageProcessor({ imageSize: config.imageSize });
const sources = { train: new SyntheticShapes(SEED, 'train', processor), validation: new SyntheticShapes(SEED, 'validation', processor) };
const cursor = { train: 0, validation: 0 };

/** The next n one-object scenes of a split, rendered as training renders them: images and labels. */
async function nextBatch(split: Split, n: number): Promise<{ images: tf.Tensor4D; labels: number[][] }> {
  const pixels: Float32Array[] = [];
  const labels: number[][] = [];
  while (pixels.length < n) {
    const index = cursor[split]++;
    const scene = sceneAt(SEED, split, index);
    if (scene.objects.length !== 1) continue;
    pixels.push((await sources[split].load(index)).pixels);
    labels.push(attributeLabels(scene.objects[0]!));
  }
  const side = config.imageSize;
  const flat = new Float32Array(n * 3 * side * side);
  pixels.forEach((p, i) => flat.set(p, i * p.length));
  return { images: tf.tensor4d(flat, [n, 3, side, side]), labels };
}

function logits(images: tf.Tensor4D, training: boolean): tf.Tensor[] {
  const patches = encoder.encode(images, { patches: true, training }) as tf.Tensor3D;
  const features = poolPatchGrid(patches, config.numImageTokens, config.imageTokenPool).max(1);
  return heads.map((head) => head.forward(features));
}

function loss(images: tf.Tensor4D, labels: number[][]): tf.Scalar {
  return tf.tidy(() => tf.addN(logits(images, true).map((l, a) => {
    const targets = tf.oneHot(tf.tensor1d(labels.map((row) => row[a]!), 'int32'), l.shape[1]!).toFloat();
    return tf.logSoftmax(l).mul(targets).sum(-1).mean().neg();
  })) as tf.Scalar);
}

const validation = await nextBatch('validation', VALIDATION_SIZE);
console.log(`preset ${values.preset}: ${config.imageSize} px, patch ${config.patchSize}, stem [${config.visionStem.join(', ')}], ViT ${config.visionDim} x ${config.visionDepth}; batch ${batchSize}; accuracy on ${VALIDATION_SIZE} held-out one-object scenes (chance: shape 0.25, color 0.17, size 0.5)`);
for (let step = 1; step <= steps; step++) {
  const { images, labels } = await nextBatch('train', batchSize);
  const { value, grads } = tf.variableGrads(() => loss(images, labels), parameters.map(([, v]) => v));
  optimizer.step(Object.fromEntries(parameters.map(([name, v]) => [name, grads[v.name]!])));
  tf.dispose([images, value, ...Object.values(grads)]);
  if (step % every === 0 || step === steps) {
    const accuracy = tf.tidy(() => logits(validation.images, false).map((l, a) => {
      const predicted = l.argMax(-1).arraySync() as number[];
      return predicted.filter((p, i) => p === validation.labels[i]![a]).length / predicted.length;
    }));
    console.log(`step ${step} (${step * batchSize} images): ${ATTRIBUTES.map(({ name }, a) => `${name} ${accuracy[a]!.toFixed(2)}`).join(', ')}`);
  }
}
validation.images.dispose();
