/**
 * A replica that lives in a worker thread (workers/gradient-worker.ts), with its own TensorFlow.js
 * backend: the data-parallel half of training. Calls are request/response messages; a worker that
 * dies fails every pending call with its reason.
 */
import type { GradientList, ResumePoint, ShardGradients, TrainerState } from './replica.ts';
import type { JobSpec } from './spec.ts';
import type { ReplicaHandle } from './trainer.ts';
import { backendWorkerEnv, parseThreadsSetting, threadsPerInstance } from '../backend/threads.ts';

/** A call to the worker's replica: one message type per Replica method, numbered for its answer. */
export type ReplicaRequest = { id: number } & (
  | { type: 'init'; spec: JobSpec; resumeFrom: string | undefined }
  | { type: 'gradients'; step: number; shard: number; shards: number }
  | { type: 'apply'; grads: GradientList; lr: number }
  | { type: 'evalLoss' }
  | { type: 'save'; dir: string; trainer: TrainerState }
);

/** What each call resolves to: `init` to where the replica resumed. */
export interface ReplicaResults {
  init: ResumePoint;
  gradients: ShardGradients;
  apply: void;
  evalLoss: number | null;
  save: void;
}

/** An error keeps its name and code across the thread (a ResumeError, an ENOSPC), for whoever tells the user. */
export type ReplicaResponse = { id: number; type: 'result'; result: ReplicaResults[keyof ReplicaResults] } | { id: number; type: 'error'; message: string; name: string; code?: string };

/** A request without its number, as the caller writes it. */
type Call = ReplicaRequest extends infer R ? (R extends { id: number } ? Omit<R, 'id'> : never) : never;

const WORKER_URL = new URL('../../workers/gradient-worker.ts', import.meta.url).href;

export class RemoteReplica implements ReplicaHandle {
  private readonly worker: Worker;
  private readonly pending = new Map<number, { resolve: (value: ReplicaResults[keyof ReplicaResults]) => void; reject: (error: Error) => void }>();
  private nextId = 0;
  private failure: Error | null = null;

  /** `replicas`: how many run side by side, among which MAC_THREADS=auto shares the cores. */
  constructor(replicas: number) {
    const threads = threadsPerInstance(parseThreadsSetting(process.env.MAC_THREADS), replicas);
    this.worker = new Worker(WORKER_URL, { env: backendWorkerEnv(threads) });
    this.worker.onmessage = ({ data }: MessageEvent<ReplicaResponse>) => {
      const call = this.pending.get(data.id);
      this.pending.delete(data.id);
      if (data.type === 'error') call?.reject(Object.assign(new Error(data.message), { name: data.name, ...(data.code !== undefined && { code: data.code }) }));
      else call?.resolve(data.result);
    };
    this.worker.onerror = (event) => this.fail(new Error(`gradient worker failed: ${event.message}`));
    this.worker.addEventListener('close', () => this.fail(new Error('gradient worker exited')));
  }

  /** Builds the worker's replica; it resolves to where it resumed. */
  init(spec: JobSpec, resumeFrom: string | undefined): Promise<ResumePoint> {
    return this.call({ type: 'init', spec, resumeFrom });
  }

  gradients(step: number, shard: number, shards: number): Promise<ShardGradients> {
    return this.call({ type: 'gradients', step, shard, shards });
  }

  apply(grads: GradientList, lr: number): Promise<void> {
    return this.call({ type: 'apply', grads, lr });
  }

  evalLoss(): Promise<number | null> {
    return this.call({ type: 'evalLoss' });
  }

  save(dir: string, trainer: TrainerState): Promise<void> {
    return this.call({ type: 'save', dir, trainer });
  }

  terminate(): void {
    this.worker.terminate();
  }

  private call<C extends Call>(request: C): Promise<ReplicaResults[C['type']]> {
    if (this.failure) return Promise.reject(this.failure);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      // The worker answers a request of type K with ReplicaResults[K] (workers/gradient-worker.ts).
      this.pending.set(id, { resolve: resolve as (value: ReplicaResults[keyof ReplicaResults]) => void, reject });
      this.worker.postMessage({ id, ...request } as ReplicaRequest);
    });
  }

  private fail(error: Error): void {
    this.failure ??= error;
    for (const call of this.pending.values()) call.reject(this.failure);
    this.pending.clear();
  }
}
