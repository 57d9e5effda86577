/**
 * The training panel: starts a job on synthetic shapes (POST /v1/training/jobs), with or without
 * vision pretraining first, follows its events (GET .../events) into the loss chart and the stats,
 * cancels or resumes it, and loads its final checkpoint into the server (PUT /v1/models/current).
 * A page opened while a job runs or waits follows that job.
 */
import { ApiError, describeError } from './api.js';
import { LossChart } from './loss-chart.js';
import { readEvents } from './sse.js';

/**
 * The model field: "small" sends none, so the server trains its default small model; "tiny" (about
 * 55k parameters) trains in seconds on a CPU, for a first look at the loop.
 */
const MODELS = {
  small: undefined,
  tiny: { imageSize: 16, patchSize: 8, visionDim: 32, visionDepth: 1, visionHeads: 2, visionMlpDim: 64, projectionDim: 32, textDim: 32, depth: 1, segmentLen: 8, heads: 2, dimHead: 16 },
};

/** Evaluations per stage: often enough for a curve, rare enough not to slow training much. */
const EVALS_PER_STAGE = 10;
/** Reconnections in a row of the events stream after it drops mid-job (a network blip, a proxy timeout). */
const RECONNECTS = 5;
/** A job in these states can be resumed from its last checkpoint. */
const RESUMABLE = ['cancelled', 'failed', 'interrupted'];

export function setupTraining(panel, api, modelInfo, apiKeyInput) {
  const $ = (selector) => panel.querySelector(selector);
  const form = $('#training-form');
  const startButton = $('#training-start');
  const cancelButton = $('#training-cancel');
  const resumeButton = $('#training-resume');
  const loadButton = $('#training-load');
  const chart = new LossChart($('#loss-chart'));
  const progress = $('#job-progress');
  const status = $('#training-status');
  const errorLine = $('#training-error');
  let job;
  let following;

  const stat = (id, text) => ($(`#job-${id}`).textContent = text);
  const showError = (message) => {
    errorLine.textContent = message;
    errorLine.hidden = !message;
  };
  const setStatus = (state) => {
    panel.dataset.state = state;
    stat('status', state);
    const active = state === 'queued' || state === 'running';
    startButton.disabled = active || state === 'starting';
    cancelButton.disabled = !active;
    resumeButton.disabled = !RESUMABLE.includes(state);
  };

  // Progress of either stage: the step counts from the job's start, as the chart does. A loss that
  // is no longer finite comes as null: the job is diverging, and its error event says so.
  const showProgress = (stage, { step, steps, loss, samples_per_sec, eta_s }, stepsBefore) => {
    setStatus('running');
    stat('stage', stage);
    stat('step', `${step} / ${steps}`);
    stat('loss', fixed(loss, 4));
    stat('speed', fixed(samples_per_sec, 1));
    stat('eta', formatDuration(eta_s));
    progress.value = stepsBefore + step;
  };

  const onEvent = ({ event, data, id }) => {
    job.lastEventId = id;
    if (event === 'pretraining') {
      chart.addVisionLoss(data.step, data.loss);
      showProgress('vision', data, 0);
    } else if (event === 'pretraining_eval') {
      stat('vision-accuracy', Object.entries(data.accuracy).map(([name, value]) => `${name} ${(100 * value).toFixed(1)}%`).join(' · '));
    } else if (event === 'progress') {
      chart.addLoss(data.step, data.loss);
      showProgress('captions', data, job.visionSteps);
    } else if (event === 'eval') {
      chart.addEval(data.step, data.eval_loss);
      stat('eval-loss', fixed(data.eval_loss, 4));
    } else if (event === 'checkpoint') {
      status.textContent = `Checkpoint saved at step ${data.step}.`;
    } else if (event === 'error') {
      showError(`${data.error.message} (${data.error.code})`);
    } else if (event === 'done') {
      job.checkpoint = data.checkpoint;
      setStatus(data.status);
      if (data.status === 'succeeded') stat('eta', formatDuration(0));
      status.textContent = data.checkpoint ? `Finished (${data.status}); last checkpoint: ${data.checkpoint}` : `Finished (${data.status}).`;
      loadButton.disabled = !(data.status === 'succeeded' && data.checkpoint);
    }
    return event === 'done';
  };

  /**
   * Shows `record` (a job as the API describes it) and follows its events: all of them, or those
   * after `after` (a resumed job's, whose earlier run's progress and error the page has shown).
   */
  const track = (record, after = '') => {
    following?.abort();
    const visionSteps = record.spec.vision_pretraining?.steps ?? 0;
    job = { ...record, visionSteps };
    chart.reset(job.steps, visionSteps);
    for (const id of ['stage', 'step', 'loss', 'eval-loss', 'speed', 'eta', 'vision-accuracy']) stat(id, '–');
    progress.max = visionSteps + job.steps;
    progress.value = 0;
    loadButton.disabled = true;
    setStatus(job.status);
    status.textContent = `Job ${job.id}`;
    following = new AbortController();
    // This follow's own signal: a later job replaces `following`.
    const { signal } = following;
    follow(api, job.id, onEvent, signal, after).catch((error) => {
      if (signal.aborted) return;
      showError(describeError(error));
      // The job may still run; this page no longer knows, and lets another start.
      setStatus('unknown');
      status.textContent = `Lost track of job ${job.id}; reload the page to follow it again.`;
    });
  };

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (!form.reportValidity()) return;
    following?.abort();
    showError('');
    loadButton.disabled = true;
    status.textContent = '';
    setStatus('starting');
    const fields = new FormData(form);
    const steps = Number(fields.get('steps'));
    const batchSize = Number(fields.get('batch_size'));
    const visionSteps = Number(fields.get('vision_steps'));
    const body = {
      model: MODELS[fields.get('model')],
      data: { type: 'synthetic-shapes' },
      train: { steps, batch_size: batchSize, lr: Number(fields.get('lr')), eval_every: evalEvery(steps) },
    };
    // The vision stage keeps the server's learning rate for it: the caption stage's suits a different task.
    if (visionSteps > 0) body.vision_pretraining = { steps: visionSteps, batch_size: batchSize, eval_every: evalEvery(visionSteps) };
    try {
      track(await api.send('POST', '/v1/training/jobs', body));
    } catch (error) {
      showError(describeError(error));
      setStatus('idle');
    }
  });

  cancelButton.addEventListener('click', async () => {
    // Said before asking: a queued job's done event can arrive before the answer, and has the last word.
    status.textContent = 'Cancelling…';
    try {
      await api.send('POST', `/v1/training/jobs/${job.id}/cancel`);
    } catch (error) {
      showError(describeError(error));
    }
  });

  resumeButton.addEventListener('click', async () => {
    resumeButton.disabled = true;
    showError('');
    try {
      track(await api.send('POST', `/v1/training/jobs/${job.id}/resume`), job.lastEventId);
    } catch (error) {
      showError(describeError(error));
      resumeButton.disabled = false;
    }
  });

  // A page opened (or reloaded) while a job runs or waits follows it. Without the API key that the
  // server may ask for, the list is refused: the page asks again once a key is typed.
  const followActive = async () => {
    if (job) return;
    const list = await api.get('/v1/training/jobs').then((response) => response.json(), () => undefined);
    const active = list?.data.find((record) => record.status === 'running' || record.status === 'queued');
    if (active && !job) track(active);
  };
  apiKeyInput.addEventListener('change', followActive);
  followActive();

  loadButton.addEventListener('click', async () => {
    loadButton.disabled = true;
    status.textContent = 'Loading the checkpoint into the inference workers…';
    try {
      modelInfo.show(await api.send('PUT', '/v1/models/current', { checkpoint: job.checkpoint }));
      status.textContent = `Now serving ${job.checkpoint}`;
    } catch (error) {
      showError(describeError(error));
      loadButton.disabled = false;
    }
  });
}

