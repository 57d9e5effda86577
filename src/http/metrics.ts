/**
 * Prometheus metrics (GET /metrics), on a registry of their own so that several apps in one process
 * (tests) do not collide. Gauges that describe the pool are read from it at scrape time. On a replica
 * of a cluster every series carries its name (REPLICA_ID), so that the replicas add up in one query.
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { InferencePool } from '../inference/pool.ts';

// Seconds. Time to first token spans queueing and image encoding; per-token latency is one decode step.
const TTFT_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
const TOKEN_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1];

export class Metrics {
  readonly registry = new Registry();
  readonly requests: Counter<'route' | 'method' | 'status'>;
  readonly tokens: Counter;
  readonly timeToFirstToken: Histogram;
  readonly tokenLatency: Histogram;

  constructor(pool: InferencePool, replica?: string) {
    if (replica !== undefined) this.registry.setDefaultLabels({ replica });
    const registers = [this.registry];
    this.requests = new Counter({ name: 'http_requests_total', help: 'HTTP requests by route pattern, method and status', labelNames: ['route', 'method', 'status'], registers });
    this.tokens = new Counter({ name: 'generated_tokens_total', help: 'Tokens generated, over all requests', registers });
    this.timeToFirstToken = new Histogram({ name: 'time_to_first_token_seconds', help: 'From request arrival to the first generated token', buckets: TTFT_BUCKETS, registers });
    this.tokenLatency = new Histogram({ name: 'token_latency_seconds', help: 'Between consecutive tokens of one generation', buckets: TOKEN_BUCKETS, registers });
    new Counter({
      name: 'prompt_tokens_read_total',
      help: 'Prompt tokens read by the inference workers, counted as each generation ends (also one stopped during its prompt)',
      registers,
      collect() {
        this.reset();
        this.inc(pool.stats().promptTokensRead);
      },
    });
    new Counter({
      name: 'inference_batches_total',
      help: 'Batches the inference workers started (a batch runs generations together, and others join it while it runs)',
      registers,
      collect() {
        this.reset();
        this.inc(pool.stats().batchesStarted);
      },
    });
    new Counter({
      name: 'inference_batched_generations_total',
      help: 'Generations started, each in a batch: over inference_batches_total, the generations a batch served',
      registers,
      collect() {
        this.reset();
        this.inc(pool.stats().batchedGenerations);
      },
    });
    new Counter({
      name: 'inference_joined_generations_total',
      help: 'Generations sent to a worker while its batch ran, to join it (INFERENCE_JOIN)',
      registers,
      collect() {
        this.reset();
        this.inc(pool.stats().joinedGenerations);
      },
    });
    new Gauge({
      name: 'inference_queue_depth',
      help: 'Generations waiting for a worker',
      registers,
      collect() {
        this.set(pool.stats().queued);
      },
    });
    new Gauge({
      name: 'inference_streams',
      help: 'Admitted generations whose answer has not ended: running, queued, preparing, or written to a client yet to read it (those running, queued and preparing are bounded by MAX_CONCURRENT_STREAMS)',
      registers,
      collect() {
        this.set(pool.stats().streams);
      },
    });
    new Gauge({
      name: 'inference_worker_live_tensors',
      help: 'tf.memory().numTensors of each inference worker after its last job',
      labelNames: ['worker'],
      registers,
      collect() {
        this.reset();
        for (const worker of pool.stats().workers) this.set({ worker: String(worker.id) }, worker.liveTensors);
      },
    });
    new Gauge({
      name: 'inference_worker_baseline_tensors',
      help: 'tf.memory().numTensors of each inference worker right after its model loaded',
      labelNames: ['worker'],
      registers,
      collect() {
        this.reset();
        for (const worker of pool.stats().workers) this.set({ worker: String(worker.id) }, worker.baselineTensors);
      },
    });
    new Gauge({
      name: 'inference_backend_info',
      help: 'The compute backend of the inference workers (value 1)',
      labelNames: ['backend', 'tf_backend', 'simd'],
      registers,
      collect() {
        const { backend } = pool.model;
        this.reset();
        this.set({ backend: backend.name, tf_backend: backend.tfBackend, simd: String(backend.simd) }, 1);
      },
    });
  }
}
