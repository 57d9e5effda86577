/**
 * One copy of the model being trained, with its optimizer and its view of the data. A run has one
 * replica per data-parallel worker (one in total without data parallelism); every replica applies
 * the same averaged gradients, so all hold the same weights, and replica 0 writes the checkpoints.
 *
 * Gradients travel as Float32Arrays in parameter order (null: the parameter had no gradient this
 * step, e.g. the vision encoder on a text-only step), so that they can cross to another thread.
 */
import * as tf from '@tensorflow/tfjs-core';
import { z } from 'zod';
import { loadCheckpoint, readTrainingState, saveCheckpoint } from '../../model/checkpoint.ts';
import { changedOptions, resolveConfig, type MultimodalMACConfig } from '../../model/config.ts';
import { MultimodalMACNetwork } from '../../model/multimodal.ts';
import { AdamW } from '../../model/optim.ts';
import { widenImageSlots, type Batch } from '../data/batch.ts';
import { deriveSeed } from '../data/seed.ts';
import { TrainingData } from '../data/training-data.ts';
import { ImageProcessor } from '../image.ts';
import { jobCard, writeModelCard } from './model-card.ts';
import { SMALL_MODEL } from './presets.ts';
import { jobModelOptions } from './resolve.ts';
import type { JobSpec } from './spec.ts';

export type GradientList = (Float32Array | null)[];

export interface ShardGradients {
  /** Sum over the micro-batches of the gradient of each micro-batch's mean loss. */
  grads: GradientList;
  /** Sum over the micro-batches of their mean loss. */
  loss: number;
  /** Every image this replica has found unusable so far (see TrainingData.skippedImages). */
  skippedImages: string[];
}

/** What trainer.json holds: enough, with the step, to continue exactly. */
export interface TrainerState {
  step: number;
  steps: number;
  seed: number;
  workers: number;
  samples: number;
  /** The images found unusable before this step, by every replica (TrainingData.skippedImages). */
  skippedImages: string[];
}

/** Where a replica's run starts: the step of the checkpoint it resumed from (0 for a new run), and the images found unusable before it. */
export type ResumePoint = Pick<TrainerState, 'step' | 'skippedImages'>;

/** trainer.json as written: the trainer's state and what the replica adds to pin an exact resume. */
interface SavedTrainerState extends TrainerState {
  batchSize: number;
  gradAccum: number;
  /** AdamW's own step count: behind `step` by the updates skipped for a non-finite gradient. */
  optimizerSteps: number;
  /** runSettings of the job: absent from checkpoints written before they were pinned. */
  settings?: Record<string, string>;
}

// Seed path of the dropout stream.
const DROPOUT = 11;

/** A checkpoint that cannot continue the job asked for: another run, another model, or no training state. */
export class ResumeError extends Error {
  override name = 'ResumeError';
}

export class Replica {
  private constructor(
    readonly model: MultimodalMACNetwork,
    readonly optimizer: AdamW,
    readonly data: TrainingData,
    private readonly spec: JobSpec,
    readonly resumedAt: ResumePoint,
  ) {}

  /**
   * Builds the model (new, from base_checkpoint, or from the checkpoint to resume with its optimizer
   * state) and opens the data. Paths in the spec must already be absolute and checked.
   */
  static async create(spec: JobSpec, resumeFrom?: string): Promise<Replica> {
    const model = await initialModel(spec, resumeFrom);
    let optimizer: AdamW | undefined;
    try {
      const { train } = spec;
      // A frozen encoder (by default, one that vision pretraining taught) gets no gradient at all.
      if (train.freeze_vision) for (const [, variable] of model.vision.namedParameters()) variable.trainable = false;
      const trainable = model.namedParameters().filter(([, variable]) => variable.trainable);
      optimizer = new AdamW(trainable, { lr: train.lr, weightDecay: train.weight_decay });
      let resumedAt: ResumePoint = { step: 0, skippedImages: [] };
      if (resumeFrom) {
        const state = await readTrainingState(resumeFrom, model);
        if (!state) throw new ResumeError(`${resumeFrom} has no trainer.json to resume from`);
        const trainer = savedTrainerState(state.trainer, resumeFrom);
        requireSameRun(trainer, spec, resumeFrom);
        requireSameFreezing(model, Object.keys(state.optimizer), spec, resumeFrom);
        await requireSameModel(model.config, spec, resumeFrom);
        const tensors = Object.fromEntries(Object.entries(state.optimizer).map(([name, t]) => [name, tf.tensor(t.data, t.shape, 'float32')]));
        try {
          optimizer.loadState(tensors, trainer.optimizerSteps);
        } finally {
          tf.dispose(Object.values(tensors));
        }
        resumedAt = { step: trainer.step, skippedImages: trainer.skippedImages };
      }
      const { imageSize, imageMean, imageStd, imageResize } = model.config;
      const processor = new ImageProcessor({ imageSize, mean: imageMean, std: imageStd, resize: imageResize });
      const data = await TrainingData.open(spec.data, { seed: train.seed, batchSize: train.batch_size, gradAccum: train.grad_accum, processor });
      return new Replica(model, optimizer, data, spec, resumedAt);
    } catch (error) {
      optimizer?.dispose();
      model.dispose();
      throw error;
    }
  }

