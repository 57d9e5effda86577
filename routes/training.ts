/**
 * Training jobs: POST /jobs (202 + Location), GET /jobs, GET /jobs/:id, GET /jobs/:id/events (SSE:
 * the job's history, then its live events, closed when the job ends), POST /jobs/:id/cancel and
 * POST /jobs/:id/resume. With API_KEY set, every route needs it as a bearer token. The jobs live in
 * SQLite or, shared by replicas, in Redis (src/jobs/training-jobs.ts): the answers are the same.
 */
import { Hono } from 'hono';
import { z } from 'zod';
import type { SSEStreamingApi } from 'hono/streaming';
import { requireApiKey } from '../src/http/auth.ts';
import type { ServerConfig } from '../src/http/settings.ts';
import { ApiError, invalidField } from '../src/http/errors.ts';
import { numberInput } from '../src/http/generation-params.ts';
import { parseFields } from '../src/http/validation.ts';
import { Channel } from '../src/inference/channel.ts';
import { ACTIVE_STATUSES, type Job, type JobEvent } from '../src/jobs/store.ts';
import type { TrainingJobs } from '../src/jobs/training-jobs.ts';
import { acceptBodies, controlBodyLimit, readJsonObject } from '../src/http/request-body.ts';
import { eventStream } from '../src/http/sse.ts';
import type { RouteDoc } from '../src/http/openapi.ts';
import { jobSpecSchema, parseJobSpec } from '../src/training/spec.ts';

const JOB = { 401: 'API_KEY missing or wrong', 404: 'no such job' };

/** Jobs a page of GET /jobs holds when the request does not say; at most MAX_PAGE. */
const DEFAULT_PAGE = 100;
const MAX_PAGE = 1000;

const jobPageSchema = z.object({
  limit: numberInput({ integer: true, min: 1, max: MAX_PAGE }).transform((limit) => limit ?? DEFAULT_PAGE).meta({ description: `jobs in the page, 1 to ${MAX_PAGE} (default ${DEFAULT_PAGE})` }),
  after: z.string().min(1).optional().meta({ description: 'the id of the last job of the previous page: this page holds the jobs created before it' }),
});

export const TRAINING_DOCS: RouteDoc[] = [
  {
    method: 'post',
    path: '/jobs',
    summary: 'Start a training job; 202 with Location',
    body: { 'application/json': jobSpecSchema },
    auth: true,
    responses: { 202: 'the queued job', 400: 'a bad field, named in error.field', 401: JOB[401], 413: 'the body is over 64 KiB', 415: 'not application/json', 429: 'MAX_QUEUED_JOBS wait; see Retry-After' },
  },
  {
    method: 'get',
    path: '/jobs',
    summary: 'The jobs, newest first, a page at a time: `has_more` says whether older ones follow `after` the last',
    query: jobPageSchema,
    auth: true,
    responses: { 200: 'the list', 400: 'a bad limit, or after: an unknown job', 401: JOB[401] },
  },
  { method: 'get', path: '/jobs/:id', summary: 'One job: status, step, loss, checkpoint', auth: true, responses: { 200: 'the job', ...JOB } },
  {
    method: 'get',
    path: '/jobs/:id/events',
    summary: "The job's events as SSE (history, then live; Last-Event-ID resumes), closed by its done event",
    auth: true,
    responses: { 200: { description: 'events pretraining, pretraining_eval, progress, eval, checkpoint, error, done', type: 'text/event-stream' }, ...JOB },
  },
  { method: 'post', path: '/jobs/:id/cancel', summary: 'Cancel a queued or running job (a running one checkpoints its step)', auth: true, responses: { 202: 'the job', ...JOB, 409: 'the job has ended' } },
  { method: 'post', path: '/jobs/:id/resume', summary: 'Resume a cancelled, failed or interrupted job from its last checkpoint', auth: true, responses: { 202: 'the job', ...JOB, 409: 'the job cannot be resumed', 429: 'MAX_QUEUED_JOBS wait' } },
];

