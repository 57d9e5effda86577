/**
 * A data-parallel training replica in its own thread and TensorFlow.js backend
 * (src/training/remote-replica.ts is the other end). Gradients go back as transferred buffers.
 */
import { selectBackend } from '../src/backend/select.ts';
import type { ReplicaRequest, ReplicaResponse } from '../src/training/remote-replica.ts';
import { Replica } from '../src/training/replica.ts';

declare const self: Worker;

const backend = selectBackend();
let replica: Replica | undefined;

async function handle({ method, args }: ReplicaRequest): Promise<{ result: unknown; transfer?: Transferable[] }> {
  if (method === 'init') {
    await backend;
    replica = await Replica.create(...(args as Parameters<typeof Replica.create>));
    return { result: replica.startStep };
  }
  if (!replica) throw new Error(`gradient worker: '${method}' before 'init'`);
  switch (method) {
    case 'gradients': {
      const result = await replica.gradients(...(args as Parameters<Replica['gradients']>));
      return { result, transfer: result.grads.filter((g) => g !== null).map((g) => g.buffer as ArrayBuffer) };
    }
    case 'apply':
      return { result: replica.apply(...(args as Parameters<Replica['apply']>)) };
    case 'evalLoss':
      return { result: await replica.evalLoss() };
    case 'save':
      return { result: await replica.save(...(args as Parameters<Replica['save']>)) };
  }
}

// Requests are served one at a time, in order: the coordinator never overlaps two on one replica.
let queue = Promise.resolve();
self.onmessage = ({ data }: MessageEvent<ReplicaRequest>) => {
  queue = queue.then(async () => {
    try {
      const { result, transfer } = await handle(data);
      self.postMessage({ id: data.id, result } satisfies ReplicaResponse, transfer ?? []);
    } catch (error) {
      self.postMessage({ id: data.id, error: error instanceof Error ? error.message : String(error) } satisfies ReplicaResponse);
    }
  });
};
