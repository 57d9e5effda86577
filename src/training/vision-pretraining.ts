/**
 * Stage 1 of a two-stage run: the vision encoder alone learns what its image tokens show, from the
 * generator's description of each synthetic scene: of each token, whether it shows an object; of each
 * object, its shape, colour and size, read from the max-pool of the tokens that show it. Captioning
 * then trains the rest of the model with the encoder frozen (Replica.create).
 *
 * Why: through the caption loss alone the encoder learns shape slowly, its gradient reaching it
 * through the text transformer and mixed with every other word's; with labels given outright it
 * learns them in a few hundred steps, and freezing it keeps the caption stage from undoing them
 * (docs/bundled-model.md). Telling object tokens from background ones, in scenes of one object
 * and of two, is what lets the captioner count the objects.
 */
import * as tf from '@tensorflow/tfjs-core';
import { Linear } from '../../model/layers.ts';
import { imageTokenRegions, type MultimodalMACNetwork } from '../../model/multimodal.ts';
import { AdamW, learningRateAt } from '../../model/optim.ts';
import { Random } from '../../model/random.ts';
import { ATTRIBUTES, attributeLabels } from '../data/attributes.ts';
import { deriveSeed } from '../data/seed.ts';
import { objectsInRegions, sceneAt, type Split } from '../data/shapes.ts';
import { SyntheticShapes } from '../data/sources.ts';
import { ImageProcessor } from '../image.ts';
import type { VisionPretrainingSpec } from './spec.ts';
import { StepTime, type PretrainingAccuracy, type PretrainingEvent } from './events.ts';
import { endIfAbandoned } from './trainer.ts';

export interface PretrainingOptions {
  /** The run's seed: the scenes, the heads' initialisation and dropout derive from it. */
  seed: number;
  onEvent: (event: PretrainingEvent) => void;
  /** Checked between steps: true stops the stage (it then returns false). */
  shouldStop?: () => boolean;
  /** As the caption stage's (TrainOptions.shouldAbandon). */
  shouldAbandon?: () => boolean;
}

// Seed paths of this stage's training scenes, its heads and its dropout stream.
const SCENES = 21;
const HEADS = 22;
const DROPOUT = 23;
/** Validation scenes for the accuracy; drawn from the validation split, which no stage trains on. */
const VALIDATION_SCENES = 128;
const VALIDATION_BATCH = 32;

/** Trains `model.vision` in place; true when all steps ran, false when stopped. */
export async function pretrainVision(model: MultimodalMACNetwork, spec: VisionPretrainingSpec, options: PretrainingOptions): Promise<boolean> {
  const { seed, onEvent } = options;
  const heads = new SceneHeads(new Random(deriveSeed(seed, HEADS)), model.config.visionDim);
  const params = [...model.vision.namedParameters('vision.'), ...heads.namedParameters()];
  const optimizer = new AdamW(params, { lr: spec.lr });
  const scenes = new LabelledScenes(model, deriveSeed(seed, SCENES), 'train');
  const validation = new LabelledScenes(model, seed, 'validation');
  // Rendered at the first evaluation and kept: every evaluation scores the same scenes.
  let heldOut: LabelledBatch[] | undefined;
  const stepTime = new StepTime();
  try {
    for (let step = 1; step <= spec.steps; step++) {
      await new Promise((resolve) => setTimeout(resolve, 0));
      endIfAbandoned(options.shouldAbandon);
      if (options.shouldStop?.()) return false;
      const started = performance.now();
      const lr = learningRateAt(step, { lr: spec.lr, warmup: spec.warmup, steps: spec.steps });
      const batch = await scenes.batch((step - 1) * spec.batch_size, spec.batch_size);
      model.random.state = deriveSeed(seed, DROPOUT, step);
      const images = imagesOf(batch, model.config.imageSize);
      const { value, grads } = tf.variableGrads(() => heads.loss(model.imageFeatures(images, true), batch), params.map(([, v]) => v));
      try {
        optimizer.step(Object.fromEntries(params.map(([name, v]) => [name, grads[v.name]!])), lr);
        const loss = (await value.data())[0]!;
        const stepSeconds = stepTime.add((performance.now() - started) / 1000);
        onEvent({ type: 'pretraining', step, steps: spec.steps, loss, lr, samples_per_sec: spec.batch_size / stepSeconds, eta_s: (spec.steps - step) * stepSeconds });
      } finally {
        tf.dispose([images, value, ...Object.values(grads)]);
      }
      if (step === spec.steps || (spec.eval_every > 0 && step % spec.eval_every === 0)) {
        endIfAbandoned(options.shouldAbandon);
        heldOut ??= await Promise.all(Array.from({ length: VALIDATION_SCENES / VALIDATION_BATCH }, (_, i) => validation.batch(i * VALIDATION_BATCH, VALIDATION_BATCH)));
        onEvent({ type: 'pretraining_eval', step, accuracy: await accuracy(model, heads, heldOut) });
      }
    }
    return true;
  } finally {
    optimizer.dispose();
    heads.dispose();
  }
}

/** A scene has one or two objects. */
const MAX_OBJECTS = 2;
/** Added to the features of the tokens that do not show an object, so that its max-pool skips them. */
const NOT_SHOWN = -1e4;

/**
 * Linear classifiers on the encoder's image tokens: for each token, whether it shows an object; for
 * each object, its attributes from the max-pool of the tokens that show it, as the image tokens are
 * pooled from patches.
 */
