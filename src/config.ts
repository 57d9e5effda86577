/**
 * Server settings from the environment (DESIGN.md section 4), with their defaults, checked once at
 * startup so that a typo is a clear startup error rather than a surprise under load.
 */
import { availableParallelism, totalmem } from 'node:os';
import type { MultimodalMACOptions } from '../model/config.ts';
import { parseThreadsSetting, type ThreadsSetting } from './backend/threads.ts';

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
  /** Host names served besides the loopback ones (src/host-check.ts); '*' turns the check off. */
  allowedHosts: string[];
  /** Largest estimated memory of a training job (src/training/memory.ts); larger ones get 400. */
  maxJobMemoryBytes: number;
  /** Training jobs waiting to run at most; past it, 429. */
  maxQueuedJobs: number;
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
  return {
    port: integer(env, 'PORT', 3000, 0, 65535),
    host: text(env, 'HOST', '127.0.0.1'),
    modelDir: text(env, 'MODEL_DIR', 'models/default'),
    dataDir: text(env, 'DATA_DIR', './data'),
    apiKey: env.API_KEY || undefined,
    maxUploadBytes: integer(env, 'MAX_UPLOAD_BYTES', 20 * 1024 * 1024, 1024, 2 ** 31),
    maxConcurrentStreams: integer(env, 'MAX_CONCURRENT_STREAMS', 32, 1, 100_000),
    inferenceWorkers: integer(env, 'INFERENCE_WORKERS', availableParallelism(), 1, 256),
    threads: threadsSetting(env),
    heartbeatMs: integer(env, 'HEARTBEAT_MS', 15_000, 10, 3_600_000),
    shutdownTimeoutMs: integer(env, 'SHUTDOWN_TIMEOUT_MS', 30_000, 0, 3_600_000),
    maxPromptBytes: integer(env, 'MAX_PROMPT_BYTES', 1024 * 1024, 1, 2 ** 30),
    prefillProgressMs: integer(env, 'PREFILL_PROGRESS_MS', 250, 0, 3_600_000),
    maxTokensLimit: integer(env, 'MAX_TOKENS_LIMIT', 1024, 1, 1_000_000),
    allowedHosts: list(env, 'ALLOWED_HOSTS'),
    // Half the machine: the inference workers, the server and the rest of the system keep the other half.
    maxJobMemoryBytes: integer(env, 'MAX_JOB_MEMORY_BYTES', Math.floor(totalmem() / 2), 1, Number.MAX_SAFE_INTEGER),
    maxQueuedJobs: integer(env, 'MAX_QUEUED_JOBS', 16, 0, 100_000),
  };
}

function text(env: Record<string, string | undefined>, name: string, fallback: string): string {
  const value = env[name]?.trim();
  return value ? value : fallback;
}

/** A comma-separated list, blanks dropped. */
function list(env: Record<string, string | undefined>, name: string): string[] {
  return (env[name] ?? '').split(',').map((item) => item.trim()).filter((item) => item !== '');
}

function threadsSetting(env: Record<string, string | undefined>): ThreadsSetting {
  try {
    return parseThreadsSetting(env.MAC_THREADS);
  } catch (error) {
    throw new SettingsError((error as Error).message);
  }
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
