/**
 * The real process, as `npm start` runs it: startup without a checkpoint, and SIGTERM draining.
 */
import { describe, expect, test } from 'bun:test';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Subprocess } from 'bun';
import { tinyJob } from '../training/helpers.ts';
import { chunks, curl, eventually, form, imageBlob, jpeg, sse } from '../../routes/helpers.ts';

interface Started {
  child: Subprocess<'ignore', 'pipe', 'inherit'>;
  url: string;
  log: string[];
}

async function spawnServer(env: Record<string, string>, command = ['bun', 'src/http/server.ts']): Promise<Started> {
  const modelDir = join(await mkdtemp(join(tmpdir(), 'titans-mm-empty-')), 'none');
  const child = Bun.spawn(command, {
    env: { ...process.env, PORT: '0', MODEL_DIR: modelDir, INFERENCE_WORKERS: '1', ...env },
    stdout: 'pipe',
    stderr: 'inherit',
  });
  const log: string[] = [];
  const lines = readLines(child.stdout);
  for (;;) {
    const { value, done } = await lines.next();
    if (done) throw new Error(`server exited before listening:\n${log.join('\n')}`);
    log.push(value);
    const url = /listening on (\S+)/.exec(value)?.[1];
    if (url) {
      void (async () => {
        for await (const line of lines) log.push(line);
      })();
      return { child, url, log };
    }
  }
}

async function* readLines(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  const decoder = new TextDecoder();
  let buffer = '';
  for await (const chunk of chunks(stream)) {
    buffer += decoder.decode(chunk, { stream: true });
    let newline: number;
    while ((newline = buffer.indexOf('\n')) >= 0) {
      yield buffer.slice(0, newline);
      buffer = buffer.slice(newline + 1);
    }
  }
}