class SceneHeads {
  private readonly presence: Linear;
  private readonly attributes: Linear[];

  constructor(random: Random, dim: number) {
    this.presence = new Linear(random, dim, 2);
    this.attributes = ATTRIBUTES.map(({ classes }) => new Linear(random, dim, classes.length));
  }

  namedParameters(): [string, tf.Variable][] {
    return [...this.presence.namedParameters('heads.presence.'), ...this.attributes.flatMap((head, i) => head.namedParameters(`heads.${ATTRIBUTES[i]!.name}.`))];
  }

  /** features [B, k, D] -> presence logits [B * k, 2] and, per attribute, logits [B * MAX_OBJECTS, classes]. */
  logits(features: tf.Tensor3D, shows: Int32Array): { presence: tf.Tensor2D; attributes: tf.Tensor2D[] } {
    return tf.tidy(() => {
      const [batch, k, dim] = features.shape;
      const presence = this.presence.forward(features).reshape([batch * k, 2]) as tf.Tensor2D;
      const mask = new Float32Array(batch * MAX_OBJECTS * k);
      shows.forEach((object, i) => object >= 0 && (mask[(Math.floor(i / k) * MAX_OBJECTS + object) * k + (i % k)] = 1));
      const shown = tf.tensor3d(mask, [batch, MAX_OBJECTS, k]).expandDims(3); // [B, O, k, 1]
      const pooled = features.expandDims(1).add(shown.sub(1).mul(-NOT_SHOWN)).max(2).mul(shown.max(2)); // [B, O, D]; 0 for no object
      const flat = pooled.reshape([batch * MAX_OBJECTS, dim]);
      return { presence, attributes: this.attributes.map((head) => head.forward(flat) as tf.Tensor2D) };
    });
  }

  /** Mean cross-entropy of the presence over the tokens, plus that of each attribute over the objects. */
  loss(features: tf.Tensor3D, batch: LabelledBatch): tf.Scalar {
    return tf.tidy(() => {
      const { presence, attributes } = this.logits(features, batch.shows);
      const crossEntropy = (logits: tf.Tensor2D, labels: Int32Array) => {
        const target = tf.oneHot(tf.tensor1d(labels.map((label) => Math.max(label, 0)), 'int32'), logits.shape[1]);
        return tf.logSoftmax(logits).mul(target).sum(-1).neg(); // [N]
      };
      const objects = tf.tensor1d(batch.objects[0]!.map((label) => (label >= 0 ? 1 : 0)), 'float32');
      const perObject = attributes.map((logits, a) => crossEntropy(logits, batch.objects[a]!).mul(objects).sum().div(objects.sum()));
      return tf.addN([crossEntropy(presence, batch.shows.map((object) => (object >= 0 ? 1 : 0))).mean(), ...perObject]) as tf.Scalar;
    });
  }

  dispose(): void {
    this.presence.dispose();
    for (const head of this.attributes) head.dispose();
  }
}

interface LabelledBatch {
  /** The images as the model takes them, [B, 3, size, size] flattened. */
  pixels: Float32Array;
  count: number;
  /** The object each token shows, image-major [B * k]: 0 the caption's first, 1 its second, -1 none. */
  shows: Int32Array;
  /** Per attribute, each object's class, [B * MAX_OBJECTS], -1 where the scene has no such object. */
  objects: Int32Array[];
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
    const shows = new Int32Array(count * this.regions.length);
    const objects = ATTRIBUTES.map(() => new Int32Array(count * MAX_OBJECTS).fill(-1));
    for (let i = 0; i < count; i++) {
      pixels.set((await this.source.load(first + i)).pixels, i * 3 * size * size);
      const scene = sceneAt(this.seed, this.split, first + i);
      shows.set(objectsInRegions(scene, this.regions), i * this.regions.length);
      scene.objects.forEach((object, o) => attributeLabels(object).forEach((label, a) => (objects[a]![i * MAX_OBJECTS + o] = label)));
    }
    return { pixels, count, shows, objects };
  }
}

function imagesOf(batch: LabelledBatch, size: number): tf.Tensor4D {
  return tf.tensor4d(batch.pixels, [batch.count, 3, size, size]);
}

async function accuracy(model: MultimodalMACNetwork, heads: SceneHeads, batches: LabelledBatch[]): Promise<PretrainingAccuracy> {
  const right = ATTRIBUTES.map(() => 0);
  let objects = 0;
  let tokensRight = 0;
  let tokens = 0;
  for (const batch of batches) {
    const predicted = tf.tidy(() => {
      const { presence, attributes } = heads.logits(model.imageFeatures(imagesOf(batch, model.config.imageSize), false), batch.shows);
      return [presence, ...attributes].map((logits) => logits.argMax(-1));
    });
    const [presence, ...attributes] = await Promise.all(predicted.map((p) => p.data()));
    tf.dispose(predicted);
    batch.shows.forEach((object, t) => {
      tokens++;
      if (presence![t] === (object >= 0 ? 1 : 0)) tokensRight++;
    });
    batch.objects[0]!.forEach((label, o) => {
      if (label < 0) return;
      objects++;
      attributes.forEach((classes, a) => classes[o] === batch.objects[a]![o] && right[a]!++);
    });
  }
  const share = (n: number, of: number) => (of === 0 ? 0 : n / of);
  return { ...Object.fromEntries(ATTRIBUTES.map(({ name }, a) => [name, share(right[a]!, objects)])), tokens: share(tokensRight, tokens) } as PretrainingAccuracy;
}
