/**
 * Server settings from the environment (DESIGN.md section 4), with their defaults, checked once at
 * startup so that a typo is a clear startup error rather than a surprise under load.
 */
import { availableParallelism, hostname, totalmem } from 'node:os';
import type { MultimodalMACOptions } from '../model/config.ts';

export interface ServerConfig {
  port: number;
  host: string;
  /** Checkpoint served at startup; when it holds none, a fresh untrained model is served. */
  modelDir: string;
  dataDir: string;
  /** When set, a bearer token required on training and model-changing routes. */
  apiKey: string | undefined;
  /** Largest request body, in bytes; larger uploads get 413 before the body is read. */
  maxUploadBytes: number;
  /** Generations running plus queued; past it, 429. */
  maxConcurrentStreams: number;
  inferenceWorkers: number;
  /** Interval of the SSE comment that keeps proxies and idle timers from closing a quiet stream. */
  heartbeatMs: number;
  /** On SIGTERM, how long running streams may take to finish before they are cut. */
  shutdownTimeoutMs: number;
  /** Longest prompt, in UTF-8 bytes (the model reads bytes); the body limit bounds it too. */
  maxPromptBytes: number;
  /** The least time between two progress events while a long prompt is read. */
  prefillProgressMs: number;
  /** Upper bound of max_tokens. */
  maxTokensLimit: number;
  /** Host names served besides the loopback ones (src/host-check.ts); '*' turns the check off. */
  allowedHosts: string[];
  /** Largest estimated memory of a training job (src/training/memory.ts); larger ones get 400. */
  maxJobMemoryBytes: number;
  /** Training jobs waiting to run at most; past it, 429. With REDIS_URL, for the whole cluster. */
  maxQueuedJobs: number;
  /** Set: training jobs are BullMQ jobs on this Redis, shared by every replica (docs/replicas.md). */
  redisUrl: string | undefined;
  /** With REDIS_URL: jobs this replica runs at once (0: it serves only). */
  trainingSlots: number;
  /** With REDIS_URL: how long a replica's hold on a running job lasts unrenewed; a dead replica's job is taken over after it. */
  trainingLockMs: number;
  /** With REDIS_URL: runs of a job that may start (the first, then one per takeover) before it fails. */
  trainingMaxAttempts: number;
  /** With REDIS_URL: this replica's name in metrics, /readyz, logs and job records. */
  replicaId: string;
}

/** A setting with a bad value; the message names the variable. */
export class SettingsError extends Error {
  override name = 'SettingsError';
}

/**
 * The small model: served (untrained) when MODEL_DIR holds no checkpoint yet, and trained when a job
 * names no model. Small enough to generate about 150 tokens/s on one WASM thread.
 */
export const SMALL_MODEL: MultimodalMACOptions = Object.freeze({
  imageSize: 32,
  patchSize: 8,
  visionDim: 64,
  visionDepth: 2,
  visionHeads: 4,
  visionMlpDim: 128,
  projectionDim: 128,
  textDim: 128,
  depth: 2,
  segmentLen: 16,
  heads: 4,
  dimHead: 32,
  visionDropout: 0,
  fusionDropout: 0,
});

export function loadServerConfig(env: Record<string, string | undefined> = process.env): ServerConfig {
  const redisUrl = env.REDIS_URL?.trim() || undefined;
  if (redisUrl && !/^rediss?:\/\//.test(redisUrl)) throw new SettingsError(`REDIS_URL must be a redis:// or rediss:// URL, got '${redisUrl}'`);
  return {
    port: integer(env, 'PORT', 3000, 0, 65535),
    host: text(env, 'HOST', '127.0.0.1'),
    modelDir: text(env, 'MODEL_DIR', 'models/default'),
    dataDir: text(env, 'DATA_DIR', './data'),
    apiKey: env.API_KEY || undefined,
    maxUploadBytes: integer(env, 'MAX_UPLOAD_BYTES', 20 * 1024 * 1024, 1024, 2 ** 31),
    maxConcurrentStreams: integer(env, 'MAX_CONCURRENT_STREAMS', 32, 1, 100_000),
    inferenceWorkers: integer(env, 'INFERENCE_WORKERS', availableParallelism(), 1, 256),
    heartbeatMs: integer(env, 'HEARTBEAT_MS', 15_000, 10, 3_600_000),
    shutdownTimeoutMs: integer(env, 'SHUTDOWN_TIMEOUT_MS', 30_000, 0, 3_600_000),
    maxPromptBytes: integer(env, 'MAX_PROMPT_BYTES', 1024 * 1024, 1, 2 ** 30),
    prefillProgressMs: integer(env, 'PREFILL_PROGRESS_MS', 250, 0, 3_600_000),
    maxTokensLimit: integer(env, 'MAX_TOKENS_LIMIT', 1024, 1, 1_000_000),
    allowedHosts: list(env, 'ALLOWED_HOSTS'),
    // Half the machine: the inference workers, the server and the rest of the system keep the other half.
    maxJobMemoryBytes: integer(env, 'MAX_JOB_MEMORY_BYTES', Math.floor(totalmem() / 2), 1, Number.MAX_SAFE_INTEGER),
    maxQueuedJobs: integer(env, 'MAX_QUEUED_JOBS', 16, 0, 100_000),
    redisUrl,
    trainingSlots: redisOnly(env, 'TRAINING_SLOTS', 1, 0, 64),
    trainingLockMs: redisOnly(env, 'TRAINING_LOCK_MS', 30_000, 200, 3_600_000),
    trainingMaxAttempts: redisOnly(env, 'TRAINING_MAX_ATTEMPTS', 3, 1, 100),
    replicaId: text(env, 'REPLICA_ID', `${hostname()}:${env.PORT?.trim() || 3000}`),
  };
}

/** A setting of the shared queue: it means nothing to one process, so a forgotten REDIS_URL does not pass silently. */
function redisOnly(env: Record<string, string | undefined>, name: string, fallback: number, min: number, max: number): number {
  if (env[name]?.trim() && !env.REDIS_URL?.trim()) throw new SettingsError(`${name} needs REDIS_URL: without it, one process runs one job at a time`);
  return integer(env, name, fallback, min, max);
}

function text(env: Record<string, string | undefined>, name: string, fallback: string): string {
  const value = env[name]?.trim();
  return value ? value : fallback;
}

/** A comma-separated list, blanks dropped. */
function list(env: Record<string, string | undefined>, name: string): string[] {
  return (env[name] ?? '').split(',').map((item) => item.trim()).filter((item) => item !== '');
}

function integer(env: Record<string, string | undefined>, name: string, fallback: number, min: number, max: number): number {
  const raw = env[name]?.trim();
  if (!raw) return fallback;
  const value = Number(raw);
  if (!/^\d+$/.test(raw) || value < min || value > max) {
    throw new SettingsError(`${name} must be a whole number in [${min}, ${max}], got '${env[name]}'`);
  }
  return value;
}
