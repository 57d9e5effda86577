/**
 * `bun src/server.ts` (npm start): serves MODEL_DIR's checkpoint, or a freshly initialised untrained
 * model when it holds none yet, on PORT; drains on SIGTERM and exits 0. startServer() is the same
 * server for tests, on any port.
 */
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Server } from 'bun';
import { createApp } from './app.ts';
import { describeBackend } from './backend.ts';
import { loadServerConfig, SMALL_MODEL, type ServerConfig } from './config.ts';
import { InferencePool } from './inference/pool.ts';
import { TrainingScheduler } from './jobs/scheduler.ts';
import type { ModelSource } from './inference/protocol.ts';
import { WASM_HEAP_BYTES } from './training/memory.ts';

export interface RunningServer {
  server: Server<unknown>;
  pool: InferencePool;
  url: string;
  /** Stops accepting, lets running streams finish for up to shutdownTimeoutMs, then stops the workers. */
  shutdown(): Promise<void>;
}

export async function startServer(config: ServerConfig, log: (line: string) => void = console.log): Promise<RunningServer> {
  const source = modelSource(config.modelDir, log);
  const pool = await InferencePool.start({ workers: config.inferenceWorkers, source, maxStreams: config.maxConcurrentStreams, maxImageBytes: config.maxUploadBytes });
  const model = pool.model;
  log(`${config.inferenceWorkers} inference worker(s) on ${describeBackend(model.backend)}`);
  log(`model '${model.id}': ${model.parameterCount.toLocaleString('en')} parameters${model.untrained ? ' (untrained)' : ''}`);
  // Training runs in its own worker thread; `activate: true` swaps its checkpoint into the pool.
  const training = new TrainingScheduler({
    dataDir: config.dataDir,
    onActivate: (dir) => pool.loadModel(dir),
    maxQueuedJobs: config.maxQueuedJobs,
    maxJobMemoryBytes: config.maxJobMemoryBytes,
    // Each training thread is a WebAssembly instance of its own, whose heap cannot grow past 4 GiB.
    maxReplicaBytes: model.backend.name === 'wasm' ? WASM_HEAP_BYTES : undefined,
  });
  const app = createApp({ pool, config, training });
  const server = Bun.serve({
    port: config.port,
    hostname: config.host,
    fetch: app.fetch,
    // Seconds without traffic before Bun closes a connection: its maximum. A JSON-mode answer sends
    // nothing until its last token, which for a long answer on a large model takes minutes; SSE
    // streams stay busy anyway with their heartbeat.
    idleTimeout: 255,
  });
  const url = `http://${config.host}:${server.port}`;
  log(`listening on ${url}`);

  let stopping: Promise<void> | undefined;
  // First the training worker: a job still running is left as such in the store, and the next start
  // marks it interrupted, to resume; closing also ends the streams that follow its events.
  const shutdown = () => {
    if (!stopping) {
      training.close();
      stopping = drain(server, pool, config.shutdownTimeoutMs, log);
    }
    return stopping;
  };
  return { server, pool, url, shutdown };
}

/** The checkpoint in `dir`, or the untrained default when the folder has no config.json yet. */
function modelSource(dir: string, log: (line: string) => void): ModelSource {
  if (existsSync(join(dir, 'config.json'))) return { checkpoint: resolve(dir) };
  log(`no checkpoint in ${dir} (no config.json): serving a freshly initialised, UNTRAINED model; its text is noise until trained`);
  return { options: SMALL_MODEL };
}

async function drain(server: Server<unknown>, pool: InferencePool, timeoutMs: number, log: (line: string) => void): Promise<void> {
  log(`shutting down: no new requests; waiting up to ${timeoutMs} ms for ${pool.stats().streams} stream(s)`);
  pool.stopAdmitting();
  const stopped = server.stop(false);
  if (!(await settlesWithin(stopped, timeoutMs))) {
    log(`shutdown: ${pool.stats().streams} stream(s) still running after ${timeoutMs} ms; ending them`);
    // Their streams end with an error event; a moment to flush it before the sockets close.
    await pool.close();
    if (!(await settlesWithin(stopped, 1000))) await server.stop(true);
  }
  await pool.close();
  log('shut down');
}

async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
  const settled = await Promise.race([promise.then(() => true), timeout]);
  clearTimeout(timer);
  return settled;
}

async function main(): Promise<void> {
  const running = await startServer(loadServerConfig());
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.once(signal, () => {
      void running.shutdown().then(() => process.exit(0));
    });
  }
}

if (import.meta.main) {
  main().catch((error: Error) => {
    // A bad setting or checkpoint is the operator's to fix: its message is the whole story.
    console.error(`startup failed: ${error.message}`);
    process.exit(1);
  });
}
