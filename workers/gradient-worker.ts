/**
 * A data-parallel training replica in its own thread and TensorFlow.js backend
 * (src/training/remote-replica.ts is the other end). Gradients go back as transferred buffers.
 */
import { selectBackend } from '../src/backend/select.ts';
import type { ReplicaRequest, ReplicaResponse, ReplicaResults } from '../src/training/remote-replica.ts';
import { Replica } from '../src/training/replica.ts';

declare const self: Worker;

// Replicas train in float32 whatever serving multiplies in (src/backend/bfloat16.ts).
const backend = selectBackend({ matmulPrecision: 'float32' });
let replica: Replica | undefined;

type Answer = { result: ReplicaResults[keyof ReplicaResults]; transfer?: Transferable[] };

async function handle(request: ReplicaRequest): Promise<Answer> {
  if (request.type === 'init') {
    await backend;
    replica = await Replica.create(request.spec, request.resumeFrom);
    return { result: replica.resumedAt };
  }
  if (!replica) throw new Error(`gradient worker: '${request.type}' before 'init'`);
  switch (request.type) {
    case 'gradients': {
      const result = await replica.gradients(request.step, request.shard, request.shards);
      return { result, transfer: result.grads.filter((g) => g !== null).map((g) => g.buffer as ArrayBuffer) };
    }
    case 'apply':
      return { result: replica.apply(request.grads, request.lr) };
    case 'evalLoss':
      return { result: await replica.evalLoss() };
    case 'save':
      return { result: await replica.save(request.dir, request.trainer) };
  }
}

function post(message: ReplicaResponse, transfer: Transferable[] = []): void {
  self.postMessage(message, transfer);
}

// Requests are served one at a time, in order: the coordinator never overlaps two on one replica.
let queue = Promise.resolve();
self.onmessage = ({ data }: MessageEvent<ReplicaRequest>) => {
  queue = queue.then(async () => {
    try {
      const { result, transfer } = await handle(data);
      post({ id: data.id, type: 'result', result }, transfer);
    } catch (error) {
      const { name = 'Error', message = String(error), code } = error instanceof Error ? (error as NodeJS.ErrnoException) : {};
      post({ id: data.id, type: 'error', message, name, ...(code !== undefined && { code }) });
    }
  });
};
