/**
 * The messages between the inference pool (main thread) and an inference worker. Types only: both
 * sides import them, and structured clone carries them (images as transferred Float32Arrays).
 */
import type { MultimodalMACOptions } from '../../model/config.ts';
import type { FinishReason } from '../../model/generate.ts';
import type { SamplingOptions } from '../../model/sampling.ts';
import type { BackendInfo } from '../backend/select.ts';
import type { TokenLogprob } from './logprobs.ts';

/** A checkpoint folder, or the options of a freshly initialised model. */
export type ModelSource = { checkpoint: string } | { options: MultimodalMACOptions };

/** What model.generate() takes, with the images as pixels instead of tensors. */
export interface GenerationJob extends SamplingOptions {
  prompt: number[];
  /** Each image as normalized [3, S, S] pixels, flattened; S is the served model's imageSize. */
  images: Float32Array[];
  /** Index in the prompt of each image's placeholder (one each; the worker widens them to the model's slots). */
  imagePositions: number[];
  maxLength: number;
  seed?: number;
  stop: string[];
  /** When set, each token comes with its log-probability and this many alternatives (src/inference/logprobs.ts). */
  logprobs?: number;
  /** How its images were decoded: the pool sets it from its Admission's model, for the worker to check against its own. */
  decodedFor?: LoadedModelInfo['image'];
}

/** A job as the pool sends it: its id, for the messages about it. */
export interface NumberedJob {
  jobId: number;
  job: GenerationJob;
}

export type ToWorker =
  | { type: 'load'; source: ModelSource }
  /**
   * Jobs for the worker's batch (model/generate.ts GenerationBatch): they start one, or join the one
   * running. Those of one message share their images' tensors. progressMs: the least time between
   * two progress messages while the prompt is read; maxRows: the most generations that decode together.
   */
  | { type: 'generate'; jobs: NumberedJob[]; progressMs: number; maxRows: number }
  /** Stops the job within one token; it then finishes with finishReason 'aborted'. */
  | { type: 'abort'; jobId: number };

export interface LoadedModelInfo {
  /** The resolved constructor options, as a checkpoint's config.json holds them. */
  config: Record<string, unknown>;
  parameterCount: number;
  /** What the main thread needs to decode images for this model. */
  image: { imageSize: number; mean: readonly [number, number, number]; std: readonly [number, number, number]; resize: 'fill' | 'cover' | 'contain' };
}

export type FromWorker =
  | { type: 'loaded'; backend: BackendInfo; model: LoadedModelInfo; numTensors: number }
  | { type: 'load-failed'; message: string }
  /** The prompt's reading, at most once per progressMs; none for a prompt read faster than that. */
  | { type: 'progress'; jobId: number; tokensRead: number; promptTokens: number }
  | { type: 'token'; jobId: number; tokenId: number; text: string; logprob?: TokenLogprob }
  /**
   * encodeMs: from the job's start to its first token: image encoding and prompt prefill.
   * promptTokensRead (here and on failure): how much of the prompt was read before the job ended.
   */
  | { type: 'finished'; jobId: number; finishReason: FinishReason; tokens: number; encodeMs: number; promptTokensRead: number }
  | { type: 'failed'; jobId: number; message: string; cause: FailureCause; promptTokensRead: number }
  /** Whether joins pay for the generations the worker has seen, when that changes (GenerationBatch's onJoins). */
  | { type: 'joins'; open: boolean }
  /**
   * The batch ended (each of its jobs finished or failed) and all it allocated is disposed.
   * received: the jobs the worker had received by then; where the pool has sent more, they started the next batch.
   */
  | { type: 'idle'; numTensors: number; received: number };

/**
 * Why a job failed: a generate() option at fault (named); a model swap met on the way (the request was
 * fine: sent again, it will run); the model's numbers overflowed on this input (model/generate.ts,
 * NumericOverflowError); or a fault.
 */
export type FailureCause = { kind: 'invalid'; field: string } | { kind: 'model_changed' } | { kind: 'overflow' } | { kind: 'fault' };
