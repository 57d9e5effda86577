/**
 * What a training run reports while it runs (the job API's SSE events and the CLI's progress bar),
 * for both stages: vision pretraining (src/training/vision-pretraining.ts) and captioning
 * (src/training/trainer.ts). In a module of their own so that neither stage imports the other.
 */
import type { AttributeName } from '../data/attributes.ts';

export interface PretrainingProgress {
  step: number;
  steps: number;
  loss: number;
  lr: number;
  samples_per_sec: number;
  eta_s: number;
}

/**
 * Held-out accuracy: per attribute over the objects, and `tokens`, the share of image tokens rightly
 * told to show an object or background.
 */
export type PretrainingAccuracy = Record<AttributeName | 'tokens', number>;

export type PretrainingEvent = ({ type: 'pretraining' } & PretrainingProgress) | { type: 'pretraining_eval'; step: number; accuracy: PretrainingAccuracy };

export interface Progress {
  step: number;
  steps: number;
  loss: number;
  lr: number;
  grad_norm: number;
  samples_per_sec: number;
  eta_s: number;
  skipped_images: number;
}

/** What a run reports: the caption stage's steps, and those of vision pretraining if it has one. */
export type TrainingEvent =
  | ({ type: 'progress' } & Progress)
  | { type: 'eval'; step: number; eval_loss: number }
  | { type: 'checkpoint'; step: number; path: string }
  | PretrainingEvent;

/** The smoothed step time behind the samples/s and the ETA of progress events (each stage has one). */
export class StepTime {
  /** Weight of the newest step. */
  private static readonly SMOOTHING = 0.2;
  private seconds: number | null = null;

  /** Adds a step's duration; returns the smoothed one. */
  add(seconds: number): number {
    this.seconds = this.seconds === null ? seconds : StepTime.SMOOTHING * seconds + (1 - StepTime.SMOOTHING) * this.seconds;
    return this.seconds;
  }
}
