/**
 * Training jobs shared by replicas (REDIS_URL): each job is a BullMQ job on one Redis, its record and
 * history live in Redis (redis-store.ts), and checkpoints in DATA_DIR, which the replicas share.
 * Any replica queues, answers for and cancels any job; a replica with a free training slot
 * (TRAINING_SLOTS) takes the oldest queued one and runs it in a worker thread, as TrainingScheduler
 * does in one process.
 *
 * A replica that dies stops renewing its BullMQ lock: once the lock expires (TRAINING_LOCK_MS),
 * BullMQ's stalled-job check on another replica puts the job back in the queue, and whoever takes it
 * resumes it from its last checkpoint, exactly as a resume does. The lock is renewed by this (HTTP)
 * thread, which a training step never blocks, so it need not outlast a step. A job whose runs keep
 * dying fails after TRAINING_MAX_ATTEMPTS of them, saying so. A graceful shutdown hands a running
 * job back to the queue at the end of a step, with a checkpoint of it, for another replica to go on.
 *
 * Replicas tell each other through Redis pub/sub: new events (for the clients that follow a job on
 * another replica), cancels (for the replica that runs the job) and activations (every replica loads
 * the checkpoint; one that starts later or missed the message loads it on connecting).
 */
import { mkdirSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
import { join, resolve } from 'node:path';
import { Queue, WaitingError, Worker, type Job as BullJob } from 'bullmq';
import { Redis, ReplyError } from 'ioredis';
import { PathNames } from '../data/path-names.ts';
import { checkpointStep, pruneCheckpoints } from '../training/checkpoint-folders.ts';
import type { TrainingEvent } from '../training/events.ts';
import type { MemoryEstimate } from '../training/memory.ts';
import type { JobSpec } from '../training/spec.ts';
import { settlesWithin } from '../settles-within.ts';
import { prepareJob, requireMemory, type MemoryLimits } from './admission.ts';
import { activatingError, JobStateError, QueueFullError, QueueUnavailableError } from './errors.ts';
import { publicJob, RedisJobStore, type Change, type StoredJob } from './redis-store.ts';
import { ACTIVE_STATUSES, type Job, type JobEvent, type JobStatus } from './store.ts';
import { CANCEL_GRACE_MS, type JobListener, type JobPage, type JobSystemState, type TrainingJobs } from './training-jobs.ts';
import { TrainingThread } from './training-thread.ts';
import { cancelledReason, failureMessage, recordOf, rowError, stoppedStep, type JobEnd } from './worker-events.ts';

export interface RedisQueueOptions extends MemoryLimits {
  /** redis:// URL of the Redis that every replica shares. */
  url: string;
  /** Shared by the replicas: the jobs' checkpoints (jobs/<id>/step-NNNNNN); user paths resolve inside it. */
  dataDir: string;
  /** This replica's name, in job records and logs. */
  replicaId: string;
  /** Jobs this replica runs at once; 0 serves only. */
  slots: number;
  /** How long a run's hold on its job lasts unrenewed: about the time a dead replica's job waits to be taken over. */
  lockMs: number;
  /** Runs of a job that may start (the first, then one per takeover) before it fails. */
  maxAttempts: number;
  /** Jobs waiting to run at most, cluster wide; past it, submit() and resume() throw QueueFullError. */
  maxQueuedJobs: number;
  /** Loads a checkpoint into this replica's inference workers (each replica, for a job with `activate: true`). */
  onActivate?: (checkpoint: string) => Promise<unknown>;
  /** Default CANCEL_GRACE_MS (training-jobs.ts). */
  cancelGraceMs?: number;
  /** Of every Redis key and channel, so that several clusters can share one Redis. */
  prefix?: string;
  log?: (line: string) => void;
}

/** An activation's `version` is absent from replicas that ran before activations had one. */
type Control = { type: 'cancel'; id: string } | { type: 'activate'; checkpoint: string; version?: number; from: string };

interface LocalRun {
  id: string;
  /** Which run of the job since it was queued: 1, then one more per takeover. */
  attempt: number;
  /** The replica and the BullMQ lock token: only this run may write the job while it holds it. */
  runner: string;
  spec: JobSpec;
  thread: TrainingThread;
  estimate?: MemoryEstimate;
  /** The run's writes, in order. */
  writes: Promise<void>;
  /** Why it was asked to stop: a client's cancel, this server shutting down, or another replica took the job. */
  stopping?: 'cancel' | 'shutdown' | 'lost';
}

/** The local followers of a job, and the last event passed to them. */
interface Relay {
  listeners: Set<JobListener>;
  delivered: number;
  pulls: Promise<void>;
}

const RESUMABLE: readonly JobStatus[] = ['interrupted', 'cancelled', 'failed'];
/** How long close() waits for BullMQ's queue and worker to let go of Redis before it drops the connections. */
const RELEASE_WAIT_MS = 2_000;
/** How long a submit or resume waits for BullMQ to take the job it recorded before it answers all the same. */
const ADD_WAIT_MS = 2_000;

const QUEUE = 'training';

export class RedisTrainingQueue implements TrainingJobs {
  readonly dataDir: string;
  private readonly store: RedisJobStore;
  /** Commands; fails at once while Redis is away rather than queueing them (the routes answer 503). */
  private readonly redis: Redis;
  /** Pub/sub: events, cancels, activations. */
  private readonly subscriber: Redis;
  private readonly queue: Queue;
  private readonly worker: Worker | null;
  private readonly names: PathNames;
  private readonly reserved: string[];
  private readonly runs = new Map<string, LocalRun>();
  private readonly relays = new Map<string, Relay>();
  private readonly log: (line: string) => void;
  /** The checkpoint this replica serves since its last activation (relative to DATA_DIR), and the cluster's version of that activation. */
  private active: string | null = null;
  private activeVersion = 0;
  private activations: Promise<void> = Promise.resolve();
  private closed = false;
  private unreachableSince: number | null = null;
  private readonly requeueTimer: ReturnType<typeof setInterval>;

  constructor(private readonly options: RedisQueueOptions) {
    this.dataDir = resolve(options.dataDir);
    mkdirSync(this.dataDir, { recursive: true });
    this.names = new PathNames([this.dataDir]);
    this.reserved = [...['', '-wal', '-shm', '-journal'].map((suffix) => join(this.dataDir, 'jobs.db' + suffix)), join(this.dataDir, 'jobs')];
    const prefix = options.prefix ?? 'titans';
    this.log = options.log ?? console.log;
    this.redis = new Redis(options.url, { enableOfflineQueue: false, maxRetriesPerRequest: 1 });
    this.subscriber = new Redis(options.url, { maxRetriesPerRequest: null });
    this.store = new RedisJobStore(this.redis, prefix);
    for (const client of [this.redis, this.subscriber]) client.on('error', (error: Error) => this.lost(error));
    this.redis.on('ready', () => {
      if (this.unreachableSince !== null) this.log(`Redis is reachable again after ${Math.round((Date.now() - this.unreachableSince) / 1000)} s`);
      this.unreachableSince = null;
      void this.syncActivation();
    });
    this.subscriber.on('ready', () => {
      // Messages sent while the connection was away are lost: catch up from the histories.
      for (const id of this.relays.keys()) this.pull(id);
    });
    this.subscriber.on('message', (channel: string, message: string) => this.onMessage(channel, message));
    void this.subscriber.subscribe(this.store.eventChannel, this.controlChannel).catch((error: Error) => this.lost(error));

    // BullMQ's connections wait through an outage (its worker blocks on Redis); they need no retry limit.
    const connection = { url: options.url, maxRetriesPerRequest: null };
    this.queue = new Queue(QUEUE, { connection, prefix, defaultJobOptions: { removeOnComplete: true, removeOnFail: true } });
    this.queue.on('error', (error: Error) => this.lost(error));
    this.worker = options.slots === 0 ? null : new Worker(QUEUE, (job, token) => this.process(job, token), {
      connection,
      prefix,
      name: options.replicaId,
      concurrency: options.slots,
      lockDuration: options.lockMs,
      stalledInterval: Math.max(100, Math.floor(options.lockMs / 2)),
      // This class counts the runs of a job and fails it past maxAttempts, with the reason; BullMQ
      // must not fail it first (it would, silently to us, past its own count).
      maxStalledCount: options.maxAttempts,
    });
    this.worker?.on('error', (error: Error) => this.lost(error));
    // A processor throws only when Redis failed it midway; past its last retry, the job must not stay running.
    this.worker?.on('failed', (bullJob, error) => {
      if (bullJob && bullJob.attemptsMade >= (bullJob.opts.attempts ?? 1)) void this.giveUp(bullJob.data.id, error.message);
    });
    this.requeueTimer = setInterval(() => void this.requeueWaiting(), options.lockMs);
    this.requeueTimer.unref?.();
  }

  /** Resolves once Redis answers and, on a replica with slots, its BullMQ worker listens. */
  async ready(): Promise<void> {
    if (this.redis.status !== 'ready') await new Promise((resolve) => this.redis.once('ready', resolve));
    await this.queue.waitUntilReady();
    await this.worker?.waitUntilReady();
    await this.requeueWaiting();
  }

  async submit(spec: JobSpec): Promise<Job> {
    this.requireReachable();
    const { estimate } = await prepareJob(spec, this.dataDir, this.reserved);
    requireMemory(spec, estimate, this.options);
    const id = randomUUID();
    const job: StoredJob = {
      id, status: 'queued', step: 0, steps: spec.train.steps, loss: null, eval_loss: null, samples_per_sec: null, eta_s: null, checkpoint: null,
      skipped_images: 0, error: null, spec, created_at: new Date().toISOString(), started_at: null, finished_at: null, stage: null, vision_step: 0,
      runner: null, replica: null, attempts: 0, cancel_requested: false, activating: false, runs: 1,
    };
    const created = await this.call(() => this.store.create(job, this.options.maxQueuedJobs));
    if (!created) throw await this.queueFull();
    await this.enqueueRecorded(job);
    return publicJob(job);
  }

  async get(id: string): Promise<Job | undefined> {
    const job = await this.call(() => this.store.get(id));
    return job && publicJob(job);
  }

  async list({ limit, after }: JobPage): Promise<Job[] | undefined> {
    return (await this.call(() => this.store.list(limit, after)))?.map(publicJob);
  }

  events(id: string, after = 0): Promise<JobEvent[]> {
    return this.call(() => this.store.events(id, after));
  }

  subscribe(id: string, listener: JobListener): () => void {
    let relay = this.relays.get(id);
    if (!relay) {
      const created: Relay = { listeners: new Set(), delivered: 0, pulls: Promise.resolve() };
      // Events from here on are passed on; what came before, the follower reads from the history.
      // (Both commands go down one connection in order, so the follower's read comes after this one.)
      created.pulls = this.store.eventCount(id).then((count) => void (created.delivered = count), () => {});
      this.relays.set(id, created);
      relay = created;
    }
    const { listeners } = relay;
    listeners.add(listener);
    return () => {
      listeners.delete(listener);
      if (listeners.size === 0 && this.relays.get(id)?.listeners === listeners) this.relays.delete(id);
    };
  }

  async cancel(id: string): Promise<Job> {
    const job = await this.require(id);
    if (job.status === 'queued') {
      const cancelled = await this.finish(job, 'cancelled', { reason: 'cancelled before it started' }, { from: ['queued'] });
      if (cancelled) {
        // Best effort: a replica that takes it all the same sees it cancelled and lets it go.
        await this.queue.remove(bullId(job)).catch(() => {});
        return publicJob(cancelled);
      }
    }
    if (job.status === 'running' && !job.activating && job.runner !== null && !(await this.call(() => this.holdsLock(job)))) {
      // Its runner died: the job stands at its last checkpoint. Ended now, not once a replica with a
      // free slot takes it over (which may be hours while every slot is busy); a taker that got there
      // first holds the job under another runner, and the flag below reaches it.
      const stopped = { ...job, step: stoppedStep(job) };
      const cancelled = await this.finish(stopped, 'cancelled', { reason: cancelledReason(stopped) }, { from: ['running'], runner: job.runner });
      if (cancelled) return publicJob(cancelled);
    }
    // Running, here or elsewhere, or waiting for another replica to take it over: whoever runs it next stops it.
    const flagged = await this.call(() => this.store.change(id, { from: ['running'], unless: 'activating', fields: { cancel_requested: true } }));
    if (!flagged.ok && flagged.reason === 'flag') throw activatingError(id);
    if (!flagged.ok) {
      const status = flagged.status ?? job.status;
      throw new JobStateError(`job ${id} is ${status}; only a queued or running job can be cancelled`);
    }
    await this.publish({ type: 'cancel', id });
    return (await this.get(id))!;
  }

  async resume(id: string): Promise<Job> {
    const job = await this.require(id);
    const runs = job.runs + 1;
    const change: Change = {
      from: RESUMABLE,
      queueLimit: this.options.maxQueuedJobs,
      fields: { status: 'queued', error: null, finished_at: null, eta_s: null, cancel_requested: false, activating: false, attempts: 0, runner: null, runs },
    };
    const resumed = await this.call(() => this.store.change(id, change));
    if (!resumed.ok && resumed.reason === 'full') throw await this.queueFull();
    if (!resumed.ok) throw new JobStateError(`job ${id} is ${resumed.status ?? job.status}; only ${RESUMABLE.join(', ')} jobs can be resumed`);
    await this.enqueueRecorded({ ...job, runs });
    return (await this.get(id))!;
  }

  state(): JobSystemState {
    return { queue: 'redis', reachable: !this.closed && this.redis.status === 'ready' };
  }

  /**
   * No job starts here any more; running ones stop at the end of their step, with a checkpoint of it,
   * and go back to the queue for another replica, within `timeoutMs`; then close().
   */
  async shutdown(timeoutMs: number): Promise<void> {
    if (this.closed) return;
    // Closing first: the worker fetches no job any more, not even the ones handed back below.
    const closing = this.worker?.close();
    for (const run of this.runs.values()) this.stop(run, 'shutdown');
    // A Redis that does not answer makes close() wait RELEASE_WAIT_MS more: then within the timeout too.
    // With Redis up, close() is quick, and a running job gets the whole timeout to end its step.
    const reachable = this.redis.status === 'ready';
    if (closing) await settlesWithin(closing, reachable ? timeoutMs : Math.max(0, timeoutMs - RELEASE_WAIT_MS));
    await this.close();
  }

  /**
   * Ends this replica's runs where they are, as if it died: their jobs stay running in Redis, and
   * another replica takes them over once their locks expire. Followers here get the end of their stream.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.requeueTimer);
    // Before the threads end: a closing worker does not record their processors' return as completion.
    const closing = this.worker?.close(true);
    for (const run of this.runs.values()) run.thread.terminate();
    const released = (async () => {
      await closing?.catch(() => {});
      await this.queue.close().catch(() => {});
    })();
    // BullMQ lets go of a Redis that answers in milliseconds, and waits for ever for one that does not.
    await settlesWithin(released, RELEASE_WAIT_MS);
    this.subscriber.disconnect();
    this.redis.disconnect();
    for (const relay of this.relays.values()) for (const listener of relay.listeners) listener(null);
  }

  private get controlChannel(): string {
    return this.store.key('control');
  }

  /** Runs one BullMQ job: the job's first run, a takeover after its runner died, or a resume. */
  private async process(bullJob: BullJob<{ id: string }>, token: string | undefined): Promise<void> {
    const { id } = bullJob.data;
    const job = await this.store.get(id);
    // Cancelled while it waited, or an entry left behind: nothing to run.
    if (!job || !ACTIVE_STATUSES.includes(job.status) || bullJob.id !== bullId(job)) return;
    if (job.cancel_requested) {
      // Only a running job is flagged: its runner died, so it stands at its checkpoint, whatever step it reported since.
      const stopped = { ...job, step: stoppedStep(job) };
      await this.finish(stopped, 'cancelled', { reason: cancelledReason(stopped) }, { from: ACTIVE_STATUSES });
      return;
    }
    const attempts = job.attempts + 1;
    if (attempts > this.options.maxAttempts) {
      const reason = `the replicas that ran the job stopped ${job.attempts} times before it ended (the last: ${job.replica}, at step ${job.step}); TRAINING_MAX_ATTEMPTS is ${this.options.maxAttempts}; resume it to try again from its last checkpoint`;
      await this.failJob(job, reason, { from: ACTIVE_STATUSES });
      return;
    }
    const runner = `${this.options.replicaId}/${token}`;
    const fields = { status: 'running' as const, runner, replica: this.options.replicaId, attempts, started_at: new Date().toISOString(), eta_s: null, activating: false };
    if (!(await this.store.change(id, { from: ACTIVE_STATUSES, fields })).ok) return;
    // The checkpoint as the record names it now that this replica runs the job: a runner that had
    // not yet seen its lock lapse may have recorded a newer one since the read above, and pruned
    // the one that read named; it can record nothing more.
    const checkpoint = (await this.store.get(id))?.checkpoint ?? job.checkpoint;
    if (job.status === 'running') this.log(`taking over training job ${id} from ${job.replica}, ${checkpoint === null ? 'from the start' : `from its checkpoint at step ${checkpointStep(checkpoint)}`}`);
    const run: LocalRun = { id, attempt: attempts, runner, spec: job.spec, writes: Promise.resolve(), thread: new TrainingThread((event) => this.record(run, event)) };
    // This replica may be taking over from itself (its lock expired while Redis was away): the older run lost the job.
    const older = this.runs.get(id);
    if (older) {
      older.stopping = 'lost';
      older.thread.terminate();
    }
    this.runs.set(id, run);
    try {
      await this.runJob(run, checkpoint, bullJob, token);
    } finally {
      if (this.runs.get(id) === run) this.runs.delete(id);
    }
  }

  private async runJob(run: LocalRun, checkpoint: string | null, bullJob: BullJob, token: string | undefined): Promise<void> {
    try {
      // A job with a checkpoint was taken over, interrupted or cancelled before: it continues from there.
      const resumeFrom = checkpoint === null ? undefined : resolve(this.dataDir, checkpoint);
      const { resolved, estimate } = await prepareJob(run.spec, this.dataDir, this.reserved, resumeFrom);
      run.estimate = estimate;
      run.thread.start({ type: 'start', spec: resolved, outDir: join(this.dataDir, 'jobs', run.id), resumeFrom });
    } catch (error) {
      run.thread.terminate();
      return this.fail(run, (error as Error).message);
    }
    const end = await run.thread.ended;
    await run.writes;
    if (run.stopping === 'lost') return;
    if (this.closed) {
      // Ended where it was, as if this replica had died: the job goes back to BullMQ for another
      // replica to take over (or, Redis away, its lock expires). A normal return would be read as
      // its completion where the close had not forced BullMQ's worker, after a shutdown.
      await bullJob.moveToWait(token).catch(() => {});
      throw new WaitingError();
    }
    if (end.type === 'failed') return this.fail(run, end.message);
    if (end.type === 'terminated') {
      await this.finishRun(run, 'cancelled', { reason: 'cancelled before its first step; its worker, still preparing the run, was ended' });
      return;
    }
    const { checkpoint: last } = end.result;
    if (end.result.status === 'cancelled' && run.stopping === 'shutdown') {
      // Back to the queue, from the checkpoint just written: another replica goes on with it. A run
      // handed back did not die: it does not count against TRAINING_MAX_ATTEMPTS.
      await this.store.change(run.id, { runner: run.runner, fields: { status: 'queued', runner: null, eta_s: null, attempts: run.attempt - 1 } });
      await bullJob.moveToWait(token);
      throw new WaitingError();
    }
    const job = await this.store.get(run.id);
    // A cancel that came during the last step: the run reached its end, but its client asked first.
    let status = end.result.status === 'succeeded' && job?.cancel_requested ? 'cancelled' : end.result.status;
    if (status === 'succeeded' && run.spec.activate && last) {
      // Activating only while no cancel is flagged, in the script that a cancel runs too: one of them wins.
      const marked = await this.store.change(run.id, { runner: run.runner, unless: 'cancel_requested', fields: { activating: true } });
      if (marked.ok) return this.finishRun(run, status, await this.activateEverywhere(run, this.names.show(last)));
      if (marked.reason !== 'flag') return;
      status = 'cancelled';
    }
    await this.finishRun(run, status, status === 'cancelled' && job ? { reason: cancelledReason(job) } : {});
  }

  /**
   * Writes a worker's event, in order; a run that lost its job (another replica took it) stops. The
   * checkpoints before one recorded are pruned then, not before: a takeover resumes from the recorded one.
   */
  private record(run: LocalRun, event: TrainingEvent): void {
    const { update, type, data } = recordOf(event, (path) => this.names.show(path));
    run.writes = run.writes.then(async () => {
      const written = await this.store.change(run.id, { runner: run.runner, fields: update, event: { type, data } });
      if (!written.ok) {
        this.log(`training job ${run.id} was taken over by another replica; ending this replica's run of it`);
        run.stopping = 'lost';
        run.thread.terminate();
        return;
      }
      if (written.cancelRequested) {
        // The fallback of the cancel message: a cancel flagged while this replica's subscriber was away.
        this.stop(run, 'cancel');
      }
      if (event.type === 'checkpoint') {
        await pruneCheckpoints(event.path, run.spec.train.keep_checkpoints).catch((error: Error) => this.log(`training job ${run.id}: its older checkpoints could not be removed (${error.message})`));
      }
    }).catch((error: Error) => this.log(`training job ${run.id}: an event could not be recorded (${error.message})`));
  }

  private async fail(run: LocalRun, error: string): Promise<void> {
    const job = await this.store.get(run.id);
    if (job) await this.failJob(job, failureMessage(run.id, error, run.estimate, (text) => this.names.scrub(text)), { runner: run.runner });
  }

  /** The job's BullMQ entry failed for good: record the job failed, if Redis lets us. */
  private async giveUp(id: string, reason: string): Promise<void> {
    const job = await this.store.get(id).catch(() => undefined);
    if (job && ACTIVE_STATUSES.includes(job.status)) await this.failJob(job, `the job queue failed the job: ${reason}`, { from: ACTIVE_STATUSES }).catch(() => {});
  }

  /** The job failed: an `error` event, then the terminal one with the same error object. */
  private async failJob(job: StoredJob, message: string, guard: Pick<Change, 'from' | 'runner'>): Promise<void> {
    const error = { code: 'training_failed' as const, message };
    const written = await this.store.change(job.id, { ...guard, fields: {}, event: { type: 'error', data: { error } } });
    if (written.ok) await this.finish(job, 'failed', { reason: message, error }, guard);
  }

  private async finishRun(run: LocalRun, status: JobStatus, end: JobEnd): Promise<void> {
    const job = await this.store.get(run.id);
    if (job) await this.finish(job, status, end, { runner: run.runner });
  }

  /**
   * Records the job's end (at `job.step`) and its one terminal event; null when the job was no longer
   * where `guard` expects it.
   */
  private async finish(job: StoredJob, status: JobStatus, end: JobEnd, guard: Pick<Change, 'from' | 'runner'>): Promise<StoredJob | null> {
    const { reason, error, activated } = end;
    const message = rowError(end);
    const fields: Partial<StoredJob> = { status, step: job.step, eta_s: status === 'succeeded' ? 0 : null, finished_at: new Date().toISOString(), runner: null, cancel_requested: false, activating: false, ...(message !== undefined && { error: message }) };
    const data = { status, step: job.step, checkpoint: job.checkpoint, ...(reason !== undefined && { reason }), ...(error !== undefined && { error }), ...(activated !== undefined && { activated }) };
    const done = await this.call(() => this.store.change(job.id, { ...guard, fields, event: { type: 'done', data } }));
    return done.ok ? { ...job, ...fields } : null;
  }

  /**
   * Loads the checkpoint here, makes it the cluster's, then tells every other replica to load it;
   * when it does not load, the job's `activation_failed` error.
   */
  private async activateEverywhere(run: LocalRun, checkpoint: string): Promise<JobEnd> {
    let version: number;
    try {
      version = await this.activate(checkpoint);
    } catch (failure) {
      const error = { code: 'activation_failed' as const, message: `the job succeeded but its checkpoint could not be activated: ${this.names.scrub((failure as Error).message)}` };
      await this.store.change(run.id, { runner: run.runner, fields: {}, event: { type: 'error', data: { error } } });
      return { activated: false, error };
    }
    await this.publish({ type: 'activate', checkpoint, version, from: this.options.replicaId });
    return { activated: true };
  }

  /**
   * Loads `checkpoint` (relative to DATA_DIR) here, in turn, then records it as the cluster's active
   * checkpoint under a version newer than any before, in the same turn: an older activation that
   * arrives meanwhile (two jobs that end together on two replicas) is then known to be older, and
   * every replica ends on the newest.
   */
  private activate(checkpoint: string): Promise<number> {
    return this.inTurn(async () => {
      await this.load(checkpoint);
      const [[, version]] = (await this.redis.multi().incr(this.store.key('active-version')).set(this.store.key('active-checkpoint'), checkpoint).exec()) as [[Error | null, number]];
      this.activeVersion = version;
      return version;
    });
  }

  /**
   * Another replica's activation: loaded in turn, unless this replica has loaded a newer one
   * meanwhile. One without a version (a replica of an earlier release) is loaded as it comes.
   * `recorded`: the cluster's record, read on connecting, which is loaded at its own version too (a
   * replica of an earlier release may have changed the checkpoint and not the version).
   */
  private follow(checkpoint: string, version: number | undefined, recorded = false): Promise<void> {
    return this.inTurn(async () => {
      if (version !== undefined && (recorded ? version < this.activeVersion : version <= this.activeVersion)) return;
      await this.load(checkpoint);
      if (version !== undefined) this.activeVersion = Math.max(this.activeVersion, version);
    });
  }

  private async load(checkpoint: string): Promise<void> {
    if (checkpoint === this.active || !this.options.onActivate) return;
    await this.options.onActivate(resolve(this.dataDir, checkpoint));
    this.active = checkpoint;
    this.log(`activated ${checkpoint}`);
  }

  /** One activation at a time, in the order asked. */
  private inTurn<T>(step: () => Promise<T>): Promise<T> {
    const run = this.activations.then(step);
    this.activations = run.then(() => {}, () => {});
    return run;
  }

  /** On (re)connecting: the cluster's active checkpoint, if this replica missed it. */
  private async syncActivation(): Promise<void> {
    const [checkpointKey, versionKey] = [this.store.key('active-checkpoint'), this.store.key('active-version')];
    // A cluster of an earlier release kept no version: its checkpoint becomes version 1, so that the
    // next activation's INCR is newer. Set before the read, so that the read sees any INCR since.
    const read = await this.redis
      .multi()
      .eval(`if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('SET', KEYS[2], 1, 'NX') end return 1`, 2, checkpointKey, versionKey)
      .mget(checkpointKey, versionKey)
      .exec()
      .catch(() => null);
    const [checkpoint, version] = (read?.[1]?.[1] as [string | null, string | null] | undefined) ?? [null, null];
    if (!checkpoint) return;
    await this.follow(checkpoint, Number(version ?? 1), true).catch((error: Error) => this.log(`could not activate ${checkpoint}: ${error.message}`));
  }

  private onMessage(channel: string, message: string): void {
    if (channel === this.store.eventChannel) return this.pull(message.slice(0, message.indexOf(' ')));
    if (channel !== this.controlChannel) return;
    const control = JSON.parse(message) as Control;
    if (control.type === 'cancel') {
      const run = this.runs.get(control.id);
      if (run) this.stop(run, 'cancel');
    } else if (control.from !== this.options.replicaId) {
      this.follow(control.checkpoint, control.version).catch((error: Error) => this.log(`could not activate ${control.checkpoint}: ${error.message}`));
    }
  }

  /** Passes the job's events that its local followers have not had yet, in order. */
  private pull(id: string): void {
    const relay = this.relays.get(id);
    if (!relay) return;
    relay.pulls = relay.pulls.then(async () => {
      for (const event of await this.store.events(id, relay.delivered)) {
        relay.delivered = event.seq;
        for (const listener of relay.listeners) listener(event);
      }
    }).catch(() => {});
  }

  private stop(run: LocalRun, reason: 'cancel' | 'shutdown'): void {
    if (run.stopping) return;
    run.stopping = reason;
    run.thread.cancel();
    if (reason !== 'cancel') return;
    // Only a worker still outside the step loop, which does not look at the cancel, is ended.
    setTimeout(() => run.thread.stepped || run.thread.terminate(), this.options.cancelGraceMs ?? CANCEL_GRACE_MS).unref?.();
  }

  /**
   * A job is recorded, then added to BullMQ: a replica that died between the two, or an add that
   * failed, left it queued with nothing to run it, holding a place under MAX_QUEUED_JOBS for good.
   * Every replica adds each queued job again, now and then: BullMQ keeps one job an id, so an add of
   * one it holds does nothing, and one that ran since is let go by process(), as its record says.
   */
  private async requeueWaiting(): Promise<void> {
    if (this.closed || this.redis.status !== 'ready') return;
    try {
      for (const id of await this.store.queuedIds()) {
        const job = await this.store.get(id);
        if (job?.status === 'queued') await this.enqueue(job);
      }
    } catch (error) {
      this.log(`could not look for queued training jobs to add again: ${(error as Error).message}`);
    }
  }

  /** Whether the run the record names still holds its BullMQ lock, which a runner that died lets lapse. */
  private async holdsLock(job: StoredJob): Promise<boolean> {
    const token = job.runner!.slice(job.runner!.lastIndexOf('/') + 1);
    return (await this.redis.get(this.store.key(`${QUEUE}:${bullId(job)}:lock`))) === token;
  }

  private async enqueue(job: StoredJob): Promise<void> {
    // Attempts and backoff for a processor that throws: only when Redis failed it midway (training
    // failures are recorded, not thrown), so that a blip does not leave the job unrun.
    await this.queue.add('train', { id: job.id }, { jobId: bullId(job), attempts: 5, backoff: { type: 'exponential', delay: 1000 } });
  }

  /**
   * Adds a job just recorded as queued. It is the client's from the record on, whatever the add
   * meets (this replica's shutdown, an outage, in which BullMQ waits for Redis rather than fail): a
   * 503, or an answer that never comes, would have it submitted twice, and requeueWaiting adds it,
   * on whichever replica runs next.
   */
  private async enqueueRecorded(job: StoredJob): Promise<void> {
    const later = `training job ${job.id}: recorded, but not yet added to the queue`;
    const added = this.enqueue(job).catch((error: Error) => this.log(`${later} (${error.message}); a replica adds it within TRAINING_LOCK_MS`));
    if (!(await settlesWithin(added, ADD_WAIT_MS))) this.log(`${later}: Redis does not answer; it is added once it does`);
  }

  private async publish(control: Control): Promise<void> {
    await this.call(() => this.redis.publish(this.controlChannel, JSON.stringify(control)));
  }

  private async require(id: string): Promise<StoredJob> {
    const job = await this.call(() => this.store.get(id));
    if (!job) throw new JobStateError(`no job ${id}`);
    return job;
  }

  /**
   * QueueFullError, with a guess at when a place frees: the soonest ETA of a running job, within
   * reason. The running jobs are BullMQ's active ones, as many as the cluster's slots: not every job
   * ever recorded, which a client retrying on 429 would read again and again.
   */
  private async queueFull(): Promise<QueueFullError> {
    const running = await this.queue
      .getActive()
      .then((active) => Promise.all(active.map((bullJob) => this.store.get(bullJob.data.id))))
      .catch(() => []);
    const etas = running.filter((job) => job?.status === 'running' && job.eta_s !== null).map((job) => job!.eta_s!);
    return new QueueFullError(this.options.maxQueuedJobs, etas.length > 0 ? Math.min(...etas) : undefined);
  }

  private requireReachable(): void {
    if (this.closed) throw new QueueUnavailableError('this server is shutting down');
    if (this.redis.status !== 'ready') throw new QueueUnavailableError(`the connection is ${this.redis.status}`);
  }

  /** A Redis call made for a client: a lost connection is QueueUnavailableError (503), not an internal error. */
  private async call<T>(command: () => Promise<T>): Promise<T> {
    this.requireReachable();
    try {
      return await command();
    } catch (error) {
      if (error instanceof ReplyError) throw error;
      throw new QueueUnavailableError((error as Error).message);
    }
  }

  /**
   * Logs a lost connection once per outage (each client reports every retry). An error while Redis
   * answers (BullMQ could not renew a lock that another replica took) is no outage: logged as it is.
   */
  private lost(error: Error): void {
    if (this.closed) return;
    if (this.redis.status === 'ready' && this.subscriber.status === 'ready') {
      this.log(`training job queue: ${error.message}`);
      return;
    }
    if (this.unreachableSince !== null) return;
    this.unreachableSince = Date.now();
    this.log(`Redis is unreachable (${error.message}); training routes answer 503 until it is back`);
  }
}

/** The BullMQ job of the job's latest run: a resumed job is queued again under a new id. */
function bullId(job: Pick<StoredJob, 'id' | 'runs'>): string {
  return `${job.id}-${job.runs}`;
}
