import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import { mkdtemp, readdir, readFile, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { extname, join } from 'node:path';
import { loadServerConfig } from '../../src/http/settings.ts';
import { startServer, type RunningServer } from '../../src/http/server.ts';
import { COLORS, SHAPES } from '../../src/data/shapes.ts';
import { parseCaption } from '../../src/evaluation/caption-parser.ts';
import { haystackAt } from '../../src/data/needle.ts';
import { DEFAULT_PROMPT } from '../../src/inference/generation.ts';
import { PRESETS } from '../../src/training/presets.ts';
import sharp from 'sharp';
import { allEvents, curl, form, imageBlob, parseSseText } from './helpers.ts';

const ROOT = join(import.meta.dir, '../..');
const EXAMPLES = join(ROOT, 'examples');
// The right caption of each example image. The bundled model does not write all of them yet: its
// exact-match accuracy is what `bun run eval` measures, and the README states it.
const examples: Record<string, string> = JSON.parse(await readFile(join(EXAMPLES, 'captions.json'), 'utf8'));
let server: RunningServer;

beforeAll(async () => {
  // The configuration of `npm start`, run from the repository: MODEL_DIR defaults to models/default.
  const config = loadServerConfig({ PORT: '0', DATA_DIR: await mkdtemp(join(tmpdir(), 'titans-mm-default-')), INFERENCE_WORKERS: '1' });
  server = await startServer({ ...config, modelDir: join(ROOT, config.modelDir) }, () => {});
});

afterAll(async () => {
  await server?.shutdown();
});

describe('the bundled default model', () => {
  test('is a trained checkpoint of at most 25 MB, without optimizer state', async () => {
    const dir = join(ROOT, 'models', 'default');
    const files = await readdir(dir);
    expect(files).toContain('model.safetensors');
    expect(files).not.toContain('optimizer.safetensors');
    const sizes = await Promise.all(files.map(async (file) => (await stat(join(dir, file))).size));
    expect(sizes.reduce((a, b) => a + b, 0)).toBeLessThanOrEqual(25 * 1024 * 1024);
  });

  test('is what the shapes preset trains: every model option of the preset is the checkpoint\'s', async () => {
    const { model } = JSON.parse(await readFile(join(ROOT, 'models', 'default', 'config.json'), 'utf8'));
    expect(model).toMatchObject(PRESETS.shapes!.model as object);
  });

  test('its ablation, models/ablation/shapes-attention-only, is what the shapes-attention-only preset trains', async () => {
    const { model } = JSON.parse(await readFile(join(ROOT, 'models', 'ablation', 'shapes-attention-only', 'config.json'), 'utf8'));
    expect(model).toMatchObject(PRESETS['shapes-attention-only']!.model as object);
    expect(model.neuralMemoryLayers).toEqual([]);
  });

  test('GET /v1/models says what it knows: the synthetic shapes of docs/shapes.md, nothing else; so does the README\'s first screen', async () => {
    const { data } = (await (await fetch(`${server.url}/v1/models`)).json()) as { data: { checkpoint: string; card: Record<string, string> }[] };
    expect(data[0]!.checkpoint).toBe('default');
    const { summary, trained_on, limitations } = data[0]!.card;
    expect(summary).toContain('synthetic shape scenes, and of nothing else');
    expect(trained_on).toContain('docs/shapes.md');
    expect(limitations).toContain('photograph');
    expect(limitations).toContain('logprobs');
    const firstScreen = (await readFile(join(ROOT, 'README.md'), 'utf8')).split('\n').slice(0, 30).join('\n');
    expect(firstScreen).toContain('docs/shapes.md');
    expect(firstScreen).toMatch(/knows only/);
  });

  test('a photo-like picture gets a confident-sounding caption, and logprobs show how sure each byte was', async () => {
    const photo = await sharp({ create: { width: 300, height: 200, channels: 3, background: 'black', noise: { type: 'gaussian', mean: 120, sigma: 60 } } }).jpeg().toBuffer();
    const response = await fetch(`${server.url}/v1/captions`, { method: 'POST', headers: { Accept: 'application/json' }, body: form({ image: imageBlob(photo), logprobs: 'true', top_logprobs: '2' }) });
    const body = (await response.json()) as { text: string; logprobs: { content: { logprob: number; top_logprobs: unknown[] }[] } };
    expect(body.logprobs.content.length).toBeGreaterThan(0);
    expect(body.logprobs.content.every((t) => t.logprob <= 0 && t.top_logprobs.length === 2)).toBe(true);
  }, 30_000);

  // The README's curl, without a temperature: a caption is greedy unless the client asks to sample.
  test.each(Object.keys(examples))('streams a caption of the data set\'s form for examples/%s to the real curl', async (file) => {
    const { stdout, exitCode } = await curl(['-N', '-F', `image=@${join(EXAMPLES, file)}`, `${server.url}/v1/captions`]);
    expect(exitCode).toBe(0);
    const events = parseSseText(stdout);
    expect(events[0]!.data).toMatchObject({ model: 'default', untrained: false });
    const done = events.at(-1)!;
    expect(done.event).toBe('done');
    expect(done.data.finish_reason).toBe('eos');
    expect(done.data.text).toEndWith('.');
    const parsed = parseCaption(done.data.text);
    expect(parsed).not.toBeNull();
    for (const object of parsed!.objects) {
      expect(['small', 'large']).toContain(object.size);
      expect(Object.keys(COLORS)).toContain(object.color);
      expect(SHAPES as readonly string[]).toContain(object.shape);
    }
  }, 30_000);

  // Issue 19: the memory is bounded by construction, the recipe places the image where training did,
  // and the memory starts afresh at the image's segment, so the second object is not lost.
  test.each(Object.keys(examples))('after 4,000 bytes of other text, examples/%s gets its caption, both objects of two', async (file) => {
    const before = haystackAt(0, 'validation', 0, 'sentences', 4000 - DEFAULT_PROMPT.length).text;
    const image = imageBlob(await readFile(join(EXAMPLES, file)), `image/${extname(file).slice(1).replace('jpg', 'jpeg')}`);
    const response = await fetch(`${server.url}/v1/captions`, { method: 'POST', headers: { Accept: 'application/json' }, body: form({ image, prompt: before + DEFAULT_PROMPT }) });
    expect(response.status).toBe(200);
    const body = (await response.json()) as { text: string; usage: { prompt_tokens: number } };
    expect(body.usage.prompt_tokens).toBeGreaterThan(4000);
    expect(body.text).toBe(examples[file]!);
  }, 60_000);

  test('text held back for a stop string is released with its own token when EOS follows', async () => {
    // Every caption ends with '.', which could begin the stop string '.!' until EOS comes instead.
    const image = imageBlob(await readFile(join(EXAMPLES, 'red-circle.png')), 'image/png');
    const response = await fetch(`${server.url}/v1/captions`, { method: 'POST', body: form({ image, temperature: '0', stop: '.!' }) });
    const events = await allEvents(response);
    const tokens = events.filter((e) => e.event === 'token').map((e) => e.data);
    const done = events.at(-1)!;
    expect(done.data).toMatchObject({ finish_reason: 'eos' });
    expect(done.data.text).toEndWith('.');
    expect(tokens.map((t) => t.text).join('')).toBe(done.data.text);
    expect(tokens).toHaveLength(done.data.usage.completion_tokens);
    expect(tokens.map((t) => t.index)).toEqual(tokens.map((_, i) => i));
    expect(tokens.at(-1)).toMatchObject({ text: '.', token_id: '.'.charCodeAt(0) });
  }, 30_000);
});
