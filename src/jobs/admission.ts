/**
 * What a job must pass before it is queued, whichever job system queues it: its data paths (readable,
 * inside DATA_DIR, none of the server's own files) and its estimated memory against the limits.
 */
import { SMALL_MODEL } from '../training/presets.ts';
import { estimateJobMemory, formatBytes, type MemoryEstimate } from '../training/memory.ts';
import { jobModelOptions, resolveJobPaths } from '../training/resolve.ts';
import { SpecError, type JobSpec } from '../training/spec.ts';

export interface MemoryLimits {
  /** Largest estimated memory of a job, all its workers together. Default: no limit. */
  maxJobMemoryBytes?: number;
  /** Largest estimated memory of one worker thread (a WebAssembly heap on the wasm backend). Default: no limit. */
  maxReplicaBytes?: number;
}

export interface PreparedJob {
  /** The spec with its paths absolute and checked. */
  resolved: JobSpec;
  estimate: MemoryEstimate;
}

/**
 * The job's paths resolved inside `dataDir` (DataPathError names a bad one) and its memory estimate;
 * `resumeFrom`, the checkpoint a resumed job continues (see resolveJobPaths).
 */
export async function prepareJob(spec: JobSpec, dataDir: string, reserved: readonly string[], resumeFrom?: string): Promise<PreparedJob> {
  const resolved = await resolveJobPaths(spec, dataDir, reserved, resumeFrom);
  return { resolved, estimate: estimateJobMemory(spec, await jobModelOptions(resolved, spec.base_checkpoint, SMALL_MODEL, resumeFrom)) };
}

/** SpecError naming the field to change when the estimate is over a limit. */
export function requireMemory(spec: JobSpec, estimate: MemoryEstimate, limits: MemoryLimits): void {
  const total = limits.maxJobMemoryBytes ?? Infinity;
  const perReplica = limits.maxReplicaBytes ?? Infinity;
  const overTotal = estimate.totalBytes > total;
  if (!overTotal && estimate.replicaBytes <= perReplica) return;
  const limit = overTotal ? `MAX_JOB_MEMORY_BYTES (${formatBytes(total)})` : `the ${formatBytes(perReplica)} a WebAssembly worker can hold`;
  const need = overTotal ? estimate.totalBytes : estimate.replicaBytes;
  const parametersAlone = estimate.parameterBytes * (overTotal ? estimate.replicas : 1) > (overTotal ? total : perReplica);
  const field = parametersAlone ? (spec.base_checkpoint ? 'base_checkpoint' : 'model') : estimate.stage === 'vision' ? 'vision_pretraining.batch_size' : 'train.batch_size';
  throw new SpecError(field, `${field}: the job would need about ${formatBytes(need)}, more than ${limit}: ${describeEstimate(estimate)}; ${parametersAlone ? 'choose a smaller model' : `lower ${field} (train.grad_accum keeps the batch the optimizer sees) or data.max_tokens`}`);
}

/** The sizes behind an estimate, for messages. */
export function describeEstimate(e: MemoryEstimate): string {
  const workers = e.replicas > 1 ? ` in each of ${e.replicas} workers` : '';
  return `${e.parameters.toLocaleString('en')} parameters x 4 bytes x (weights, gradients and AdamW's two moments) = ${formatBytes(e.parameterBytes)}${workers}, plus about ${formatBytes(e.activationBytes)} of activations for one batch`;
}