  /** Gradients of this replica's shard of update `step` (from 1), summed over the micro-batches. */
  async gradients(step: number, shard: number, shards: number): Promise<ShardGradients> {
    const params = this.model.namedParameters();
    const sums: GradientList = params.map(() => null);
    let loss = 0;
    for (let micro = 0; micro < this.spec.train.grad_accum; micro++) {
      const batch = await this.data.shard(step, micro, shard, shards);
      // Dropout draws from a stream fixed by (seed, step, micro-batch, shard), not by the run's history.
      this.model.random.state = deriveSeed(this.spec.train.seed, DROPOUT, step, micro, shard);
      const { value, grads } = tf.tidy(() => tf.variableGrads(() => this.batchLoss(batch, true)));
      try {
        loss += (await value.data())[0]!;
        const read = await Promise.all(params.map(([, variable]) => grads[variable.name]?.data() as Promise<Float32Array> | undefined));
        read.forEach((values, i) => {
          if (!values) return;
          const sum = sums[i];
          if (sum) for (let j = 0; j < values.length; j++) sum[j]! += values[j]!;
          else sums[i] = Float32Array.from(values);
        });
      } finally {
        tf.dispose([value, ...Object.values(grads)]);
      }
      // A young-generation collection while almost nothing is alive (the step's tape is gone) takes
      // under a millisecond. Without it, the steps of the original configuration's text model ran
      // 1.3-1.4x slower from the fourth on, every kernel alike (docs/performance.md, "Training
      // beside PyTorch").
      Bun.gc(false);
    }
    return { grads: sums, loss, skippedImages: this.data.skippedImages() };
  }

  /** Takes one AdamW step with the (averaged, clipped) gradients at learning rate lr. */
  apply(grads: GradientList, lr: number): void {
    const params = this.model.namedParameters();
    const named: Record<string, tf.Tensor> = {};
    grads.forEach((values, i) => {
      if (values) named[params[i]![0]] = tf.tensor(values, params[i]![1].shape, 'float32');
    });
    try {
      this.optimizer.step(named, lr);
    } finally {
      tf.dispose(Object.values(named));
    }
  }

  /** Mean loss over the validation batches, dropout off; null without a validation set. */
  async evalLoss(): Promise<number | null> {
    const batches = await this.data.validation();
    if (batches.length === 0) return null;
    let total = 0;
    for (const batch of batches) {
      const value = tf.tidy(() => this.batchLoss(batch, false));
      total += (await value.data())[0]!;
      value.dispose();
    }
    return total / batches.length;
  }

  async save(dir: string, trainer: TrainerState): Promise<void> {
    const { batch_size: batchSize, grad_accum: gradAccum } = this.spec.train;
    const saved: SavedTrainerState = { ...trainer, batchSize, gradAccum, optimizerSteps: this.optimizer.stepCount, settings: runSettings(this.spec) };
    await saveCheckpoint(this.model, dir, { optimizer: this.optimizer.state(), trainer: saved });
    await writeModelCard(dir, jobCard(this.spec, trainer.step));
  }

  dispose(): void {
    this.optimizer.dispose();
    this.model.dispose();
  }

  private batchLoss(unwidened: Batch, training: boolean): tf.Scalar {
    const batch = widenImageSlots(unwidened, this.model.config);
    const ids = tf.tensor2d(batch.ids, [batch.rows, batch.length], 'int32');
    const size = this.model.config.imageSize;
    const images = batch.images && (tf.tensor5d(batch.images, [batch.rows, 1, 3, size, size]) as tf.Tensor5D);
    const memoryUpdateCost = training ? this.spec.train.memory_update_cost : 0;
    return this.model.loss(ids, { images, imagePositions: batch.imagePositions, lengths: batch.lengths, contextLengths: batch.contextLengths, training, memoryUpdateCost });
  }
}

/**
 * The model a job starts from: new, from base_checkpoint with the spec's model options changed in
 * it, or the checkpoint it resumes (which holds those changes already).
 */
export async function initialModel(spec: JobSpec, resumeFrom?: string): Promise<MultimodalMACNetwork> {
  const source = resumeFrom ?? spec.base_checkpoint;
  if (!source) return new MultimodalMACNetwork(spec.model ?? SMALL_MODEL);
  const changes = spec.base_checkpoint ? spec.model : undefined;
  return loadCheckpoint(source, (options) => new MultimodalMACNetwork(changes ? changedOptions(options, changes) : options));
}

