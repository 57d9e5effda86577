import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import { existsSync } from 'node:fs';
import { basename, join, sep } from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { renderScenePng, sceneAt } from '../../src/data/shapes.ts';
import type { RunningServer } from '../../src/http/server.ts';
import { atBaseline, eventually, form, health, imageBlob, makeCheckpoint, startTestServer } from './helpers.ts';

/** Debian's package (what .ci/run installs); CHROMIUM_PATH names another build. */
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const API_KEY = 'playground-test-key';
/** When set, the browser tests save screenshots of the page in this folder. */
const SCREENSHOTS = process.env.PLAYGROUND_SCREENSHOTS;

let server: RunningServer;

beforeAll(async () => {
  server = await startTestServer(await makeCheckpoint(), { API_KEY });
});

afterAll(async () => {
  await server.shutdown();
});

describe('GET / serves the playground', () => {
  test('the page and each file it links, with its content type, caching and a same-origin-only policy', async () => {
    const page = await fetch(`${server.url}/`);
    expect(page.status).toBe(200);
    expect(page.headers.get('content-type')).toBe('text/html; charset=utf-8');
    expect(page.headers.get('cache-control')).toBe('no-cache');
    expect(page.headers.get('content-security-policy')).toContain("default-src 'none'");
    const html = await page.text();
    const linked = [...html.matchAll(/(?:src|href)="([^"]+)"/g)].map((m) => m[1]!);
    expect(linked).toEqual(['/playground/icon.svg', '/playground/style.css', '/playground/main.js', '/openapi.json']);
    expect((await fetch(`${server.url}/openapi.json`)).headers.get('content-type')).toContain('application/json');

    const types: Record<string, string> = { '.svg': 'image/svg+xml', '.css': 'text/css; charset=utf-8', '.js': 'text/javascript; charset=utf-8' };
    const scripts = ['main.js', 'api.js', 'sse.js', 'model-info.js', 'caption.js', 'training.js', 'loss-chart.js'].map((f) => `/playground/${f}`);
    const bodies = [html];
    for (const path of [...new Set([...linked.filter((link) => link.startsWith('/playground/')), ...scripts])]) {
      const response = await fetch(`${server.url}${path}`);
      expect({ path, status: response.status, type: response.headers.get('content-type') }).toEqual({ path, status: 200, type: types[path.slice(path.lastIndexOf('.'))]! });
      bodies.push(await response.text());
    }
    // Every module the page imports is served: relative imports resolve under /playground/.
    const imports = bodies.flatMap((body) => [...body.matchAll(/from '\.\/([\w-]+\.js)'/g)].map((m) => `/playground/${m[1]}`));
    expect(scripts).toEqual(expect.arrayContaining([...new Set(imports)]));
    // Nothing from elsewhere: the SVG namespace is a name, never fetched.
    for (const body of bodies) expect(body.replaceAll('http://www.w3.org/2000/svg', '')).not.toMatch(/(https?:)?\/\/[a-z0-9.-]+\.[a-z]{2,}/i);
  });

  test('a known ETag is answered 304; the health routes and unknown assets are unaffected', async () => {
    const first = await fetch(`${server.url}/playground/main.js`);
    const etag = first.headers.get('etag')!;
    expect(etag).toMatch(/^"[\w-]+"$/);
    const again = await fetch(`${server.url}/playground/main.js`, { headers: { 'if-none-match': etag } });
    expect(again.status).toBe(304);
    expect((await fetch(`${server.url}/healthz`)).status).toBe(200);
    const missing = await fetch(`${server.url}/playground/nope.js`);
    expect(missing.status).toBe(404);
    expect(((await missing.json()) as { error: { code: string } }).error.code).toBe('not_found');
  });
});

const hasChromium = existsSync(CHROMIUM);
if (!hasChromium) console.warn(`skipping the playground's browser tests: no Chromium at ${CHROMIUM} (apt-get install chromium; .ci/run does)`);

