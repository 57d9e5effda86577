/** Messages between src/jobs/training-thread.ts and workers/training-worker.ts. */
import type { JobSpec } from '../training/spec.ts';
import type { TrainingEvent } from '../training/events.ts';
import type { TrainResult } from '../training/trainer.ts';

export type TrainingWorkerRequest =
  | { type: 'start'; spec: JobSpec; outDir: string; resumeFrom?: string }
  | { type: 'cancel' }
  | { type: 'abandon' };

export type TrainingWorkerMessage = TrainingEvent | { type: 'finished'; result: TrainResult } | { type: 'failed'; message: string };