const savedTrainerSchema = z.object({
  step: z.int().nonnegative(),
  steps: z.int().positive(),
  seed: z.int().nonnegative(),
  workers: z.int().positive(),
  samples: z.number().nonnegative(),
  // Checkpoints written before the unusable images were kept have none.
  skippedImages: z.array(z.string()).default([]),
  batchSize: z.int().positive(),
  gradAccum: z.int().positive(),
  optimizerSteps: z.int().nonnegative(),
  settings: z.record(z.string(), z.string()).optional(),
});

/** trainer.json checked: one written by an older version, or damaged, is refused with what it lacks. */
function savedTrainerState(trainer: unknown, dir: string): SavedTrainerState {
  const parsed = savedTrainerSchema.safeParse(trainer);
  if (parsed.success) return parsed.data;
  const issue = parsed.error.issues[0]!;
  const field = issue.path.length > 0 ? `${issue.path.join('.')}: ` : '';
  throw new ResumeError(`cannot resume ${dir}: its trainer.json is not one this version can continue from (${field}${issue.message}); train from it as a base_checkpoint instead`);
}

/**
 * A resumed run continues the same data order, dropout streams and schedule only with the same seed,
 * workers, batch, length and runSettings; anything else would silently be a different run.
 */
function requireSameRun(saved: SavedTrainerState, spec: JobSpec, dir: string): void {
  const { train } = spec;
  const now: [string, unknown, unknown][] = [
    ['train.seed', saved.seed, train.seed],
    ['train.workers', saved.workers, train.workers],
    ['train.batch_size', saved.batchSize, train.batch_size],
    ['train.grad_accum', saved.gradAccum, train.grad_accum],
    ['train.steps', saved.steps, train.steps],
  ];
  if (saved.settings) {
    const settings = runSettings(spec);
    for (const field of new Set([...Object.keys(saved.settings), ...Object.keys(settings)])) now.push([field, saved.settings[field] ?? 'unset', settings[field] ?? 'unset']);
  }
  for (const [field, before, after] of now) {
    if (before !== after) throw new ResumeError(`cannot resume ${dir} exactly: ${field} was ${before}, now ${after}`);
  }
}

/**
 * The rest of what makes a run's steps what they are, as JSON by field: its schedule and its data
 * settings. The data's paths are left out: the same files read from another folder are the same run.
 */
function runSettings(spec: JobSpec): Record<string, string> {
  const { lr, min_lr, warmup, weight_decay, clip, memory_update_cost } = spec.train;
  const { annotations_file: _annotations, captions_file: _captions, image_dir: _images, text_data_path: _text, ...data } = spec.data;
  const fields = [...Object.entries({ lr, min_lr, warmup, weight_decay, clip, memory_update_cost }).map(([name, value]) => [`train.${name}`, value]), ...Object.entries(data).map(([name, value]) => [`data.${name}`, value])];
  // How a caption file is split (holdOut): a change to it would make the same data another run.
  if (spec.data.type === 'annotations' || spec.data.type === 'coco') fields.push(['data.hold_out', 'whole images']);
  return Object.fromEntries(fields.map(([field, value]) => [field, JSON.stringify(value)]));
}

/** The optimizer state holds moments for the vision encoder only where it was trained: whether it was frozen is read from there. */
function requireSameFreezing(model: MultimodalMACNetwork, stateNames: string[], spec: JobSpec, dir: string): void {
  const vision = new Set(model.vision.namedParameters().map(([, variable]) => variable));
  const visionName = model.namedParameters().find(([, variable]) => vision.has(variable))?.[0];
  if (visionName === undefined) return;
  const wasFrozen = !stateNames.includes(`m.${visionName}`);
  if (wasFrozen !== spec.train.freeze_vision) throw new ResumeError(`cannot resume ${dir} exactly: train.freeze_vision was ${wasFrozen}, now ${spec.train.freeze_vision}`);
}

/**
 * A resumed run trains the checkpoint's model: the job must ask for that model, or it would silently
 * train another than the one it names.
 */
async function requireSameModel(saved: MultimodalMACConfig, spec: JobSpec, dir: string): Promise<void> {
  const asked = resolveConfig(await jobModelOptions(spec, spec.base_checkpoint, SMALL_MODEL, dir));
  const differing = [
    ...differences(saved, asked, ['neuralMemoryKwargs']),
    ...differences(saved.neuralMemoryKwargs, asked.neuralMemoryKwargs).map(([option, ...values]) => [`neuralMemoryKwargs.${option}`, ...values]),
  ];
  if (differing.length === 0) return;
  const listed = differing.map(([option, before, after]) => `${option} was ${before}, now ${after}`).join('; ');
  throw new ResumeError(`cannot resume ${dir}: it holds another model than the job asks for (${listed})`);
}

/** [option, saved value, asked value] of each option whose values differ, values as JSON. */
function differences<T extends object>(saved: T, asked: T, skip: string[] = []): [string, string, string][] {
  return Object.keys(asked).flatMap((option) => {
    if (skip.includes(option)) return [];
    const [before, after] = [saved, asked].map((config) => JSON.stringify((config as Record<string, unknown>)[option]));
    return before === after ? [] : [[option, before!, after!]];
  });
}
