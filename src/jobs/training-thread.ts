/**
 * One training job in its own worker thread (workers/training-worker.ts), so that the HTTP thread only
 * relays its events. `ended` settles once with how the run ended: its loop finished (succeeded or
 * cancelled), it failed with a reason (an error, a crash, an exit), or it was ended from here.
 *
 * A thread is ended only where nothing of its run is in flight: once the run is over, or between two
 * steps. Ending a Bun Worker does not wait for the work it started outside JavaScript (an image that
 * sharp decodes, a checkpoint being written), and that work finishing into a thread that is gone
 * can bring the whole process down.
 */
import type { TrainingEvent } from '../training/events.ts';
import type { TrainResult } from '../training/trainer.ts';
import type { TrainingWorkerMessage, TrainingWorkerRequest } from './protocol.ts';

const WORKER_URL = new URL('../../workers/training-worker.ts', import.meta.url).href;

/** How long a run told to end where it is may take to reach the end of its step; then its thread is ended all the same. */
const ABANDON_GRACE_MS = 10_000;

export type ThreadEnd = { type: 'finished'; result: TrainResult } | { type: 'failed'; message: string } | { type: 'terminated' };

export class TrainingThread {
  readonly ended: Promise<ThreadEnd>;
  private readonly worker = new Worker(WORKER_URL);
  private settle: (end: ThreadEnd) => void = () => {};
  private settled = false;
  private started = false;
  private hasStepped = false;
  private abandonTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(onEvent: (event: TrainingEvent) => void) {
    this.ended = new Promise((resolve) => (this.settle = resolve));
    this.worker.onmessage = ({ data }: MessageEvent<TrainingWorkerMessage>) => {
      if (data.type === 'finished' || data.type === 'failed') {
        // The run is over, abandoned ones too: nothing of it is in flight any more.
        this.stopWorker();
        this.end(data);
      } else if (!this.settled) {
        this.hasStepped ||= data.type === 'progress' || data.type === 'pretraining';
        onEvent(data);
      }
    };
    this.worker.onerror = (event) => {
      this.stopWorker();
      this.end({ type: 'failed', message: `training worker crashed: ${event.message}` });
    };
    this.worker.addEventListener('close', (event) => {
      const code = (event as CloseEvent & { code?: number }).code;
      this.end({ type: 'failed', message: `training worker exited unexpectedly${code === undefined ? '' : ` (code ${code})`}` });
    });
  }

  /** Whether the run has reported a step: it is in a step loop, which stops at the end of its step on a cancel. */
  get stepped(): boolean {
    return this.hasStepped;
  }

  start(request: Extract<TrainingWorkerRequest, { type: 'start' }>): void {
    this.started = true;
    this.worker.postMessage(request);
  }

  /** Asks the run to stop at the end of its step, after a checkpoint of it. */
  cancel(): void {
    if (!this.settled) this.worker.postMessage({ type: 'cancel' } satisfies TrainingWorkerRequest);
  }

  /**
   * Ends the run where it is, as if its thread had died: `ended` settles now, and the run writes
   * nothing more. Its thread ends at the start of the run's next step, or after ABANDON_GRACE_MS
   * where the run is busy elsewhere (opening its data).
   */
  terminate(): void {
    if (this.settled) return;
    this.end({ type: 'terminated' });
    if (!this.started) return this.stopWorker();
    this.worker.postMessage({ type: 'abandon' } satisfies TrainingWorkerRequest);
    this.abandonTimer = setTimeout(() => this.stopWorker(), ABANDON_GRACE_MS);
    this.abandonTimer.unref?.();
  }

  private stopWorker(): void {
    clearTimeout(this.abandonTimer);
    this.worker.terminate();
  }

  private end(end: ThreadEnd): void {
    if (this.settled) return;
    this.settled = true;
    this.settle(end);
  }
}
