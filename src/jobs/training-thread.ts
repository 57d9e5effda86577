/**
 * One training job in its own worker thread (workers/training-worker.ts), so that the HTTP thread only
 * relays its events. `ended` settles once with how the run ended: its loop finished (succeeded or
 * cancelled), it failed with a reason (an error, a crash, an exit), or it was ended from here.
 */
import type { TrainingEvent } from '../training/events.ts';
import type { TrainResult } from '../training/trainer.ts';
import type { TrainingWorkerMessage, TrainingWorkerRequest } from './protocol.ts';

const WORKER_URL = new URL('../../workers/training-worker.ts', import.meta.url).href;

export type ThreadEnd = { type: 'finished'; result: TrainResult } | { type: 'failed'; message: string } | { type: 'terminated' };

export class TrainingThread {
  readonly ended: Promise<ThreadEnd>;
  private readonly worker = new Worker(WORKER_URL);
  private settle: (end: ThreadEnd) => void = () => {};
  private settled = false;

  constructor(onEvent: (event: TrainingEvent) => void) {
    this.ended = new Promise((resolve) => (this.settle = resolve));
    this.worker.onmessage = ({ data }: MessageEvent<TrainingWorkerMessage>) => {
      if (this.settled) return;
      if (data.type === 'finished' || data.type === 'failed') this.end(data);
      else onEvent(data);
    };
    this.worker.onerror = (event) => this.end({ type: 'failed', message: `training worker crashed: ${event.message}` });
    this.worker.addEventListener('close', (event) => {
      const code = (event as CloseEvent & { code?: number }).code;
      this.end({ type: 'failed', message: `training worker exited unexpectedly${code === undefined ? '' : ` (code ${code})`}` });
    });
  }

  start(request: Extract<TrainingWorkerRequest, { type: 'start' }>): void {
    this.worker.postMessage(request);
  }

  /** Asks the run to stop at the end of its step, after a checkpoint of it. */
  cancel(): void {
    if (!this.settled) this.worker.postMessage({ type: 'cancel' } satisfies TrainingWorkerRequest);
  }

  /** Ends the thread where it is. */
  terminate(): void {
    this.end({ type: 'terminated' });
  }

  private end(end: ThreadEnd): void {
    if (this.settled) return;
    this.settled = true;
    this.worker.terminate();
    this.settle(end);
  }
}
