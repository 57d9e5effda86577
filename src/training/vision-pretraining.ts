/**
 * Stage 1 of a two-stage run: the vision encoder alone learns to say, of each image token, what the
 * part of the image it pools shows: nothing, or an object's shape, colour and size, read from the
 * generator's description of each synthetic scene. Captioning then trains the rest of the model with
 * the encoder frozen (Replica.create).
 *
 * Why: through the caption loss alone the encoder learns shape slowly, its gradient reaching it
 * through the text transformer and mixed with every other word's; with the encoder's labels given
 * outright it learns them in a few hundred steps, and freezing it keeps the caption stage from
 * undoing them (README, "The bundled model"). Labels per token, background included, also teach
 * where there is no object, so that a one-object scene does not read as two.
 */
import * as tf from '@tensorflow/tfjs-core';
import { Linear } from '../../model/layers.ts';
import { imageTokenRegions, type MultimodalMACNetwork } from '../../model/multimodal.ts';
import { AdamW, learningRateAt } from '../../model/optim.ts';
import { Random } from '../../model/random.ts';
import { ATTRIBUTES, attributeLabels, type AttributeName } from '../data/attributes.ts';
import { deriveSeed } from '../data/seed.ts';
import { objectsInRegions, sceneAt, type Split } from '../data/shapes.ts';
import { SyntheticShapes } from '../data/sources.ts';
import { ImageProcessor } from '../image.ts';
import type { VisionPretrainingSpec } from './spec.ts';

export interface PretrainingProgress {
  step: number;
  steps: number;
  loss: number;
  lr: number;
  samples_per_sec: number;
  eta_s: number;
}

/**
 * Held-out accuracy: per attribute over the tokens that show an object, and `tokens`, the share of
 * all tokens (background ones too) whose every attribute is right.
 */
export type TokenAccuracy = Record<AttributeName | 'tokens', number>;

export type PretrainingEvent = ({ type: 'pretraining' } & PretrainingProgress) | { type: 'pretraining_eval'; step: number; accuracy: TokenAccuracy };

export interface PretrainingOptions {
  /** The run's seed: the scenes, the heads' initialisation and dropout derive from it. */
  seed: number;
  onEvent: (event: PretrainingEvent) => void;
  /** Checked between steps: true stops the stage (it then returns false). */
  shouldStop?: () => boolean;
}

// Seed paths of this stage's training scenes, its heads and its dropout stream.
const SCENES = 21;
const HEADS = 22;
const DROPOUT = 23;
/** Validation scenes for the accuracy; drawn from the validation split, which no stage trains on. */
const VALIDATION_SCENES = 128;
const VALIDATION_BATCH = 32;
/** Smoothing of the step time behind samples/s and the ETA, as in the caption stage. */
const SMOOTHING = 0.2;

/** Trains `model.vision` in place; true when all steps ran, false when stopped. */
export async function pretrainVision(model: MultimodalMACNetwork, spec: VisionPretrainingSpec, options: PretrainingOptions): Promise<boolean> {
  const { seed, onEvent } = options;
  const heads = new TokenAttributeHeads(new Random(deriveSeed(seed, HEADS)), model.config.visionDim);
  const params = [...model.vision.namedParameters('vision.'), ...heads.namedParameters()];
  const optimizer = new AdamW(params, { lr: spec.lr });
  const scenes = new LabelledScenes(model, deriveSeed(seed, SCENES), 'train');
  const validation = new LabelledScenes(model, seed, 'validation');
  let stepSeconds = 0;
  try {
    for (let step = 1; step <= spec.steps; step++) {
      await new Promise((resolve) => setTimeout(resolve, 0));
      if (options.shouldStop?.()) return false;
      const started = performance.now();
      const lr = learningRateAt(step, { lr: spec.lr, warmup: spec.warmup, steps: spec.steps });
      const batch = await scenes.batch((step - 1) * spec.batch_size, spec.batch_size);
      model.random.state = deriveSeed(seed, DROPOUT, step);
      const { value, grads } = tf.variableGrads(() => heads.loss(model.imageFeatures(batch.images, true), batch.labels), params.map(([, v]) => v));
      try {
        optimizer.step(Object.fromEntries(params.map(([name, v]) => [name, grads[v.name]!])), lr);
        const loss = (await value.data())[0]!;
        const seconds = (performance.now() - started) / 1000;
        stepSeconds = step === 1 ? seconds : SMOOTHING * seconds + (1 - SMOOTHING) * stepSeconds;
        onEvent({ type: 'pretraining', step, steps: spec.steps, loss, lr, samples_per_sec: spec.batch_size / stepSeconds, eta_s: (spec.steps - step) * stepSeconds });
      } finally {
        tf.dispose([batch.images, value, ...Object.values(grads)]);
      }
      if (step === spec.steps || (spec.eval_every > 0 && step % spec.eval_every === 0)) {
        onEvent({ type: 'pretraining_eval', step, accuracy: await accuracy(model, heads, validation) });
      }
    }
    return true;
  } finally {
    optimizer.dispose();
    heads.dispose();
  }
}

