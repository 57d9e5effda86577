/**
 * Training jobs and their event history in SQLite (bun:sqlite), under DATA_DIR. The history is what
 * `GET .../events` replays; the job row is its summary (latest step, loss, checkpoint...).
 */
import { Database } from 'bun:sqlite';
import { randomUUID } from 'node:crypto';
import type { JobSpec } from '../training/spec.ts';

export type JobStatus = 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled' | 'interrupted';
export type JobEventType = 'pretraining' | 'pretraining_eval' | 'progress' | 'eval' | 'checkpoint' | 'done' | 'error';

export type JobStage = 'vision' | 'captions';

export const ACTIVE_STATUSES: readonly JobStatus[] = ['queued', 'running'];

export interface Job {
  id: string;
  status: JobStatus;
  /** The stage that ran last: vision pretraining or captions; null before the first step. */
  stage: JobStage | null;
  /** Steps of vision pretraining done (0 for a job without it). */
  vision_step: number;
  /** Caption steps done, of `steps`. */
  step: number;
  steps: number;
  loss: number | null;
  eval_loss: number | null;
  /** Of the running stage. */
  samples_per_sec: number | null;
  eta_s: number | null;
  /** The latest checkpoint folder (absolute path). */
  checkpoint: string | null;
  skipped_images: number;
  error: string | null;
  spec: JobSpec;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
}

export interface JobEvent {
  /** 1, 2, ... within the job; the SSE id. */
  seq: number;
  type: JobEventType;
  data: Record<string, unknown>;
  at: string;
}

export type JobUpdate = Partial<Omit<Job, 'id' | 'spec' | 'created_at'>>;

const SCHEMA = `
  CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    created_order INTEGER NOT NULL,
    status TEXT NOT NULL,
    step INTEGER NOT NULL DEFAULT 0,
    steps INTEGER NOT NULL,
    loss REAL, eval_loss REAL, samples_per_sec REAL, eta_s REAL,
    checkpoint TEXT,
    skipped_images INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    spec TEXT NOT NULL,
    created_at TEXT NOT NULL, started_at TEXT, finished_at TEXT
  );
  CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
  );
`;

/** Columns added since the first schema: a new database and one made before them both gain them on opening. */
const ADDED_COLUMNS = { stage: 'TEXT', vision_step: 'INTEGER NOT NULL DEFAULT 0' };

const UPDATABLE = ['status', 'stage', 'vision_step', 'step', 'steps', 'loss', 'eval_loss', 'samples_per_sec', 'eta_s', 'checkpoint', 'skipped_images', 'error', 'started_at', 'finished_at'] as const;

type Row = Omit<Job, 'spec'> & { spec: string };

export class JobStore {
  private readonly db: Database;

  constructor(path: string) {
    this.db = new Database(path, { create: true, strict: true });
    // WAL: readers (GET, SSE replay) do not wait for the writer of progress events.
    this.db.exec('PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON;');
    this.db.exec(SCHEMA);
    const columns = new Set((this.db.query('PRAGMA table_info(jobs)').all() as { name: string }[]).map((c) => c.name));
    for (const [name, type] of Object.entries(ADDED_COLUMNS)) if (!columns.has(name)) this.db.exec(`ALTER TABLE jobs ADD COLUMN ${name} ${type}`);
  }

  create(spec: JobSpec): Job {
    const id = randomUUID();
    const order = (this.db.query('SELECT COALESCE(MAX(created_order), 0) + 1 AS next FROM jobs').get() as { next: number }).next;
    this.db
      .query('INSERT INTO jobs (id, created_order, status, steps, spec, created_at) VALUES ($id, $order, $status, $steps, $spec, $at)')
      .run({ id, order, status: 'queued', steps: spec.train.steps, spec: JSON.stringify(spec), at: now() });
    return this.get(id)!;
  }

  get(id: string): Job | undefined {
    const row = this.db.query('SELECT * FROM jobs WHERE id = $id').get({ id }) as Row | null;
    return row ? toJob(row) : undefined;
  }

  /** Newest first, `limit` of them, created before the job `after` where given; undefined when there is no job `after`. */
  list(limit: number, after?: string): Job[] | undefined {
    if (after === undefined) return (this.db.query('SELECT * FROM jobs ORDER BY created_order DESC LIMIT $limit').all({ limit }) as Row[]).map(toJob);
    const before = this.db.query('SELECT created_order FROM jobs WHERE id = $after').get({ after }) as { created_order: number } | null;
    if (!before) return undefined;
    const rows = this.db.query('SELECT * FROM jobs WHERE created_order < $order ORDER BY created_order DESC LIMIT $limit').all({ order: before.created_order, limit }) as Row[];
    return rows.map(toJob);
  }

  queuedCount(): number {
    return (this.db.query("SELECT COUNT(*) AS count FROM jobs WHERE status = 'queued'").get() as { count: number }).count;
  }

  /** The oldest queued job: the next to run. */
  nextQueued(): Job | undefined {
    const row = this.db.query("SELECT * FROM jobs WHERE status = 'queued' ORDER BY created_order LIMIT 1").get() as Row | null;
    return row ? toJob(row) : undefined;
  }

  update(id: string, update: JobUpdate): Job {
    const fields = UPDATABLE.filter((key) => key in update);
    if (fields.length > 0) {
      const values = Object.fromEntries(fields.map((key) => [key, update[key] ?? null]));
      this.db.query(`UPDATE jobs SET ${fields.map((key) => `${key} = $${key}`).join(', ')} WHERE id = $id`).run({ ...values, id });
    }
    return this.get(id)!;
  }

  /** Appends to the job's history; returns the event with its sequence number. */
  appendEvent(jobId: string, type: JobEventType, data: Record<string, unknown>): JobEvent {
    const at = now();
    const seq = (this.db.query('SELECT COALESCE(MAX(seq), 0) + 1 AS next FROM events WHERE job_id = $jobId').get({ jobId }) as { next: number }).next;
    this.db.query('INSERT INTO events (job_id, seq, type, data, at) VALUES ($jobId, $seq, $type, $data, $at)').run({ jobId, seq, type, data: JSON.stringify(data), at });
    return { seq, type, data, at };
  }

  /** The job's history after sequence number `after`, in order. */
  events(jobId: string, after = 0): JobEvent[] {
    const rows = this.db.query('SELECT seq, type, data, at FROM events WHERE job_id = $jobId AND seq > $after ORDER BY seq').all({ jobId, after }) as
      { seq: number; type: JobEventType; data: string; at: string }[];
    return rows.map((row) => ({ ...row, data: JSON.parse(row.data) }));
  }

  /** At startup: jobs left running by a previous process did not finish; returns their ids. */
  interruptRunning(): string[] {
    const ids = (this.db.query("SELECT id FROM jobs WHERE status = 'running'").all() as { id: string }[]).map((r) => r.id);
    for (const id of ids) this.update(id, { status: 'interrupted', eta_s: null, error: 'the server stopped while the job was running' });
    return ids;
  }

  close(): void {
    this.db.close();
  }
}

function toJob(row: Row): Job {
  const { created_order: _order, ...job } = row as Row & { created_order: number };
  return { ...job, spec: JSON.parse(row.spec) };
}

function now(): string {
  return new Date().toISOString();
}
