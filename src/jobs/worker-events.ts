/**
 * What a training worker's messages mean to a job, whichever job system records them: the change to
 * the job's row and the event added to its history, and the message a failure shows the client.
 */
import { checkpointStep } from '../training/checkpoint-folders.ts';
import type { MemoryEstimate } from '../training/memory.ts';
import type { TrainingEvent } from '../training/events.ts';
import { describeEstimate } from './admission.ts';
import type { Job, JobEventType, JobUpdate } from './store.ts';

/** The codes of a job's `error` events. */
export type JobErrorCode = 'training_failed' | 'activation_failed';

/** How a job ended, beside its status: what its row and its `done` event say. */
export interface JobEnd {
  /** Why it did not succeed. */
  reason?: string;
  /** The `error` event it repeats: why it failed, or why its checkpoint was not activated although it succeeded. */
  error?: { code: JobErrorCode; message: string };
  /** Whether its checkpoint was activated, for a job with `activate: true` that succeeded. */
  activated?: boolean;
}

/** A job row's `error`: why it did not succeed, else what went wrong although it did. */
export function rowError({ reason, error }: JobEnd): string | undefined {
  return reason ?? error?.message;
}

export interface JobRecord {
  update: JobUpdate;
  type: JobEventType;
  data: Record<string, unknown>;
}

// How WebAssembly, emscripten and the JavaScript engine word running out of memory. Bun's own
// wording, "Out of bounds memory access", came from a passkey batch of 2K-token examples whose
// activations outgrew the WASM heap (a failed allocation handed on as a bad pointer).
const OUT_OF_MEMORY = /Aborted\(|out of memory|\bOOM\b|allocation failed|Invalid (typed )?array length|Cannot enlarge memory|could not allocate|memory access out of bounds|out of bounds memory access/i;

/** The row update and event of a worker's training event; `relative` names a checkpoint as the API shows it. */
export function recordOf(message: TrainingEvent, relative: (path: string) => string): JobRecord {
  switch (message.type) {
    // The job's loss and eval loss are the caption stage's: the vision stage's loss is another quantity.
    case 'pretraining': {
      const { type: _type, ...data } = message;
      return { update: { stage: 'vision', vision_step: message.step, samples_per_sec: message.samples_per_sec, eta_s: message.eta_s }, type: 'pretraining', data };
    }
    case 'pretraining_eval': {
      const { type: _type, ...data } = message;
      return { update: {}, type: 'pretraining_eval', data };
    }
    case 'progress': {
      const { type: _type, ...data } = message;
      return { update: { stage: 'captions', step: message.step, loss: message.loss, samples_per_sec: message.samples_per_sec, eta_s: message.eta_s, skipped_images: message.skipped_images }, type: 'progress', data };
    }
    case 'eval':
      return { update: { eval_loss: message.eval_loss }, type: 'eval', data: { step: message.step, eval_loss: message.eval_loss } };
    case 'checkpoint': {
      const path = relative(message.path);
      return { update: { checkpoint: path }, type: 'checkpoint', data: { step: message.step, path } };
    }
  }
}

/** What the client is told of a failure: out of memory as such with the sizes; `scrub` hides server paths. */
export function failureMessage(jobId: string, error: string, estimate: MemoryEstimate | undefined, scrub: (text: string) => string): string {
  if (!OUT_OF_MEMORY.test(error)) return scrub(error);
  console.error(`training job ${jobId} ran out of memory: ${error}`);
  const sizes = estimate ? `: ${describeEstimate(estimate)}` : '';
  return `training ran out of memory${sizes}; lower train.batch_size or data.max_tokens, or choose a smaller model`;
}

/**
 * The step a stopped job stands at: its last checkpoint's, which a resume goes on from (0 without
 * one), not the last step it reported, which may be later when its run died before it stopped.
 */
export function stoppedStep(job: Pick<Job, 'checkpoint'>): number {
  return job.checkpoint === null ? 0 : checkpointStep(job.checkpoint);
}

/** Why a job cancelled after it started stands where it does, and what a resume does with it. */
export function cancelledReason(job: Pick<Job, 'checkpoint' | 'stage'>): string {
  if (job.checkpoint !== null) return `cancelled at step ${stoppedStep(job)}, after a checkpoint of it`;
  // Vision pretraining keeps nothing until it has finished.
  if (job.stage === 'vision') return 'cancelled during vision pretraining, which keeps no checkpoint before it ends; resume starts the pretraining over';
  return 'cancelled before its first checkpoint; resume starts it from step 1';
}
