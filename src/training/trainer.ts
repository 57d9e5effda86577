/**
 * The training loop, over one or more replicas: each step, every replica computes the gradients of
 * its shard of the batch; they are summed in replica order (a fixed order, so that a resumed run adds
 * the same floats in the same order), averaged and clipped here, and applied by every replica.
 * Validation and checkpoints run on replica 0.
 */
import { join } from 'node:path';
import { clipByGlobalNorm, learningRateAt } from '../../model/optim.ts';
import { checkpointFolder } from './checkpoint-folders.ts';
import { StepTime, type TrainingEvent } from './events.ts';
import type { GradientList, ResumePoint, ShardGradients, TrainerState } from './replica.ts';
import type { TrainSpec } from './spec.ts';

/** A replica in this thread or behind a worker: the same calls, made asynchronous. */
export interface ReplicaHandle {
  gradients(step: number, shard: number, shards: number): Promise<ShardGradients>;
  apply(grads: GradientList, lr: number): Promise<void> | void;
  evalLoss(): Promise<number | null>;
  save(dir: string, trainer: TrainerState): Promise<void>;
}

export interface TrainOptions {
  train: TrainSpec;
  /** Folder of the step-NNNNNN checkpoint folders. */
  outDir: string;
  /** Where the replicas were restored; a new run starts from step 0. */
  resumedAt?: ResumePoint;
  /** The checkpoint they were restored from, if any. */
  resumedFrom?: string;
  onEvent: (event: TrainingEvent) => void;
  /**
   * Checked between steps: true stops the run (cancelled), after a checkpoint of the last step done,
   * so that resuming a cancelled or interrupted run loses no step.
   */
  shouldStop?: () => boolean;
  /**
   * Checked between steps, before shouldStop: true ends the run where it is, writing nothing more,
   * as if its process had died (RunAbandonedError). Nothing of the run is then in flight: no image
   * decoding, no checkpoint being written, and its thread can be ended (src/jobs/training-thread.ts).
   */
  shouldAbandon?: () => boolean;
}

/** A run ended between two steps by shouldAbandon: it wrote nothing more. */
export class RunAbandonedError extends Error {
  override name = 'RunAbandonedError';

  constructor() {
    super('the run was abandoned between two steps');
  }
}

/** Throws RunAbandonedError where the run was asked to end: before it renders, decodes or writes anything more. */
export function endIfAbandoned(shouldAbandon: (() => boolean) | undefined): void {
  if (shouldAbandon?.()) throw new RunAbandonedError();
}

export interface TrainResult {
  status: 'succeeded' | 'cancelled';
  step: number;
  /**
   * The checkpoint of the run's last step: the last one written or, when the run took no step (it
   * resumed at its end), the one it resumed from; none when it stopped before its first.
   */
  checkpoint?: string;
}

/**
 * Updates in a row whose gradients were not finite (and so were not applied) after which the run
 * fails: by then the weights themselves give NaN, and every later step would be skipped too.
 */
export const MAX_NONFINITE_STEPS = 10;

export async function trainLoop(replicas: ReplicaHandle[], options: TrainOptions): Promise<TrainResult> {
  const { train, outDir, onEvent } = options;
  const samplesPerStep = train.batch_size * train.grad_accum;
  let checkpoint = options.resumedFrom;
  const resumedAt = options.resumedAt ?? { step: 0, skippedImages: [] };
  let savedStep = resumedAt.step;
  const skipped = new Set(resumedAt.skippedImages);
  const save = async (step: number) => {
    checkpoint = join(outDir, checkpointFolder(step));
    await replicas[0]!.save(checkpoint, { step, steps: train.steps, seed: train.seed, workers: replicas.length, samples: step * samplesPerStep, skippedImages: [...skipped] });
    savedStep = step;
    onEvent({ type: 'checkpoint', step, path: checkpoint });
  };
  const stepTime = new StepTime();
  let nonFinite = 0;
  for (let step = resumedAt.step + 1; step <= train.steps; step++) {
    // A macrotask turn between steps lets a cancel message reach this thread.
    await new Promise((resolve) => setTimeout(resolve, 0));
    endIfAbandoned(options.shouldAbandon);
    if (options.shouldStop?.()) {
      if (step - 1 > savedStep) await save(step - 1);
      return { status: 'cancelled', step: step - 1, checkpoint };
    }
    const started = performance.now();
    const lr = learningRateAt(step, { lr: train.lr, warmup: train.warmup, steps: train.steps, minLr: train.min_lr });
    const shards = await Promise.all(replicas.map((replica, shard) => replica.gradients(step, shard, replicas.length)));
    const { grads, loss } = average(shards, train.grad_accum * replicas.length);
    for (const shard of shards) for (const key of shard.skippedImages) skipped.add(key);
    const norm = clipByGlobalNorm(grads, train.clip);
    // A non-finite norm would make every weight NaN: the update is skipped, and counted below.
    const applied = Number.isFinite(norm);
    if (applied) await Promise.all(replicas.map((replica) => replica.apply(grads, lr)));
    const stepSeconds = stepTime.add((performance.now() - started) / 1000);
    onEvent({
      type: 'progress',
      step,
      steps: train.steps,
      loss,
      lr,
      grad_norm: norm,
      samples_per_sec: samplesPerStep / stepSeconds,
      eta_s: (train.steps - step) * stepSeconds,
      skipped_images: skipped.size,
    });
    nonFinite = applied ? 0 : nonFinite + 1;
    if (nonFinite === MAX_NONFINITE_STEPS) {
      throw new Error(`training diverged: the gradients of the last ${nonFinite} updates (to step ${step}) were not finite (loss ${loss}); restart from an earlier checkpoint with a lower train.lr`);
    }
    const last = step === train.steps;
    if (last || (train.eval_every > 0 && step % train.eval_every === 0)) {
      // An abandoned run skips what is left of its step: the evaluation renders and decodes images too.
      endIfAbandoned(options.shouldAbandon);
      const evalLoss = await replicas[0]!.evalLoss();
      if (evalLoss !== null) onEvent({ type: 'eval', step, eval_loss: evalLoss });
    }
    if (last || (train.checkpoint_every > 0 && step % train.checkpoint_every === 0)) {
      // Nor does it write this step's checkpoint, which a replica that took the job over may be writing.
      endIfAbandoned(options.shouldAbandon);
      await save(step);
    }
  }
  return { status: 'succeeded', step: train.steps, checkpoint };
}

/** Sum in shard order, then one division: the same floats in the same order on every run. */
function average(shards: ShardGradients[], count: number): { grads: GradientList; loss: number } {
  const grads: GradientList = shards[0]!.grads.map((_, i) => {
    const parts = shards.map((s) => s.grads[i]).filter((g): g is Float32Array => g !== null && g !== undefined);
    if (parts.length === 0) return null;
    const sum = Float32Array.from(parts[0]!);
    for (const part of parts.slice(1)) for (let j = 0; j < sum.length; j++) sum[j]! += part[j]!;
    for (let j = 0; j < sum.length; j++) sum[j]! /= count;
    return sum;
  });
  return { grads, loss: shards.reduce((total, s) => total + s.loss, 0) / count };
}
