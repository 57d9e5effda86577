/**
 * One training job off the HTTP thread (src/jobs/training-thread.ts is the other end): it runs the job
 * and posts its events; a `cancel` message stops it between two steps, after a checkpoint; an
 * `abandon` message ends it there, writing nothing more.
 */
import { selectBackend } from '../src/backend/select.ts';
import { runTraining } from '../src/training/run.ts';
import type { TrainingWorkerRequest, TrainingWorkerMessage } from '../src/jobs/protocol.ts';

declare const self: Worker;

let cancelled = false;
let abandoned = false;
const post = (message: TrainingWorkerMessage) => self.postMessage(message);

self.onmessage = async ({ data }: MessageEvent<TrainingWorkerRequest>) => {
  if (data.type === 'cancel') {
    cancelled = true;
    return;
  }
  if (data.type === 'abandon') {
    abandoned = true;
    return;
  }
  try {
    await selectBackend({ matmulPrecision: 'float32' });
    const result = await runTraining(data.spec, {
      outDir: data.outDir,
      resumeFrom: data.resumeFrom,
      onEvent: post,
      shouldStop: () => cancelled,
      shouldAbandon: () => abandoned,
    });
    post({ type: 'finished', result });
  } catch (error) {
    post({ type: 'failed', message: error instanceof Error ? error.message : String(error) });
  }
};