/**
 * Feeds the job's events to `onEvent` until it returns true (the job's done event). The stream
 * replays the history first; after a drop it resumes after the last event seen (Last-Event-ID).
 */
async function follow(api, id, onEvent, signal, after) {
  let lastEventId = after;
  // Drops in a row: a connection that delivers events starts the count again.
  let drops = 0;
  for (;;) {
    let waitSeconds;
    try {
      const headers = lastEventId ? { 'last-event-id': lastEventId } : {};
      const response = await api.get(`/v1/training/jobs/${encodeURIComponent(id)}/events`, { headers, signal });
      for await (const event of readEvents(response.body, signal)) {
        drops = 0;
        lastEventId = event.id;
        if (onEvent(event)) return;
      }
    } catch (error) {
      // An answer (401, 404) will not change by asking again: a dropped connection is retried, and so
      // is a server that is busy or restarting (429, 503), after the wait it asks for.
      const passing = !(error instanceof ApiError) || error.status === 429 || error.status === 503;
      if (signal.aborted || !passing || drops >= RECONNECTS) throw error;
      waitSeconds = error.retryAfter;
    }
    if (drops >= RECONNECTS) throw new Error('the events stream ended before the job did');
    drops++;
    // A follow stopped while it waits (another job started) ends at once.
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, 1000 * (waitSeconds ?? drops));
      signal.addEventListener('abort', () => resolve(clearTimeout(timer)), { once: true });
    });
    if (signal.aborted) return;
  }
}

function evalEvery(steps) {
  return Math.max(1, Math.round(steps / EVALS_PER_STAGE));
}

/** A number to `digits` decimals; '–' for none (null, once a loss is no longer finite). */
function fixed(value, digits) {
  return Number.isFinite(value) ? value.toFixed(digits) : '–';
}

function formatDuration(seconds) {
  if (!Number.isFinite(seconds)) return '–';
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}
