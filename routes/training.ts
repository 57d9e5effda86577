/**
 * Training jobs: POST /jobs (202 + Location), GET /jobs, GET /jobs/:id, GET /jobs/:id/events (SSE:
 * the job's history, then its live events, closed when the job ends), POST /jobs/:id/cancel and
 * POST /jobs/:id/resume. With API_KEY set, every route needs it as a bearer token.
 */
import { Hono } from 'hono';
import type { SSEStreamingApi } from 'hono/streaming';
import { requireApiKey } from '../src/auth.ts';
import type { ServerConfig } from '../src/config.ts';
import { DataPathError } from '../src/data/paths.ts';
import { ApiError } from '../src/errors.ts';
import { JobStateError, type TrainingScheduler } from '../src/jobs/scheduler.ts';
import { ACTIVE_STATUSES, type Job, type JobEvent } from '../src/jobs/store.ts';
import { bodyKind, CONTROL_BODY_BYTES, readJsonObject, uploadLimit } from '../src/request-body.ts';
import { eventStream } from '../src/sse.ts';
import { parseJobSpec, SpecError } from '../src/training/spec.ts';

export function trainingRouter(scheduler: TrainingScheduler, config: Pick<ServerConfig, 'apiKey' | 'heartbeatMs'>): Hono {
  const router = new Hono();
  router.use(requireApiKey(config.apiKey));

  router.post('/jobs', uploadLimit(CONTROL_BODY_BYTES), async (c) => {
    bodyKind(c, ['json']);
    const body = await readJsonObject(c);
    let job: Job;
    try {
      job = await scheduler.submit(parseJobSpec(body));
    } catch (error) {
      if (error instanceof SpecError || error instanceof DataPathError) throw new ApiError(400, 'invalid_request', error.message, error.field);
      throw error;
    }
    c.header('Location', `${c.req.path.replace(/\/$/, '')}/${job.id}`);
    return c.json(job, 202);
  });

  router.get('/jobs', (c) => c.json({ object: 'list', data: scheduler.list() }));

  router.get('/jobs/:id', (c) => c.json(requireJob(scheduler, c.req.param('id'))));

  router.post('/jobs/:id/cancel', (c) => c.json(changeJob(() => scheduler.cancel(requireJob(scheduler, c.req.param('id')).id)), 202));

  router.post('/jobs/:id/resume', (c) => c.json(changeJob(() => scheduler.resume(requireJob(scheduler, c.req.param('id')).id)), 202));

  router.get('/jobs/:id/events', (c) => {
    const { id } = requireJob(scheduler, c.req.param('id'));
    // A reconnecting EventSource sends the id of the last event it saw: replay only what follows.
    const after = Number.parseInt(c.req.header('last-event-id') ?? '0', 10) || 0;
    let unsubscribe = () => {};
    return eventStream(c, {
      heartbeatMs: config.heartbeatMs,
      produce: async (stream, signal) => {
        const live: JobEvent[] = [];
        let wake = () => {};
        let closed = false;
        // Subscribed before the history is read, so that no event falls between the two.
        unsubscribe = scheduler.subscribe(id, (event) => {
          if (event) live.push(event);
          else closed = true;
          wake();
        });
        signal.addEventListener('abort', () => wake(), { once: true });
        let last = after;
        const write = async (event: JobEvent) => {
          if (event.seq <= last) return;
          last = event.seq;
          await writeEvent(stream, event);
        };
        for (const event of scheduler.events(id, after)) await write(event);
        while (!signal.aborted && !closed) {
          for (let event = live.shift(); event; event = live.shift()) {
            await write(event);
            if (event.type === 'done') return;
          }
          if (!ACTIVE_STATUSES.includes(scheduler.get(id)!.status)) return;
          await new Promise<void>((resolve) => (wake = resolve));
        }
      },
      writeError: (stream, error) => stream.writeSSE({ event: 'error', data: JSON.stringify(error.toJSON()) }),
      onEnd: () => unsubscribe(),
    });
  });

  return router;
}

function requireJob(scheduler: TrainingScheduler, id: string): Job {
  const job = scheduler.get(id);
  if (!job) throw new ApiError(404, 'not_found', `no training job '${id}'`);
  return job;
}

function changeJob(change: () => Job): Job {
  try {
    return change();
  } catch (error) {
    if (error instanceof JobStateError) throw new ApiError(409, 'conflict', error.message);
    throw error;
  }
}

function writeEvent(stream: SSEStreamingApi, event: JobEvent): Promise<void> {
  return stream.writeSSE({ event: event.type, id: String(event.seq), data: JSON.stringify({ ...event.data, at: event.at }) });
}