describe.skipIf(!hasChromium)('the playground in headless Chromium', () => {
  let browser: Browser;
  let page: Page;
  const consoleErrors: string[] = [];
  let image: Buffer;

  beforeAll(async () => {
    image = await renderScenePng(sceneAt(1, 'validation', 0), { width: 96, height: 96 });
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    page.on('console', (message) => message.type() === 'error' && consoleErrors.push(message.text()));
    page.on('pageerror', (error) => consoleErrors.push(error.message));
    await page.goto(`${server.url}/`);
  });

  afterAll(async () => {
    await browser?.close();
  });

  const screenshot = async (name: string) => {
    if (SCREENSHOTS) await page.screenshot({ path: join(SCREENSHOTS, `playground-${name}.png`), fullPage: true });
  };

  test('shows the loaded model and its backend', async () => {
    await page.waitForSelector('#model[data-state="loaded"]');
    const { id, parameterCount, backend } = server.pool.model;
    expect(await page.textContent('#model-id')).toBe(id);
    expect(await page.textContent('#model-parameters')).toBe(parameterCount.toLocaleString('en'));
    expect(await page.textContent('#model-backend')).toStartWith(backend.name);
    // The checkpoint as the API names it: relative to the folder that holds MODEL_DIR.
    expect(await page.textContent('#model-checkpoint')).toBe(basename(server.pool.model.checkpoint!));
  });

  test('the SSE parser gives the same events however the stream is cut into chunks', async () => {
    const stream = ': heartbeat\r\nevent: token\r\ndata: {"text":"a"}\r\n\r\nid: 7\nevent:done\ndata: {"x":\ndata: 1}\n\n\rdata:plain\r\r: tail\n';
    const results = await page.evaluate(async ({ text, module }) => {
      const { SseParser } = await import(module);
      const whole = new SseParser().feed(text);
      const splits = [];
      for (let cut = 0; cut <= text.length; cut++) {
        const parser = new SseParser();
        splits.push([...parser.feed(text.slice(0, cut)), ...parser.feed(text.slice(cut))]);
      }
      return { whole, splits };
    }, { text: stream, module: '/playground/sse.js' });
    expect(results.whole).toEqual([
      { event: 'token', data: '{"text":"a"}', id: '' },
      { event: 'done', data: '{"x":\n1}', id: '7' },
      { event: 'message', data: 'plain', id: '7' },
    ]);
    for (const split of results.splits) expect(split).toEqual(results.whole);
  });

  test('an image dropped on the zone becomes the chosen image, with its preview', async () => {
    const dataTransfer = await page.evaluateHandle((bytes) => {
      const transfer = new DataTransfer();
      transfer.items.add(new File([new Uint8Array(bytes)], 'dropped.png', { type: 'image/png' }));
      return transfer;
    }, [...image]);
    await page.dispatchEvent('#drop-zone', 'dragover', { dataTransfer });
    expect(await page.getAttribute('#drop-zone', 'class')).toContain('dragging');
    await page.dispatchEvent('#drop-zone', 'drop', { dataTransfer });
    expect(await page.$eval('#image', (input) => (input as HTMLInputElement).files?.[0]?.name)).toBe('dropped.png');
    expect(await page.$eval('#preview', (img) => (img as HTMLImageElement).decode().then(() => (img as HTMLImageElement).naturalWidth))).toBe(96);
    expect(await page.textContent('#drop-hint')).toStartWith('dropped.png');
  });

  test('of several files dropped, the first is the image: the form would send them all, which the API refuses', async () => {
    const dataTransfer = await page.evaluateHandle((bytes) => {
      const transfer = new DataTransfer();
      for (const name of ['first.png', 'second.png']) transfer.items.add(new File([new Uint8Array(bytes)], name, { type: 'image/png' }));
      return transfer;
    }, [...image]);
    await page.dispatchEvent('#drop-zone', 'drop', { dataTransfer });
    expect(await page.$eval('#image', (input) => [...(input as HTMLInputElement).files!].map((file) => file.name))).toEqual(['first.png']);
    expect(await page.textContent('#drop-hint')).toEndWith('(only the first of the 2 dropped files)');
  });

  test('captions a chosen image, streaming the text token by token to the answer of JSON mode', async () => {
    await page.setInputFiles('#image', { name: 'shapes.png', mimeType: 'image/png', buffer: image });
    expect(await page.isVisible('#preview')).toBe(true);
    expect(await page.inputValue('#prompt')).toBe('This is an image of ');
    await page.fill('#max-tokens', '24');
    // Any temperature the API takes, not only multiples of 0.1.
    await page.fill('#temperature', '0.85');
    await page.fill('#seed', '7');
    // Every change of the output, as the page makes it.
    await page.evaluate(() => {
      const output = document.querySelector('#caption-text')!;
      const seen: string[] = ((window as any).captionSnapshots = []);
      new MutationObserver(() => seen.push(output.textContent ?? '')).observe(output, { childList: true, characterData: true, subtree: true });
    });
    await page.click('#caption-start');
    await page.waitForSelector('#caption[data-state="done"]', { timeout: 20_000 });

    const expected = await fetch(`${server.url}/v1/captions`, {
      method: 'POST',
      headers: { accept: 'application/json' },
      body: form({ image: imageBlob(image, 'image/png'), prompt: 'This is an image of ', max_tokens: '24', temperature: '0.85', seed: '7' }),
    }).then((r) => r.json() as Promise<{ text: string; usage: { completion_tokens: number } }>);
    expect(await page.textContent('#caption-text')).toBe(expected.text);
    expect(await page.getAttribute('#caption-text', 'data-tokens')).toBe(String(expected.usage.completion_tokens));
    const snapshots = (await page.evaluate(() => (window as any).captionSnapshots)) as string[];
    const growing = snapshots.filter((text) => text !== '');
    expect(growing.length).toBeGreaterThanOrEqual(3);
    growing.forEach((text, i) => i > 0 && expect(text.startsWith(growing[i - 1]!)).toBe(true));
    expect(growing.at(-1)).toBe(expected.text);
    expect(await page.textContent('#caption-status')).toMatch(/^Done: \d+ tokens/);
    await screenshot('caption');
  }, 30_000);

  test('Stop ends a running caption at once, and the server frees its worker', async () => {
    await page.fill('#max-tokens', '1024');
    await page.fill('#seed', '7');
    // Pressed from inside the page, in a task of its own as a user's click is, once the first token
    // shows: from outside, the click could land after this small model has reached its end of text.
    await page.evaluate(() => {
      const output = document.querySelector<HTMLElement>('#caption-text')!;
      const observer = new MutationObserver(() => {
        if (output.dataset.tokens === '0') return;
        observer.disconnect();
        setTimeout(() => {
          (window as any).tokensAtStop = output.dataset.tokens;
          document.querySelector<HTMLButtonElement>('#caption-stop')!.click();
        });
      });
      observer.observe(output, { attributes: true, attributeFilter: ['data-tokens'] });
    });
    await page.click('#caption-start');
    await page.waitForSelector('#caption[data-state="stopped"]', { timeout: 20_000 });
    const tokensAtStop = await page.evaluate(() => (window as any).tokensAtStop as string);
    expect(Number(tokensAtStop)).toBeGreaterThanOrEqual(1);
    expect(await page.getAttribute('#caption-text', 'data-tokens')).toBe(tokensAtStop);
    expect(await page.isEnabled('#caption-start')).toBe(true);
    expect(atBaseline(await eventually(() => health(server.url), atBaseline))).toBe(true);
  }, 30_000);

  test('a caption started while another still streams takes the panel over: one text, no error', async () => {
    await page.setInputFiles('#image', { name: 'shapes.png', mimeType: 'image/png', buffer: image });
    await page.fill('#max-tokens', '24');
    await page.fill('#temperature', '0');
    await page.evaluate(() => {
      const form = document.querySelector<HTMLFormElement>('#caption-form')!;
      form.requestSubmit();
      form.requestSubmit();
    });
    await page.waitForSelector('#caption[data-state="done"]', { timeout: 20_000 });
    const expected = await fetch(`${server.url}/v1/captions`, { method: 'POST', headers: { accept: 'application/json' }, body: form({ image: imageBlob(image, 'image/png'), max_tokens: '24' }) }).then((r) => r.json() as Promise<{ text: string }>);
    expect(await page.textContent('#caption-text')).toBe(expected.text);
    expect(await page.isHidden('#caption-error')).toBe(true);
    expect(atBaseline(await eventually(() => health(server.url), atBaseline))).toBe(true);
  }, 30_000);

  test("a 429 says how long its Retry-After asks to wait", async () => {
    const captions = '**/v1/captions';
    await page.route(captions, (route) => route.fulfill({ status: 429, headers: { 'retry-after': '3' }, contentType: 'application/json', body: JSON.stringify({ error: { code: 'busy', message: '2 streams are running or queued, the limit is 2; retry later' } }) }));
    try {
      await page.click('#caption-start');
      await page.waitForSelector('#caption[data-state="error"]');
      expect(await page.textContent('#caption-error')).toBe('2 streams are running or queued, the limit is 2; retry later (retry after 3 s; busy, HTTP 429)');
    } finally {
      await page.unroute(captions);
    }
  });

  test('an HTTP error is shown as the API reports it', async () => {
    await page.fill('#max-tokens', '5000');
    await page.click('#caption-start');
    await page.waitForSelector('#caption[data-state="error"]');
    expect(await page.textContent('#caption-error')).toMatch(/^max_tokens: .*\(invalid_request, HTTP 400\)$/);
    await page.fill('#max-tokens', '24');
  });

  test('trains a tiny model with a live loss chart, then serves its checkpoint', async () => {
    await page.selectOption('#training-model', 'tiny');
    await page.fill('#training-steps', '8');
    await page.fill('#training-batch', '2');
    await page.fill('#training-lr', '0.003');

    await page.click('#training-start');
    await page.waitForSelector('#training-error:not([hidden])');
    expect(await page.textContent('#training-error')).toContain('(unauthorized, HTTP 401)');

    await page.fill('#api-key', API_KEY);
    await page.click('#training-start');
    await page.waitForFunction(() => Number(document.querySelector<HTMLElement>('#loss-chart')!.dataset.lossPoints) >= 2, undefined, { timeout: 20_000 });
    await screenshot('training');
    await page.waitForSelector('#training[data-state="succeeded"]', { timeout: 30_000 });

    const chart = (name: string) => page.getAttribute('#loss-chart', name);
    expect(await chart('data-loss-points')).toBe('8');
    expect(Number(await chart('data-eval-points'))).toBeGreaterThanOrEqual(1);
    expect(await chart('aria-label')).toMatch(/^Loss chart over 8 steps, loss \d+\.\d{3} at step 8, eval loss/);
    expect(await page.textContent('#job-step')).toBe('8 / 8');
    expect(await page.textContent('#job-status')).toBe('succeeded');
    expect(await page.isDisabled('#training-cancel')).toBe(true);

    await page.click('#training-load');
    await page.waitForFunction(() => document.querySelector('#model-id')!.textContent === 'step-000008');
    const checkpoint = await page.textContent('#model-checkpoint');
    // Relative to DATA_DIR, as the API names it.
    expect(server.pool.model.checkpoint!.endsWith(`${sep}${checkpoint}`)).toBe(true);
    expect(checkpoint).toMatch(/^jobs[/\\][\w-]+[/\\]step-000008$/);
    await screenshot('trained');
  }, 60_000);

  test('a two-stage job draws its vision loss, then the caption loss, on one axis', async () => {
    await page.fill('#training-vision-steps', '2');
    await page.fill('#training-steps', '2');
    await page.click('#training-start');
    await page.waitForSelector('#training[data-state="succeeded"]', { timeout: 30_000 });
    await screenshot('two-stage');

    const chart = (name: string) => page.getAttribute('#loss-chart', name);
    expect(await chart('data-vision-points')).toBe('2');
    expect(await chart('data-loss-points')).toBe('2');
    expect(await chart('aria-label')).toMatch(/^Loss chart over 4 steps \(2 vision, then captions\), vision loss \d+\.\d{3} at step 2, loss \d+\.\d{3} at step 4, eval loss/);
    expect(await page.textContent('#job-stage')).toBe('captions');
    expect(await page.textContent('#job-step')).toBe('2 / 2');
    expect(await page.textContent('#job-vision-accuracy')).toMatch(/^shape \d+\.\d% · color \d+\.\d% · size \d+\.\d% · tokens \d+\.\d%$/);
    expect(await page.getAttribute('#job-progress', 'value')).toBe('4');
    expect(await page.getAttribute('#job-progress', 'max')).toBe('4');
  }, 60_000);

  test('a server that is busy or restarting (503, 429) while a job is followed is asked again after its Retry-After', async () => {
    const refusals = [
      { status: 503, code: 'not_ready', message: 'the server is shutting down; retry in 1 s' },
      { status: 429, code: 'busy', message: 'too many streams; retry later' },
    ];
    const events = '**/v1/training/jobs/*/events';
    await page.route(events, (route) => {
      const refusal = refusals.shift();
      if (!refusal) return route.continue();
      return route.fulfill({ status: refusal.status, headers: { 'retry-after': '1' }, contentType: 'application/json', body: JSON.stringify({ error: { code: refusal.code, message: refusal.message } }) });
    });
    try {
      await page.fill('#training-vision-steps', '0');
      await page.click('#training-start');
      await page.waitForSelector('#training[data-state="succeeded"]', { timeout: 30_000 });
      expect(refusals).toEqual([]);
      expect(await page.isDisabled('#training-start')).toBe(false);
    } finally {
      await page.unroute(events);
    }
  }, 60_000);

  test('an events stream cut again and again is followed on for as long as each connection delivers events', async () => {
    // Seven connections in a row, each cut after one event: more than the five reconnections in a row that the page allows.
    let cut = 7;
    const events = '**/v1/training/jobs/*/events';
    await page.route(events, (route) => {
      if (cut === 0) return route.continue();
      const id = 8 - cut--;
      const progress = { step: 1, steps: 2, loss: 5, samples_per_sec: 1, eta_s: 1 };
      return route.fulfill({ status: 200, contentType: 'text/event-stream', body: `id: ${id}\nevent: progress\ndata: ${JSON.stringify(progress)}\n\n` });
    });
    try {
      await page.selectOption('#training-model', 'tiny');
      await page.fill('#training-vision-steps', '0');
      await page.fill('#training-steps', '2');
      await page.click('#training-start');
      await page.waitForSelector('#training[data-state="succeeded"]', { timeout: 30_000 });
      expect(cut).toBe(0);
    } finally {
      await page.unroute(events);
    }
  }, 60_000);

  test('a job whose loss stops being finite ends failed, with its error shown, and can be resumed', async () => {
    await page.selectOption('#training-model', 'tiny');
    await page.fill('#training-vision-steps', '0');
    await page.fill('#training-steps', '30');
    await page.fill('#training-batch', '2');
    await page.fill('#training-lr', '1e30');
    await page.click('#training-start');
    await page.waitForSelector('#training[data-state="failed"]', { timeout: 30_000 });
    expect(await page.textContent('#training-error')).toContain('(training_failed)');
    expect(await page.textContent('#training-status')).toStartWith('Finished (failed)');
    expect(await page.isEnabled('#training-resume')).toBe(true);
    await page.fill('#training-lr', '0.003');
  }, 60_000);

  test('a page opened while a job runs follows it; Cancel, then Resume goes on from its checkpoint', async () => {
    const headers = { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' };
    const tiny = { imageSize: 16, patchSize: 8, visionDim: 32, visionDepth: 1, visionHeads: 2, visionMlpDim: 64, projectionDim: 32, textDim: 32, depth: 1, segmentLen: 8, heads: 2, dimHead: 16 };
    const spec = { model: tiny, data: { type: 'synthetic-shapes' }, train: { steps: 100_000, batch_size: 2, checkpoint_every: 2 } };
    const job = (await (await fetch(`${server.url}/v1/training/jobs`, { method: 'POST', headers, body: JSON.stringify(spec) })).json()) as { id: string };
    try {
      await page.reload();
      // The job list needs the key: the page asks for it once one is typed.
      await page.fill('#api-key', API_KEY);
      await page.dispatchEvent('#api-key', 'change');
      await page.waitForSelector('#training[data-state="running"]', { timeout: 20_000 });
      expect(await page.textContent('#training-status')).toBe(`Job ${job.id}`);
      await page.waitForFunction(() => Number(document.querySelector<HTMLElement>('#loss-chart')!.dataset.lossPoints) >= 3, undefined, { timeout: 20_000 });
      await page.click('#training-cancel');
      await page.waitForSelector('#training[data-state="cancelled"]', { timeout: 20_000 });
      const stoppedAt = Number((await page.textContent('#job-step'))!.split(' / ')[0]);
      await page.click('#training-resume');
      await page.waitForFunction((after) => Number(document.querySelector('#job-step')!.textContent!.split(' / ')[0]) > after, stoppedAt, { timeout: 20_000 });
      expect(await page.getAttribute('#training', 'data-state')).toBe('running');
    } finally {
      await fetch(`${server.url}/v1/training/jobs/${job.id}/cancel`, { method: 'POST', headers });
    }
    await page.waitForSelector('#training[data-state="cancelled"]', { timeout: 20_000 });
  }, 60_000);

  test('fits a narrow screen without sideways scrolling', async () => {
    await page.setViewportSize({ width: 360, height: 800 });
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
    expect(overflow).toBe(0);
    await screenshot('narrow');
  });

  test('logged no console errors but the refused requests the tests provoked', () => {
    const unexpected = consoleErrors.filter((text) => !/the server responded with a status of (400|401|429|503)/.test(text));
    expect(unexpected).toEqual([]);
  });
});
