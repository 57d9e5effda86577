/**
 * Training jobs and their event histories in Redis, shared by every replica: what jobs.db is to one
 * process (store.ts). A job is a hash of JSON-encoded fields (the API's Job, plus who runs it); its
 * history a list whose positions are the events' sequence numbers. Every change is one Lua script,
 * so that it is atomic across replicas: a status moves only from the statuses it may move from, the
 * queue cap holds for the whole cluster, and a replica that lost a job (its lock expired and another
 * took the job over) can no longer write to it. Each new event is announced on a channel, for the
 * replicas whose clients follow the job.
 */
import type { Redis } from 'ioredis';
import type { Job, JobEvent, JobEventType, JobStatus } from './store.ts';

/** What the cluster keeps beside the Job the API shows. */
export interface RunState {
  /** The replica and BullMQ lock token of the run that holds the job; null when none does. */
  runner: string | null;
  /** The replica that ran the job last. */
  replica: string | null;
  /** Runs started since the job was queued (the first, then one per takeover). */
  attempts: number;
  /** A client asked to cancel it; the replica that runs it (or takes it over) stops it. */
  cancel_requested: boolean;
  /** Its training has succeeded and its checkpoint is being loaded for serving (`activate: true`): it can no longer be cancelled. */
  activating: boolean;
  /** How many times it was queued (submitted, then resumed): its BullMQ job is `<id>-<runs>`. */
  runs: number;
}

export type StoredJob = Job & RunState;

export interface Change {
  /** The change applies only while the job is in one of these statuses. */
  from?: readonly JobStatus[];
  /** Only while this run holds the job. */
  runner?: string;
  /** Entering `queued`, only while fewer jobs than this wait, cluster wide. */
  queueLimit?: number;
  /** Not while this flag of the run is set. */
  unless?: RunFlag;
  fields: Partial<StoredJob>;
  /** Appended to the history and announced. */
  event?: { type: JobEventType; data: Record<string, unknown> };
}

/** The run's state that is true or false. */
export type RunFlag = { [K in keyof RunState]: RunState[K] extends boolean ? K : never }[keyof RunState];

export type ChangeResult =
  | { ok: true; seq: number; cancelRequested: boolean }
  | { ok: false; reason: 'missing' | 'lost' | 'status' | 'full' | 'flag'; status?: JobStatus };

// KEYS: the job's hash, its event list, the set of queued jobs.
// ARGV: id, runner ('' any), allowed statuses (comma separated, '' any), new status ('' unchanged),
// queue limit (-1 none), event JSON ('' none), channel, a flag that must not be set ('' none), then
// field/value pairs.
const CHANGE = `
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
if ARGV[2] ~= '' and cjson.decode(redis.call('HGET', KEYS[1], 'runner')) ~= ARGV[2] then return {-1} end
local current = cjson.decode(redis.call('HGET', KEYS[1], 'status'))
if ARGV[3] ~= '' then
  local allowed = false
  for status in string.gmatch(ARGV[3], '[^,]+') do
    if status == current then allowed = true end
  end
  if not allowed then return {-2, current} end
end
if ARGV[8] ~= '' and redis.call('HGET', KEYS[1], ARGV[8]) == 'true' then return {-4} end
local limit = tonumber(ARGV[5])
if ARGV[4] == 'queued' and current ~= 'queued' and limit >= 0 and redis.call('SCARD', KEYS[3]) >= limit then return {-3} end
if #ARGV > 8 then redis.call('HSET', KEYS[1], unpack(ARGV, 9)) end
if ARGV[4] == 'queued' then redis.call('SADD', KEYS[3], ARGV[1]) elseif ARGV[4] ~= '' then redis.call('SREM', KEYS[3], ARGV[1]) end
local seq = 0
if ARGV[6] ~= '' then
  seq = redis.call('RPUSH', KEYS[2], ARGV[6])
  redis.call('PUBLISH', ARGV[7], ARGV[1] .. ' ' .. seq)
end
return {1, seq, redis.call('HGET', KEYS[1], 'cancel_requested') == 'true' and 1 or 0}
`;

// KEYS: the list of job ids, the set of queued jobs, the new job's hash. ARGV: queue limit, id, field/value pairs.
const CREATE = `
local limit = tonumber(ARGV[1])
if limit >= 0 and redis.call('SCARD', KEYS[2]) >= limit then return 0 end
redis.call('HSET', KEYS[3], unpack(ARGV, 3))
redis.call('RPUSH', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[2])
return 1
`;

/** In the order of jobs.db's columns, so that both job systems answer alike. */
const JOB_FIELDS: readonly (keyof Job)[] = ['id', 'status', 'step', 'steps', 'loss', 'eval_loss', 'samples_per_sec', 'eta_s', 'checkpoint', 'skipped_images', 'error', 'spec', 'created_at', 'started_at', 'finished_at', 'stage', 'vision_step'];