/** One linear classifier per attribute on each token's features; class 0 is "no object". */
class TokenAttributeHeads {
  private readonly heads: Linear[];

  constructor(random: Random, dim: number) {
    this.heads = ATTRIBUTES.map(({ classes }) => new Linear(random, dim, classes.length + 1));
  }

  namedParameters(): [string, tf.Variable][] {
    return this.heads.flatMap((head, i) => head.namedParameters(`heads.${ATTRIBUTES[i]!.name}.`));
  }

  /** features [B, k, D] -> per attribute, logits [B * k, classes + 1]. */
  logits(features: tf.Tensor3D): tf.Tensor2D[] {
    return tf.tidy(() => this.heads.map((head) => head.forward(features).reshape([features.shape[0] * features.shape[1], -1]) as tf.Tensor2D));
  }

  /** Mean cross-entropy over the tokens, summed over the attributes. */
  loss(features: tf.Tensor3D, labels: Int32Array[]): tf.Scalar {
    return tf.tidy(() => tf.addN(this.logits(features).map((logits, a) => {
      const target = tf.oneHot(tf.tensor1d(labels[a]!, 'int32'), logits.shape[1]);
      return tf.logSoftmax(logits).mul(target).sum(-1).mean().neg();
    })) as tf.Scalar);
  }

  dispose(): void {
    for (const head of this.heads) head.dispose();
  }
}

interface LabelledBatch {
  images: tf.Tensor4D;
  /** Per attribute, the class of each token, image-major: [B * k], 0 for background. */
  labels: Int32Array[];
}

/** Synthetic scenes as the model sees them, with each image token's labels. */
class LabelledScenes {
  private readonly source: SyntheticShapes;
  private readonly regions: ReturnType<typeof imageTokenRegions>;

  constructor(
    private readonly model: MultimodalMACNetwork,
    private readonly seed: number,
    private readonly split: Split,
  ) {
    const { imageSize, patchSize, imageMean, imageStd, imageResize, numImageTokens } = model.config;
    this.source = new SyntheticShapes(seed, split, new ImageProcessor({ imageSize, mean: imageMean, std: imageStd, resize: imageResize }));
    this.regions = imageTokenRegions(numImageTokens, imageSize / patchSize);
  }

  /** Scenes first, ..., first + count - 1. */
  async batch(first: number, count: number): Promise<LabelledBatch> {
    const size = this.model.config.imageSize;
    const pixels = new Float32Array(count * 3 * size * size);
    const labels = ATTRIBUTES.map(() => new Int32Array(count * this.regions.length));
    for (let i = 0; i < count; i++) {
      pixels.set((await this.source.load(first + i)).pixels, i * 3 * size * size);
      const scene = sceneAt(this.seed, this.split, first + i);
      objectsInRegions(scene, this.regions).forEach((index, t) => {
        const object = scene.objects[index];
        if (object) attributeLabels(object).forEach((label, a) => (labels[a]![i * this.regions.length + t] = label + 1));
      });
    }
    return { images: tf.tensor4d(pixels, [count, 3, size, size]), labels };
  }
}

async function accuracy(model: MultimodalMACNetwork, heads: TokenAttributeHeads, scenes: LabelledScenes): Promise<TokenAccuracy> {
  const right = ATTRIBUTES.map(() => 0);
  let objectTokens = 0;
  let allRight = 0;
  let tokens = 0;
  for (let first = 0; first < VALIDATION_SCENES; first += VALIDATION_BATCH) {
    const batch = await scenes.batch(first, VALIDATION_BATCH);
    const predicted = tf.tidy(() => heads.logits(model.imageFeatures(batch.images, false)).map((logits) => logits.argMax(-1)));
    const classes = await Promise.all(predicted.map((p) => p.data()));
    tf.dispose([batch.images, ...predicted]);
    const [shapes] = batch.labels;
    for (let t = 0; t < shapes!.length; t++) {
      const correct = batch.labels.map((labels, a) => classes[a]![t] === labels[t]);
      tokens++;
      if (correct.every(Boolean)) allRight++;
      if (shapes![t] === 0) continue;
      objectTokens++;
      correct.forEach((ok, a) => ok && right[a]!++);
    }
  }
  const share = (n: number, of: number) => (of === 0 ? 0 : n / of);
  return { ...Object.fromEntries(ATTRIBUTES.map(({ name }, a) => [name, share(right[a]!, objectTokens)])), tokens: share(allRight, tokens) } as TokenAccuracy;
}
