/**
 * Runs one training job in the calling thread: vision pretraining first if the job has it, then
 * captioning: builds its replicas (here, or one per data-parallel worker thread), restores them when
 * resuming, and drives the loop. The CLI calls this directly; the server calls it inside
 * workers/training-worker.ts, off the HTTP thread.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { removeInterruptedSaves, saveCheckpoint } from '../../model/checkpoint.ts';
import { PRETRAINED_DIR } from './checkpoint-folders.ts';
import { RemoteReplica } from './remote-replica.ts';
import { initialModel, Replica } from './replica.ts';
import type { JobSpec } from './spec.ts';
import type { TrainingEvent } from './events.ts';
import { endIfAbandoned, trainLoop, type TrainResult } from './trainer.ts';
import { pretrainVision } from './vision-pretraining.ts';

export interface RunOptions {
  outDir: string;
  /** Checkpoint to continue from (it must hold trainer.json and optimizer.safetensors). */
  resumeFrom?: string;
  onEvent: (event: TrainingEvent) => void;
  shouldStop?: () => boolean;
  shouldAbandon?: () => boolean;
}

/** Beside it: what produced it, so that a restarted run skips a finished pretraining of the same job. */
const PRETRAINING_RECORD = 'pretraining.json';

/** The spec's paths must be absolute and checked (see resolveJobPaths). */
export async function runTraining(spec: JobSpec, options: RunOptions): Promise<TrainResult> {
  // This run is the out folder's only writer from here on: what an earlier one's cut saves left goes.
  await removeInterruptedSaves(options.outDir);
  // A resumed caption stage already holds the pretrained encoder.
  const captioning = spec.vision_pretraining && !options.resumeFrom ? await afterVisionPretraining(spec, options) : spec;
  if (!captioning) return { status: 'cancelled', step: 0 };
  const { outDir, resumeFrom, onEvent, shouldStop, shouldAbandon } = options;
  if (spec.train.workers === 1) {
    const replica = await Replica.create(captioning, resumeFrom);
    try {
      return await trainLoop([replica], { train: spec.train, outDir, resumedAt: replica.resumedAt, resumedFrom: resumeFrom, onEvent, shouldStop, shouldAbandon });
    } finally {
      replica.dispose();
    }
  }
  const replicas = Array.from({ length: spec.train.workers }, () => new RemoteReplica(spec.train.workers));
  try {
    const [resumedAt] = await Promise.all(replicas.map((replica) => replica.init(captioning, resumeFrom)));
    return await trainLoop(replicas, { train: spec.train, outDir, resumedAt: resumedAt!, resumedFrom: resumeFrom, onEvent, shouldStop, shouldAbandon });
  } finally {
    for (const replica of replicas) replica.terminate();
  }
}

/**
 * Pretrains the job's model's vision encoder (unless this out folder holds the result of the same
 * pretraining already) and returns the spec of the caption stage, which starts from that model;
 * null when stopped.
 */
async function afterVisionPretraining(spec: JobSpec, options: RunOptions): Promise<JobSpec | null> {
  const dir = join(options.outDir, PRETRAINED_DIR);
  const record = JSON.stringify({ model: spec.model ?? null, base_checkpoint: spec.base_checkpoint ?? null, seed: spec.train.seed, vision_pretraining: spec.vision_pretraining }, null, 2) + '\n';
  const previous = await readFile(join(dir, PRETRAINING_RECORD), 'utf8').catch(() => null);
  if (previous !== record) {
    const model = await initialModel(spec);
    try {
      const finished = await pretrainVision(model, spec.vision_pretraining!, { seed: spec.train.seed, onEvent: options.onEvent, shouldStop: options.shouldStop, shouldAbandon: options.shouldAbandon });
      if (!finished) return null;
      // Abandoned during the last step: the stage's model is a write too.
      endIfAbandoned(options.shouldAbandon);
      await saveCheckpoint(model, dir);
    } finally {
      model.dispose();
    }
    // Written last: a pretraining cut short before this line runs again.
    await writeFile(join(dir, PRETRAINING_RECORD), record);
  }
  const { model: _model, ...rest } = spec;
  return { ...rest, base_checkpoint: dir };
}