type Scripts = {
  changeJob(job: string, events: string, queued: string, ...args: string[]): Promise<[number, (number | string)?, number?]>;
  createJob(jobs: string, queued: string, job: string, ...args: string[]): Promise<number>;
};

const JOB_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export class RedisJobStore {
  /** Where each new event is announced, as `<job id> <seq>`. */
  readonly eventChannel: string;
  private readonly redis: Redis & Scripts;

  constructor(
    redis: Redis,
    private readonly prefix: string,
  ) {
    redis.defineCommand('changeJob', { numberOfKeys: 3, lua: CHANGE });
    redis.defineCommand('createJob', { numberOfKeys: 3, lua: CREATE });
    this.redis = redis as Redis & Scripts;
    this.eventChannel = `${prefix}:events`;
  }

  /** Adds the job as queued, unless `queueLimit` jobs already wait; false then. */
  async create(job: StoredJob, queueLimit: number): Promise<boolean> {
    const { id, ...fields } = job;
    return (await this.redis.createJob(this.key('jobs'), this.key('queued'), this.jobKey(id), String(queueLimit), id, ...encode(fields))) === 1;
  }

  async get(id: string): Promise<StoredJob | undefined> {
    // An id is a UUID: anything else (`<id>:events`) would name another of the job's keys.
    if (!JOB_ID.test(id)) return undefined;
    return decode(id, await this.redis.hgetall(this.jobKey(id)));
  }

  /** Newest first, `limit` of them, created before the job `after` where given; undefined when there is no job `after`. */
  async list(limit: number, after?: string): Promise<StoredJob[] | undefined> {
    // The ids, oldest first: the page ends just before `after`, or at the newest.
    let end = -1;
    if (after !== undefined) {
      const at = await this.redis.lpos(this.key('jobs'), after);
      if (at === null) return undefined;
      end = at - 1;
      if (end < 0) return [];
    }
    const start = end === -1 ? -limit : Math.max(0, end - limit + 1);
    const ids = (await this.redis.lrange(this.key('jobs'), start, end)).reverse();
    const pipeline = this.redis.pipeline();
    for (const id of ids) pipeline.hgetall(this.jobKey(id));
    const rows = (await pipeline.exec()) ?? [];
    return ids.map((id, i) => decode(id, rows[i]![1] as Record<string, string>)).filter((job): job is StoredJob => job !== undefined);
  }

  queuedIds(): Promise<string[]> {
    return this.redis.smembers(this.key('queued'));
  }

  async change(id: string, change: Change): Promise<ChangeResult> {
    const status = change.fields.status ?? '';
    const event = change.event ? JSON.stringify({ ...change.event, at: new Date().toISOString() }) : '';
    const args = [id, change.runner ?? '', (change.from ?? []).join(','), status, String(change.queueLimit ?? -1), event, this.eventChannel, change.unless ?? '', ...encode(change.fields)];
    const [code, seq, cancel] = await this.redis.changeJob(this.jobKey(id), this.eventsKey(id), this.key('queued'), ...args);
    if (code === 1) return { ok: true, seq: Number(seq), cancelRequested: cancel === 1 };
    if (code === -2) return { ok: false, reason: 'status', status: seq as JobStatus };
    if (code === -4) return { ok: false, reason: 'flag' };
    return { ok: false, reason: code === 0 ? 'missing' : code === -1 ? 'lost' : 'full' };
  }

  /** The job's history after sequence number `after`, in order. */
  async events(id: string, after = 0): Promise<JobEvent[]> {
    const items = await this.redis.lrange(this.eventsKey(id), after, -1);
    return items.map((item, i) => ({ seq: after + i + 1, ...(JSON.parse(item) as Omit<JobEvent, 'seq'>) }));
  }

  eventCount(id: string): Promise<number> {
    return this.redis.llen(this.eventsKey(id));
  }

  key(name: string): string {
    return `${this.prefix}:${name}`;
  }

  private jobKey(id: string): string {
    return this.key(`job:${id}`);
  }

  private eventsKey(id: string): string {
    return this.key(`job:${id}:events`);
  }
}

/** The job without what only the cluster needs: what the API shows. */
export function publicJob(job: StoredJob): Job {
  return Object.fromEntries(JOB_FIELDS.map((field) => [field, job[field]])) as unknown as Job;
}

function encode(fields: Record<string, unknown>): string[] {
  return Object.entries(fields).flatMap(([name, value]) => [name, JSON.stringify(value ?? null)]);
}

function decode(id: string, hash: Record<string, string>): StoredJob | undefined {
  if (Object.keys(hash).length === 0) return undefined;
  return { id, ...Object.fromEntries(Object.entries(hash).map(([name, value]) => [name, JSON.parse(value)])) } as StoredJob;
}