export function trainingRouter(jobs: TrainingJobs, config: Pick<ServerConfig, 'apiKey' | 'heartbeatMs'>): Hono {
  const router = new Hono();
  router.use(requireApiKey(config.apiKey));

  router.post('/jobs', acceptBodies(['json']), controlBodyLimit(), async (c) => {
    const job = await jobs.submit(parseJobSpec(await readJsonObject(c)));
    c.header('Location', `${c.req.path.replace(/\/$/, '')}/${job.id}`);
    return c.json(job, 202);
  });

  router.get('/jobs', async (c) => {
    const { limit, after } = parseFields(jobPageSchema, c.req.query());
    // One more than the page: whether older jobs follow, without counting them all.
    const listed = await jobs.list({ limit: limit + 1, after });
    if (!listed) throw invalidField('after', `no training job '${after}'`);
    return c.json({ object: 'list', data: listed.slice(0, limit), has_more: listed.length > limit });
  });

  router.get('/jobs/:id', async (c) => c.json(await requireJob(jobs, c.req.param('id'))));

  router.post('/jobs/:id/cancel', async (c) => c.json(await jobs.cancel((await requireJob(jobs, c.req.param('id'))).id), 202));

  router.post('/jobs/:id/resume', async (c) => c.json(await jobs.resume((await requireJob(jobs, c.req.param('id'))).id), 202));

  router.get('/jobs/:id/events', async (c) => {
    const { id } = await requireJob(jobs, c.req.param('id'));
    // A reconnecting EventSource sends the id of the last event it saw: replay only what follows.
    const after = Math.max(0, Number.parseInt(c.req.header('last-event-id') ?? '0', 10) || 0);
    let unsubscribe = () => {};
    return eventStream(c, {
      heartbeatMs: config.heartbeatMs,
      produce: async (stream, signal) => {
        const live = new Channel<JobEvent>();
        // Subscribed before the history is read, so that no event falls between the two.
        unsubscribe = jobs.subscribe(id, (event) => (event ? live.push(event) : live.close()));
        signal.addEventListener('abort', () => live.close(), { once: true });
        let last = after;
        const write = async (event: JobEvent) => {
          if (event.seq <= last) return;
          last = event.seq;
          await writeEvent(stream, event);
        };
        // The status before the history: a job seen ended has recorded every event of its run by then,
        // and one seen running sends what it records after the history's read to \`live\`.
        const ended = !ACTIVE_STATUSES.includes((await jobs.get(id))!.status);
        const history = await jobs.events(id, after);
        // A job resumed after it ended holds that earlier end in its history: only its last `done`,
        // once it has ended again, is the stream's end.
        for (const [i, event] of history.entries()) {
          if (event.type !== 'done' || (ended && i === history.length - 1)) await write(event);
        }
        if (ended) return writeEnd(stream, jobs, id, history.at(-1));
        // Every end of a job is a `done` event; the channel closes earlier only when the client
        // leaves or the job system closes (which sends the running job's end just before).
        for await (const event of live) {
          await write(event);
          if (event.type === 'done') return;
        }
        // The job system closed on a job that had not ended here: still queued, or run by another replica.
        if (!signal.aborted) throw new ApiError(503, 'not_ready', 'the server is shutting down; follow the job again (with Last-Event-ID) on a server that is up');
      },
      onEnd: () => unsubscribe(),
    });
  });

  return router;
}

async function requireJob(jobs: TrainingJobs, id: string): Promise<Job> {
  const job = await jobs.get(id);
  if (!job) throw new ApiError(404, 'not_found', `no training job '${id}'`);
  return job;
}

/**
 * Ends the stream of a job that has ended with its terminal `done` event, unless `written` (the last
 * event sent) was it: also when Last-Event-ID is past it, so that a stream never closes without
 * saying how the job ended. A job store from before terminal events were recorded gets one made from
 * the job's row.
 */
async function writeEnd(stream: SSEStreamingApi, jobs: TrainingJobs, id: string, written: JobEvent | undefined): Promise<void> {
  if (written?.type === 'done') return;
  const done = (await jobs.events(id)).filter((event) => event.type === 'done').at(-1);
  if (done) return writeEvent(stream, done);
  const job = (await jobs.get(id))!;
  const data = { status: job.status, step: job.step, checkpoint: job.checkpoint, ...(job.error !== null && { reason: job.error }), at: job.finished_at };
  await stream.writeSSE({ event: 'done', data: JSON.stringify(data) });
}

/** A job event as SSE; the job's own error event is `{ error: { code, message } }` (docs/api.md). */
function writeEvent(stream: SSEStreamingApi, event: JobEvent): Promise<void> {
  const data = event.type === 'error' ? event.data : { ...event.data, at: event.at };
  return stream.writeSSE({ event: event.type, id: String(event.seq), data: JSON.stringify(data) });
}
