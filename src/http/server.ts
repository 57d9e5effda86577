/**
 * `bun src/http/server.ts` (npm start): serves MODEL_DIR's checkpoint, or a freshly initialised untrained
 * model when it holds none yet, on PORT; drains on SIGTERM and exits 0. startServer() is the same
 * server for tests, on any port.
 *
 * The drain: the server keeps listening and answers new requests 503 (src/http/lifecycle.ts); running
 * streams finish, and a running training job stops at the end of its step with a checkpoint of it,
 * both within SHUTDOWN_TIMEOUT_MS; then the process exits.
 */
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Server } from 'bun';
import { createApp } from './app.ts';
import { describeBackend } from '../backend/select.ts';
import { loadServerConfig, type ServerConfig } from './settings.ts';
import { SMALL_MODEL } from '../training/presets.ts';
import { InferencePool } from '../inference/pool.ts';
import { RedisTrainingQueue } from '../jobs/redis-queue.ts';
import { TrainingScheduler } from '../jobs/scheduler.ts';
import { settlesWithin } from '../settles-within.ts';
import type { TrainingJobs } from '../jobs/training-jobs.ts';
import type { ModelSource } from '../inference/protocol.ts';
import { Lifecycle } from './lifecycle.ts';
import { WASM_HEAP_BYTES } from '../training/memory.ts';

export interface RunningServer {
  server: Server<unknown>;
  pool: InferencePool;
  url: string;
  /**
   * Refuses new requests (503), lets running streams finish and the training job checkpoint for up to
   * shutdownTimeoutMs, then stops the workers and the listener.
   */
  shutdown(): Promise<void>;
}

export async function startServer(config: ServerConfig, log: (line: string) => void = console.log): Promise<RunningServer> {
  const source = modelSource(config.modelDir, log);
  const pool = await InferencePool.start({
    workers: config.inferenceWorkers,
    threads: config.threads,
    source,
    maxStreams: config.maxConcurrentStreams,
    maxBatch: config.inferenceBatch,
    joinRunning: config.inferenceJoin,
    maxImageBytes: config.maxUploadBytes,
    prefillProgressMs: config.prefillProgressMs,
  });
  const model = pool.model;
  log(`${config.inferenceWorkers} inference worker(s) on ${describeBackend(model.backend)}`);
  log(`model '${model.id}': ${model.parameterCount.toLocaleString('en')} parameters${model.untrained ? ' (untrained)' : ''}`);
  const training = await trainingJobs(config, pool, model.backend.name === 'wasm', log);
  const lifecycle = new Lifecycle();
  const app = createApp({ pool, config, training, lifecycle });
  const server = Bun.serve({
    port: config.port,
    hostname: config.host,
    fetch: app.fetch,
    // Seconds without traffic before Bun closes a connection: its maximum. A JSON-mode answer sends
    // nothing until its last token, which for a long answer on a large model takes minutes; SSE
    // streams stay busy anyway with their heartbeat.
    idleTimeout: 255,
    // The routes refuse a body over their limit (MAX_UPLOAD_BYTES, up to 2 GiB) with a JSON 413 before
    // reading it; Bun's own limit, 128 MiB unless set, would refuse a body under MAX_UPLOAD_BYTES.
    maxRequestBodySize: Number.MAX_SAFE_INTEGER,
  });
  const url = `http://${config.host}:${server.port}`;
  log(`listening on ${url}`);

  let stopping: Promise<void> | undefined;
  const shutdown = () => {
    stopping ??= drain({ server, pool, training, lifecycle }, config.shutdownTimeoutMs, log);
    return stopping;
  };
  return { server, pool, url, shutdown };
}

/**
 * Training runs in worker threads; `activate: true` swaps a job's checkpoint into the pool. Jobs live
 * in SQLite in DATA_DIR (one process), or with REDIS_URL in Redis, shared by every replica.
 */