describe('bun src/http/server.ts', () => {
  test('without a checkpoint, serves a fresh untrained model and says so; SIGTERM lets a running stream finish, then exits 0', async () => {
    const { child, url, log } = await spawnServer({});
    try {
      expect(log.join('\n')).toContain('UNTRAINED');
      const models = (await (await fetch(`${url}/v1/models`)).json()) as any;
      expect(models.data[0]).toMatchObject({ id: 'untrained', untrained: true, checkpoint: null, card: { summary: expect.stringContaining('untrained') } });

      const response = await fetch(`${url}/v1/captions`, { method: 'POST', body: form({ image: imageBlob(await jpeg()), max_tokens: '80', seed: '3' }) });
      const events: { event: string; data: any }[] = [];
      let afterSigterm: number | string | undefined;
      for await (const item of sse(response)) {
        if (item.type !== 'event') continue;
        events.push(item);
        // The first token event, whatever its index: the untrained model's random bytes may start
        // with an incomplete UTF-8 character, which sends no event of its own.
        if (item.event === 'token' && afterSigterm === undefined) {
          child.kill('SIGTERM');
          await Bun.sleep(50);
          afterSigterm = await fetch(`${url}/readyz`).then((r) => r.status, () => 'refused');
        }
      }
      // Still listening, and not ready.
      expect(afterSigterm).toBe(503);
      expect(events[0]).toMatchObject({ event: 'start', data: { untrained: true } });
      expect(events.at(-1)!.event).toBe('done');
      expect(events.at(-1)!.data.finish_reason).not.toBe('aborted');
      expect(await child.exited).toBe(0);
      expect(log.join('\n')).toContain('shut down');
    } finally {
      child.kill();
    }
    // A process start and 80 tokens of an untrained model: more than bun's 5 s on a busy machine.
  }, 30_000);

  test('during the SIGTERM drain new requests get 503 with Retry-After (not a refused connection), and a running training job checkpoints the step it reached', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'titans-mm-drain-'));
    const { child, url, log } = await spawnServer({ DATA_DIR: dataDir, SHUTDOWN_TIMEOUT_MS: '30000' });
    try {
      const submitted = await fetch(`${url}/v1/training/jobs`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(tinyJob({ steps: 5000 })) });
      expect(submitted.status).toBe(202);
      const { id } = (await submitted.json()) as { id: string };
      const following = sse(await fetch(`${url}/v1/training/jobs/${id}/events`));
      let reached = 0;
      while (reached < 3) {
        const { value } = await following.next();
        if (value?.type === 'event' && value.event === 'progress') reached = value.data.step;
      }
      // A caption that is still streaming holds the drain open while the checks below run.
      const captioning = await fetch(`${url}/v1/captions`, { method: 'POST', body: form({ image: imageBlob(await jpeg()), max_tokens: '1000', seed: '3', temperature: '1' }) });
      const caption = sse(captioning);
      while ((await caption.next()).value?.event !== 'token');

      child.kill('SIGTERM');
      await eventually(() => fetch(`${url}/readyz`).then((r) => r.status), (status) => status === 503);
      // The real curl: answered (exit 0) with 503 and Retry-After, not refused (exit 7).
      const refused = await curl(['-i', '-F', 'image=@examples/red-circle.png', `${url}/v1/captions`]);
      expect(refused.exitCode).toBe(0);
      expect(refused.stdout).toStartWith('HTTP/1.1 503');
      expect(Number(/^retry-after: (\d+)/im.exec(refused.stdout)?.[1])).toBeGreaterThanOrEqual(1);
      expect(JSON.parse(refused.stdout.slice(refused.stdout.indexOf('{'))).error.code).toBe('not_ready');
      const healthz = await curl(['-w', '\n%{http_code}', `${url}/healthz`]);
      expect(healthz.stdout.trim().split('\n').at(-1)).toBe('200');
      expect(JSON.parse(healthz.stdout.trim().split('\n')[0]!)).toMatchObject({ status: 'draining', draining: true });

      // The job's stream ends with its end: interrupted at the step it reached, with a checkpoint of that step.
      const events: { event: string; data: any }[] = [];
      for await (const item of following) if (item.type === 'event') events.push(item);
      const done = events.at(-1)!;
      const lastStep = events.filter((e) => e.event === 'progress').at(-1)?.data.step ?? reached;
      expect(done).toMatchObject({ event: 'done', data: { status: 'interrupted', step: lastStep, reason: expect.stringContaining('shut down') } });
      expect(done.data.checkpoint).toBe(join('jobs', id, `step-${String(lastStep).padStart(6, '0')}`));

      // The caption's client goes away: nothing holds the drain any more.
      await caption.return(undefined);
      await captioning.body?.cancel();
      expect(await child.exited).toBe(0);
      const trainer = JSON.parse(await readFile(join(dataDir, done.data.checkpoint, 'trainer.json'), 'utf8'));
      expect(trainer.step).toBe(lastStep);
      expect(existsSync(join(dataDir, done.data.checkpoint, 'model.safetensors'))).toBe(true);
      expect(log.join('\n')).toContain('shut down');
    } finally {
      child.kill();
    }
  }, 60_000);

  test('npm start: a SIGTERM sent to npm, as Docker or systemd send it, reaches the server, which drains and exits 0', async () => {
    const { child, url, log } = await spawnServer({}, ['npm', 'start']);
    try {
      child.kill('SIGTERM');
      expect(await child.exited).toBe(0);
      expect(log.join('\n')).toContain('shut down');
      // No server left behind by npm's shell.
      expect(await fetch(`${url}/healthz`).then(() => 'answered', () => 'refused')).toBe('refused');
    } finally {
      child.kill();
    }
  }, 30_000);

  test('a SIGTERM while the server starts, or as soon as it listens, drains it once started: exit 0', async () => {
    for (const when of [/inference worker/, /listening on/]) {
      const modelDir = join(await mkdtemp(join(tmpdir(), 'titans-mm-empty-')), 'none');
      const child = Bun.spawn(['bun', 'src/http/server.ts'], { env: { ...process.env, PORT: '0', MODEL_DIR: modelDir, INFERENCE_WORKERS: '1' }, stdout: 'pipe', stderr: 'inherit' });
      try {
        const log: string[] = [];
        for await (const line of readLines(child.stdout)) {
          log.push(line);
          if (when.test(line)) child.kill('SIGTERM');
        }
        expect(await child.exited).toBe(0);
        expect(log.join('\n')).toMatch(/listening on[^]*shut down/);
      } finally {
        child.kill();
      }
    }
  }, 60_000);

  test('SIGTERM cuts streams and JSON requests that outlast SHUTDOWN_TIMEOUT_MS and still exits 0', async () => {
    // Two workers: the JSON request runs beside the stream, not before it.
    const { child, url } = await spawnServer({ SHUTDOWN_TIMEOUT_MS: '200', INFERENCE_WORKERS: '2' });
    try {
      const json = fetch(`${url}/v1/chat/completions`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ messages: [{ role: 'user', content: 'hi' }], max_tokens: 1000, logit_bias: { 254: -100 } }) });
      const response = await fetch(`${url}/v1/captions`, { method: 'POST', body: form({ image: imageBlob(await jpeg()), max_tokens: '1000', temperature: '1', seed: '3' }) });
      let last: { event: string; data: any } | undefined;
      let tokens = 0;
      for await (const item of sse(response)) {
        if (item.type !== 'event') continue;
        last = item;
        if (item.event === 'token' && tokens++ === 0) child.kill('SIGTERM');
      }
      // Cut by the timeout, with an error event, before the 1000 tokens asked for. Sampled at
      // temperature 1, seed 3 draws no EOS from the untrained model in its first 400 tokens (greedy,
      // it ends at EOS after 26, before the timeout on a quiet machine).
      expect(last).toMatchObject({ event: 'error', data: { error: { code: 'not_ready' } } });
      expect(tokens).toBeLessThan(1000);
      // A JSON answer cut short says when to send it again, as every 503 does.
      const cut = await json;
      expect([cut.status, cut.headers.get('retry-after')]).toEqual([503, '1']);
      expect(((await cut.json()) as any).error.message).toBe('the server shut down before this generation finished');
      expect(await child.exited).toBe(0);
    } finally {
      child.kill();
    }
  }, 30_000);
});
