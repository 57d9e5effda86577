/**
 * Server settings from the environment (DESIGN.md section 4), with their defaults, checked once at
 * startup so that a typo is a clear startup error rather than a surprise under load.
 */
import { availableParallelism, hostname, totalmem } from 'node:os';
import { z } from 'zod';
import { parseThreadsSetting, type ThreadsSetting } from '../backend/threads.ts';
import { failsWith, firstIssue } from '../schema/issues.ts';

export interface ServerConfig {
  port: number;
  host: string;
  /** Checkpoint served at startup; when it holds none, a fresh untrained model is served. */
  modelDir: string;
  dataDir: string;
  /** When set, a bearer token required on training and model-changing routes. */
  apiKey: string | undefined;
  /** Largest request body, in bytes; larger uploads get 413, before the body is read when its Content-Length tells. */
  maxUploadBytes: number;
  /** How long a request's body may take to arrive in full; past it, 408. */
  bodyTimeoutMs: number;
  /** Generations running plus queued; past it, 429. */
  maxConcurrentStreams: number;
  inferenceWorkers: number;
  /** Generations an inference worker runs at once, as one batch, when requests wait (src/inference/pool.ts). */
  inferenceBatch: number;
  /** Whether a request joins a worker's running batch, rather than wait for it to end (src/inference/pool.ts). */
  inferenceJoin: boolean;
  /** MAC_THREADS, checked here so that a bad value stops the server at startup (src/backend/threads.ts). */
  threads: ThreadsSetting;
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
  /** Host names served besides the loopback ones (src/http/host-check.ts); '*' turns the check off. */
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

/** Unset and blank are the same: the default. */
const given = (raw: unknown) => (typeof raw === 'string' && raw.trim() !== '' ? raw.trim() : undefined);

function text(fallback: string) {
  return z.preprocess(given, z.string().default(fallback));
}

/** A whole number in [min, max]. */
function integer(fallback: number, min: number, max: number) {
  const error = failsWith(() => `must be a whole number in [${min}, ${max}]`);
  return z.preprocess(given, z.string().regex(/^\d+$/, error).transform(Number).pipe(z.number().gte(min, error).lte(max, error)).default(fallback));
}

/** true or false (also 1 or 0). */
function flag(fallback: boolean) {
  const error = failsWith(() => 'must be true or false (or 1 or 0)');
  return z.preprocess(given, z.string().regex(/^(true|false|1|0)$/, error).transform((raw) => raw === 'true' || raw === '1').default(fallback));
}

/** A comma-separated list, blanks dropped. */
const list = z
  .string()
  .default('')
  .transform((raw) => raw.split(',').map((item) => item.trim()).filter((item) => item !== ''));

const settingsSchema = z.object({
  PORT: integer(3000, 0, 65535),
  HOST: text('127.0.0.1'),
  MODEL_DIR: text('models/default'),
  DATA_DIR: text('./data'),
  API_KEY: z.string().optional(),
  MAX_UPLOAD_BYTES: integer(20 * 1024 * 1024, 1024, 2 ** 31),
  // A 20 MB upload at 3 Mbit/s, or a client that stopped sending.
  BODY_TIMEOUT_MS: integer(60_000, 100, 3_600_000),
  MAX_CONCURRENT_STREAMS: integer(32, 1, 100_000),
  INFERENCE_WORKERS: integer(availableParallelism(), 1, 256),
  INFERENCE_BATCH: integer(8, 1, 256),
  INFERENCE_JOIN: flag(false),
  HEARTBEAT_MS: integer(15_000, 10, 3_600_000),
  SHUTDOWN_TIMEOUT_MS: integer(30_000, 0, 3_600_000),
  // A prompt's byte takes some 60 bytes of memory while it is read (a list of numbers, copied to
  // its worker): past 64 MiB, a prompt would need a machine's memory.
  MAX_PROMPT_BYTES: integer(1024 * 1024, 1, 64 * 1024 * 1024),
  PREFILL_PROGRESS_MS: integer(250, 0, 3_600_000),
  MAX_TOKENS_LIMIT: integer(1024, 1, 1_000_000),
  ALLOWED_HOSTS: list,
  // Half the machine: the inference workers, the server and the rest of the system keep the other half.
  MAX_JOB_MEMORY_BYTES: integer(Math.floor(totalmem() / 2), 1, Number.MAX_SAFE_INTEGER),
  // A job waits before it runs, however short the wait: 0 would refuse every one.
  MAX_QUEUED_JOBS: integer(16, 1, 100_000),
  REDIS_URL: z.preprocess(given, z.string().regex(/^rediss?:\/\//, 'must be a redis:// or rediss:// URL').refine(URL.canParse, 'must be a redis:// or rediss:// URL').optional()),
  TRAINING_SLOTS: integer(1, 0, 64),
  TRAINING_LOCK_MS: integer(30_000, 200, 3_600_000),
  TRAINING_MAX_ATTEMPTS: integer(3, 1, 100),
  REPLICA_ID: z.preprocess(given, z.string().optional()),
});

/** Settings of the shared queue: they mean nothing to one process, so a forgotten REDIS_URL does not pass silently. */
const REDIS_ONLY = ['TRAINING_SLOTS', 'TRAINING_LOCK_MS', 'TRAINING_MAX_ATTEMPTS'] as const;

export function loadServerConfig(env: Record<string, string | undefined> = process.env): ServerConfig {
  const result = settingsSchema.safeParse(env);
  if (!result.success) {
    const { field, message } = firstIssue(result.error);
    // A URL that did not parse may still hold a password: it is not echoed.
    const shown = field === 'REDIS_URL' ? 'a value that is not one' : `'${env[field]}'`;
    throw new SettingsError(`${field} ${message}, got ${shown}`);
  }
  const settings = result.data;
  const orphan = settings.REDIS_URL ? undefined : REDIS_ONLY.find((name) => given(env[name]) !== undefined);
  if (orphan) throw new SettingsError(`${orphan} needs REDIS_URL: without it, one process runs one job at a time`);
  let threads: ThreadsSetting;
  try {
    threads = parseThreadsSetting(env.MAC_THREADS);
  } catch (error) {
    throw new SettingsError((error as Error).message);
  }
  return {
    port: settings.PORT,
    host: settings.HOST,
    modelDir: settings.MODEL_DIR,
    dataDir: settings.DATA_DIR,
    apiKey: settings.API_KEY || undefined,
    maxUploadBytes: settings.MAX_UPLOAD_BYTES,
    bodyTimeoutMs: settings.BODY_TIMEOUT_MS,
    maxConcurrentStreams: settings.MAX_CONCURRENT_STREAMS,
    inferenceWorkers: settings.INFERENCE_WORKERS,
    inferenceBatch: settings.INFERENCE_BATCH,
    inferenceJoin: settings.INFERENCE_JOIN,
    threads,
    heartbeatMs: settings.HEARTBEAT_MS,
    shutdownTimeoutMs: settings.SHUTDOWN_TIMEOUT_MS,
    maxPromptBytes: settings.MAX_PROMPT_BYTES,
    prefillProgressMs: settings.PREFILL_PROGRESS_MS,
    maxTokensLimit: settings.MAX_TOKENS_LIMIT,
    allowedHosts: settings.ALLOWED_HOSTS,
    maxJobMemoryBytes: settings.MAX_JOB_MEMORY_BYTES,
    maxQueuedJobs: settings.MAX_QUEUED_JOBS,
    redisUrl: settings.REDIS_URL,
    trainingSlots: settings.TRAINING_SLOTS,
    trainingLockMs: settings.TRAINING_LOCK_MS,
    trainingMaxAttempts: settings.TRAINING_MAX_ATTEMPTS,
    replicaId: settings.REPLICA_ID ?? `${hostname()}:${settings.PORT}`,
  };
}