async function trainingJobs(config: ServerConfig, pool: InferencePool, wasm: boolean, log: (line: string) => void): Promise<TrainingJobs> {
  const common = {
    dataDir: config.dataDir,
    onActivate: (dir: string) => pool.loadModelInTurn(dir),
    maxQueuedJobs: config.maxQueuedJobs,
    maxJobMemoryBytes: config.maxJobMemoryBytes,
    // Each training thread is a WebAssembly instance of its own, whose heap cannot grow past 4 GiB.
    maxReplicaBytes: wasm ? WASM_HEAP_BYTES : undefined,
  };
  if (!config.redisUrl) return new TrainingScheduler(common);
  log(`replica ${config.replicaId}: training jobs on Redis (${config.trainingSlots} slot(s)), checkpoints in ${resolve(config.dataDir)}`);
  const queue = new RedisTrainingQueue({
    ...common,
    url: config.redisUrl,
    replicaId: config.replicaId,
    slots: config.trainingSlots,
    lockMs: config.trainingLockMs,
    maxAttempts: config.trainingMaxAttempts,
    log,
  });
  // Listening before Redis answers would refuse the first training requests; without Redis at all,
  // the replica still serves captions (and training once Redis comes).
  if (!(await settlesWithin(queue.ready(), REDIS_STARTUP_WAIT_MS))) log(`Redis does not answer yet: the training routes answer 503 until it does`);
  return queue;
}

const REDIS_STARTUP_WAIT_MS = 10_000;

/** The checkpoint in `dir`, or the untrained default when the folder has no config.json yet. */
function modelSource(dir: string, log: (line: string) => void): ModelSource {
  if (existsSync(join(dir, 'config.json'))) return { checkpoint: resolve(dir) };
  log(`no checkpoint in ${dir} (no config.json): serving a freshly initialised, UNTRAINED model; its text is noise until trained`);
  return { options: SMALL_MODEL };
}

interface Draining {
  server: Server<unknown>;
  pool: InferencePool;
  training: TrainingJobs;
  lifecycle: Lifecycle;
}

async function drain({ server, pool, training, lifecycle }: Draining, timeoutMs: number, log: (line: string) => void): Promise<void> {
  lifecycle.beginDrain(timeoutMs);
  pool.stopAdmitting();
  log(`shutting down: new requests get 503; waiting up to ${timeoutMs} ms for ${pool.stats().streams} stream(s) and the training job's checkpoint`);
  // The training job ends with its terminal event, which also ends the streams that follow it.
  const [, drained] = await Promise.all([training.shutdown(timeoutMs), holdsWithin(() => pool.stats().streams === 0, timeoutMs)]);
  if (!drained) {
    log(`shutdown: ${pool.stats().streams} stream(s) still running after ${timeoutMs} ms; ending them`);
    // Their streams end with an error event, flushed while the server stops below.
    await pool.close();
  }
  await pool.close();
  if (!(await settlesWithin(server.stop(false), 1000))) await server.stop(true);
  log('shut down');
}

/** Polls `condition` until it holds (true) or `ms` pass (false). */
async function holdsWithin(condition: () => boolean, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() >= deadline) return false;
    await Bun.sleep(20);
  }
  return true;
}

/**
 * The server as a process runs it: started, then drained on SIGTERM or SIGINT, and the process exits
 * 0. The signals are taken before the start: one that comes while the server starts, or as soon as it
 * says it listens, drains it once it has started, rather than ending the process outright.
 */
export async function serveUntilStopped(config: ServerConfig): Promise<void> {
  const started = startServer(config);
  const stop = (running: RunningServer) =>
    running.shutdown().then(
      () => process.exit(0),
      (error: Error) => {
        console.error(`shutdown failed: ${error.message}`);
        process.exit(1);
      },
    );
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    // A start that fails ends the process with its reason (the caller's), not here.
    process.once(signal, () => void started.then(stop, () => {}));
  }
  await started;
}

if (import.meta.main) {
  (async () => serveUntilStopped(loadServerConfig()))().catch((error: Error) => {
    // A bad setting or checkpoint is the operator's to fix: its message is the whole story.
    console.error(`startup failed: ${error.message}`);
    process.exit(1);
  });
}
