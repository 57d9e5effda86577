/**
 * A replica that lives in a worker thread (workers/gradient-worker.ts), with its own TensorFlow.js
 * backend: the data-parallel half of training. Calls are request/response messages; a worker that
 * dies fails every pending call with its reason.
 */
import type { ApplyResult, GradientList, ShardGradients, TrainerState } from './replica.ts';
import type { JobSpec } from './spec.ts';
import type { ReplicaHandle } from './trainer.ts';
import { backendWorkerEnv, parseThreadsSetting, threadsPerInstance } from '../backend/threads.ts';

export interface ReplicaRequest {
  id: number;
  method: 'init' | 'gradients' | 'apply' | 'evalLoss' | 'save';
  args: unknown[];
}

export type ReplicaResponse = { id: number; result: unknown } | { id: number; error: string };

const WORKER_URL = new URL('../../workers/gradient-worker.ts', import.meta.url).href;

export class RemoteReplica implements ReplicaHandle {
  private readonly worker: Worker;
  private readonly pending = new Map<number, { resolve: (value: any) => void; reject: (error: Error) => void }>();
  private nextId = 0;
  private failure: Error | null = null;

  /** `replicas`: how many run side by side, among which MAC_THREADS=auto shares the cores. */
  constructor(replicas: number) {
    const threads = threadsPerInstance(parseThreadsSetting(process.env.MAC_THREADS), replicas);
    this.worker = new Worker(WORKER_URL, { env: backendWorkerEnv(threads) });
    this.worker.onmessage = ({ data }: MessageEvent<ReplicaResponse>) => {
      const call = this.pending.get(data.id);
      this.pending.delete(data.id);
      if ('error' in data) call?.reject(new Error(data.error));
      else call?.resolve(data.result);
    };
    this.worker.onerror = (event) => this.fail(new Error(`gradient worker failed: ${event.message}`));
    this.worker.addEventListener('close', () => this.fail(new Error('gradient worker exited')));
  }

  /** Builds the worker's replica; it resolves to the step it resumed at. */
  init(spec: JobSpec, resumeFrom: string | undefined): Promise<number> {
    return this.call('init', [spec, resumeFrom]);
  }

  gradients(step: number, shard: number, shards: number): Promise<ShardGradients> {
    return this.call('gradients', [step, shard, shards]);
  }

  apply(grads: GradientList, lr: number): Promise<ApplyResult> {
    return this.call('apply', [grads, lr]);
  }

  evalLoss(): Promise<number | null> {
    return this.call('evalLoss', []);
  }

  save(dir: string, trainer: TrainerState): Promise<void> {
    return this.call('save', [dir, trainer]);
  }

  terminate(): void {
    this.worker.terminate();
  }

  private call<T>(method: ReplicaRequest['method'], args: unknown[]): Promise<T> {
    if (this.failure) return Promise.reject(this.failure);
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ id, method, args } satisfies ReplicaRequest);
    });
  }

  private fail(error: Error): void {
    this.failure ??= error;
    for (const call of this.pending.values()) call.reject(this.failure);
    this.pending.clear();
  }
}
