/**
 * Runs one training job in the calling thread: builds its replicas (here, or one per data-parallel
 * worker thread), restores them when resuming, and drives the loop. The CLI calls this directly; the
 * server calls it inside workers/training-worker.ts, off the HTTP thread.
 */
import { RemoteReplica } from './remote-replica.ts';
import { Replica } from './replica.ts';
import type { JobSpec } from './spec.ts';
import { trainLoop, type TrainResult, type TrainingEvent } from './trainer.ts';

export interface RunOptions {
  outDir: string;
  /** Checkpoint to continue from (it must hold trainer.json and optimizer.safetensors). */
  resumeFrom?: string;
  onEvent: (event: TrainingEvent) => void;
  shouldStop?: () => boolean;
}

/** The spec's paths must be absolute and checked (see resolveJobPaths). */
export async function runTraining(spec: JobSpec, options: RunOptions): Promise<TrainResult> {
  const { outDir, resumeFrom, onEvent, shouldStop } = options;
  if (spec.train.workers === 1) {
    const replica = await Replica.create(spec, resumeFrom);
    try {
      return await trainLoop([replica], { train: spec.train, outDir, startStep: replica.startStep, onEvent, shouldStop });
    } finally {
      replica.dispose();
    }
  }
  const replicas = Array.from({ length: spec.train.workers }, () => new RemoteReplica());
  try {
    const [startStep] = await Promise.all(replicas.map((replica) => replica.init(spec, resumeFrom)));
    return await trainLoop(replicas, { train: spec.train, outDir, startStep: startStep!, onEvent, shouldStop });
  } finally {
    for (const replica of replicas) replica.terminate();
  }
}
