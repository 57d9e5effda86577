/**
 * The caption panel: an image (picked or dropped) and the sampling fields are posted as a multipart
 * form to POST /v1/captions, and the SSE answer is shown token by token as it arrives.
 */
import { describeError, request } from './api.js';
import { readEvents } from './sse.js';

export function setupCaption(panel) {
  const $ = (selector) => panel.querySelector(selector);
  const form = $('#caption-form');
  const input = $('#image');
  const output = $('#caption-text');
  const status = $('#caption-status');
  const errorLine = $('#caption-error');
  const startButton = $('#caption-start');
  const stopButton = $('#caption-stop');
  let running;

  setupImagePicker($('#drop-zone'), input, $('#preview'), $('#drop-hint'));

  const setState = (state, message = '') => {
    panel.dataset.state = state;
    status.textContent = message;
    const busy = state === 'streaming';
    output.setAttribute('aria-busy', String(busy));
    startButton.disabled = busy;
    stopButton.disabled = !busy;
  };
  const showError = (message) => {
    errorLine.textContent = message;
    errorLine.hidden = !message;
  };

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    showError('');
    if (!input.files?.length) {
      showError('Choose an image first.');
      return;
    }
    if (!form.reportValidity()) return;
    const body = new FormData(form);
    // An empty seed means "any": the server would refuse "" as a number.
    if (body.get('seed') === '') body.delete('seed');

    // The previous caption, still reading its stream to the end, gives the panel up to this one.
    running?.abort();
    const controller = new AbortController();
    running = controller;
    output.textContent = '';
    output.dataset.tokens = '0';
    setState('streaming', 'Sending the image…');
    try {
      const response = await request('/v1/captions', { method: 'POST', body, headers: { accept: 'text/event-stream' }, signal: controller.signal });
      let tokens = 0;
      for await (const { event, data } of readEvents(response.body, controller.signal)) {
        if (event === 'start') {
          setState('streaming', `Generating with ${data.model} on ${data.backend}…`);
        } else if (event === 'token') {
          output.append(data.text);
          output.dataset.tokens = String(++tokens);
        } else if (event === 'done') {
          setState('done', describeDone(data));
        } else if (event === 'error') {
          // Inside the stream the API reports a failure as an event, with the same { error: { code, message } }.
          showError(`${data.error.message} (${data.error.code})`);
          setState('error');
        }
      }
      // A stream cut without done or error (the server went away) must not look finished.
      if (panel.dataset.state === 'streaming') throw new Error('the stream ended before the caption was done');
    } catch (error) {
      if (running !== controller) return;
      if (controller.signal.aborted) {
        setState('stopped', 'Stopped.');
      } else {
        showError(describeError(error));
        setState('error');
      }
    }
  });

  stopButton.addEventListener('click', () => running?.abort());
}

/** Shows the file in the input, and lets a file dropped on the zone become the input's file. */
function setupImagePicker(zone, input, preview, hint) {
  const showPreview = () => {
    const file = input.files?.[0];
    if (preview.src) URL.revokeObjectURL(preview.src);
    preview.hidden = !file;
    preview.src = file ? URL.createObjectURL(file) : '';
    hint.textContent = file ? `${file.name} (${formatBytes(file.size)}): choose or drop another` : 'Choose an image, or drop one here';
  };
  input.addEventListener('change', showPreview);

  // Without preventDefault on dragover, the browser would open a dropped file instead of handing it over.
  for (const type of ['dragenter', 'dragover']) {
    zone.addEventListener(type, (event) => {
      event.preventDefault();
      zone.classList.add('dragging');
    });
  }
  zone.addEventListener('dragleave', () => zone.classList.remove('dragging'));
  zone.addEventListener('drop', (event) => {
    event.preventDefault();
    zone.classList.remove('dragging');
    const [file, ...others] = event.dataTransfer?.files ?? [];
    if (!file) return;
    // A caption is of one image: the first of several dropped.
    const chosen = new DataTransfer();
    chosen.items.add(file);
    input.files = chosen.files;
    showPreview();
    if (others.length > 0) hint.textContent += ` (only the first of the ${others.length + 1} dropped files)`;
  });
  // A drop that misses the zone must not navigate away from the page.
  window.addEventListener('dragover', (event) => event.preventDefault());
  window.addEventListener('drop', (event) => event.preventDefault());
}

function describeDone({ finish_reason, usage, timings }) {
  const parts = [
    `${usage.completion_tokens} tokens (${finish_reason})`,
    `first token ${timings.time_to_first_token_ms} ms`,
    `${timings.tokens_per_second} tokens/s`,
    `total ${timings.total_ms} ms`,
    `queue ${timings.queue_ms} ms`,
  ];
  return `Done: ${parts.join(' · ')}`;
}

function formatBytes(bytes) {
  return bytes < 1024 * 1024 ? `${Math.ceil(bytes / 1024)} kB` : `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}
