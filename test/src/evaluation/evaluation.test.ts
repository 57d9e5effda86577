import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import sharp from 'sharp';
import { Random } from '../../../model/random.ts';
import { ByteTokenizer } from '../../../model/tokenizer.ts';
import { longestPasskeyTokens, passkeyAt } from '../../../src/data/passkey.ts';
import { renderScene, sceneAt, sceneCaption, type Scene } from '../../../src/data/shapes.ts';
import { TrainingData, scheduled } from '../../../src/data/training-data.ts';
import { parseEvalArgs } from '../../../src/evaluation/args.ts';
import { UsageError } from '../../../src/flags.ts';
import { parseCaption } from '../../../src/evaluation/caption-parser.ts';
import type { ModelReport, PasskeyReport } from '../../../src/evaluation/evaluate.ts';
import { passkeyAnswered } from '../../../src/evaluation/passkey-eval.ts';
import { runEval } from '../../../src/evaluation/run.ts';
import { exactMatch, scoreCaptions, tally } from '../../../src/evaluation/scoring.ts';
import { encodeVariant, JPEG_QUALITY, NOISE_STD, VARIANTS, type EncodedVariant, type Variant } from '../../../src/evaluation/variants.ts';
import { ImageProcessor } from '../../../src/image.ts';
import type { RunningServer } from '../../../src/http/server.ts';
import { runTraining } from '../../../src/training/run.ts';
import { parseJobSpec, SpecError } from '../../../src/training/spec.ts';
import type { TrainingEvent } from '../../../src/training/events.ts';
import { makeCheckpoint, startTestServer, TINY_MODEL } from '../../routes/helpers.ts';
import { tempDir, tinyJob } from '../training/helpers.ts';

/** The libjpeg quality whose scaled standard luminance table is the file's first quantization table. */
function jpegQuality(jpeg: Buffer): number {
  const LUMINANCE = [
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103,
    77, 24, 35, 55, 64, 81, 104, 113, 92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
  ];
  const at = jpeg.indexOf(Buffer.from([0xff, 0xdb]));
  // Sorted, so that the zigzag order of the file does not matter: the scaling is monotonic.
  const table = [...jpeg.subarray(at + 5, at + 5 + 64)].sort((a, b) => a - b);
  for (let q = 1; q <= 100; q++) {
    const scale = q < 50 ? 5000 / q : 200 - 2 * q;
    const scaled = LUMINANCE.map((v) => Math.min(255, Math.max(1, Math.floor((v * scale + 50) / 100)))).sort((a, b) => a - b);
    if (scaled.every((v, i) => v === table[i])) return q;
  }
  throw new Error('not a standard libjpeg quantization table');
}

async function rgba(bytes: Buffer, rotate = false): Promise<{ data: Buffer; width: number; height: number }> {
  const image = rotate ? sharp(bytes).rotate() : sharp(bytes);
  const { data, info } = await image.ensureAlpha().raw().toBuffer({ resolveWithObject: true });
  return { data, width: info.width, height: info.height };
}

/** Indices of the pixels that show the plain background (no object, not even an anti-aliased edge). */
async function backgroundPixels(scene: Scene): Promise<number[]> {
  const { data } = await renderScene({ ...scene, noise: 0 });
  const indices: number[] = [];
  for (let i = 0; i < data.length / 3; i++) if ([0, 1, 2].every((c) => data[3 * i + c] === scene.background[c])) indices.push(i);
  return indices;
}

describe('image variants are what they claim', async () => {
  const scenes = [0, 1, 2].map((i) => sceneAt(3, 'validation', i));
  const files = await Promise.all(
    scenes.map(async (scene, s) => {
      const entries = await Promise.all(VARIANTS.map(async (variant, v) => [variant, await encodeVariant(scene, variant, new Random(100 * s + v))] as const));
      return Object.fromEntries(entries) as Record<Variant, EncodedVariant>;
    }),
  );

  test('formats, sizes and JPEG quality', async () => {
    const formats: Record<Variant, string> = { png: 'png', jpeg: 'jpeg', webp: 'webp', 'transparent-png': 'png', 'exif-rotated-jpeg': 'jpeg', resized: 'png', noisy: 'png' };
    for (const [s, scene] of scenes.entries()) {
      for (const variant of VARIANTS) {
        const metadata = await sharp(files[s]![variant].bytes).metadata();
        expect(metadata.format).toBe(formats[variant] as typeof metadata.format);
        if (variant !== 'resized' && variant !== 'exif-rotated-jpeg') expect([metadata.width, metadata.height]).toEqual([scene.width, scene.height]);
      }
      const { quality } = files[s]!.jpeg.details;
      expect(jpegQuality(files[s]!.jpeg.bytes)).toBe(quality!);
      expect(quality).toBeWithin(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1);
      const resized = await sharp(files[s]!.resized.bytes).metadata();
      expect([resized.width, resized.height]).toEqual([files[s]!.resized.details.width!, files[s]!.resized.details.height!]);
      expect(resized.width).not.toBe(scene.width);
      expect(resized.width / resized.height).toBeCloseTo(scene.width / scene.height, 1);
      for (const side of [resized.width, resized.height]) expect(side).toBeWithin(48, 801);
    }
  });

  test('a scene at the 3/4 limit, resized, stays within the limits of docs/shapes.md', async () => {
    // Validation scene 688 of seed 0 is 66 x 88: a height rounded to the nearest pixel went past 4/3.
    const scene = sceneAt(0, 'validation', 688);
    expect(scene.width / scene.height).toBe(3 / 4);
    for (let draw = 0; draw < 200; draw++) {
      const { width, height } = (await encodeVariant(scene, 'resized', new Random(draw))).details;
      expect(width! / height!).toBeWithin(3 / 4, 4 / 3 + 1e-9);
    }
  });

  test('the EXIF-rotated JPEG stores rotated pixels that its orientation tag turns upright', async () => {
    for (const [s, scene] of scenes.entries()) {
      const file = files[s]!['exif-rotated-jpeg'];
      const metadata = await sharp(file.bytes).metadata();
      expect(metadata.orientation).toBe(file.details.orientation!);
      expect([3, 6, 8]).toContain(metadata.orientation!);
      if (metadata.orientation !== 3) expect([metadata.width, metadata.height]).toEqual([scene.height, scene.width]);
      const [upright, png] = [await rgba(file.bytes, true), await rgba(files[s]!.png.bytes)];
      expect([upright.width, upright.height]).toEqual([png.width, png.height]);
      let difference = 0;
      for (let i = 0; i < png.data.length; i++) difference += Math.abs(upright.data[i]! - png.data[i]!);
      // JPEG at quality 90 moves a pixel by a level or two; a wrong rotation moves it by tens.
      expect(difference / png.data.length).toBeLessThan(3);
    }
  });

  test('the transparent PNG has a fully transparent background and opaque objects', async () => {
    for (const [s, scene] of scenes.entries()) {
      const { data } = await rgba(files[s]!['transparent-png'].bytes);
      const background = await backgroundPixels(scene);
      expect(background.length).toBeGreaterThan(0.3 * scene.width * scene.height);
      expect(background.filter((i) => data[4 * i + 3] === 0).length / background.length).toBeGreaterThan(0.999);
      const object = scene.objects[0]!;
      const centre = Math.round(object.cy + (object.shape === 'circle' || object.shape === 'square' ? 0 : 0.1 * object.extent)) * scene.width + Math.round(object.cx);
      expect(data[4 * centre + 3]).toBe(255);
    }
  });

  test('the noisy variant has background noise of the largest allowed std', async () => {
    for (const [s, scene] of scenes.entries()) {
      const { data } = await rgba(files[s]!.noisy.bytes);
      const background = await backgroundPixels(scene);
      let sum = 0;
      let squares = 0;
      for (const i of background) {
        const deviation = data[4 * i]! - scene.background[0];
        sum += deviation;
        squares += deviation * deviation;
      }
      const mean = sum / background.length;
      // Clipping at 255 shrinks it a little for light backgrounds.
      expect(Math.sqrt(squares / background.length - mean * mean)).toBeWithin(NOISE_STD - 2.5, NOISE_STD + 0.5);
    }
  });
});

describe('caption parsing and scoring', () => {
  test('parses both forms, tolerating case, spacing, a missing period and trailing text', () => {
    expect(parseCaption('a small red circle.')).toEqual({ objects: [{ size: 'small', color: 'red', shape: 'circle' }], relation: 'alone' });
    expect(parseCaption('  A Large  blue star to the left of a small yellow square ')).toEqual({
      objects: [
        { size: 'large', color: 'blue', shape: 'star' },
        { size: 'small', color: 'yellow', shape: 'square' },
      ],
      relation: 'left of',
    });
    expect(parseCaption('a small purple triangle above a large orange circle. a small')?.relation).toBe('above');
    for (const bad of ['', 'red circle.', 'a small red circle next to a blue one.', 'a small red big circle.', '\ufffd\u0005x']) expect(parseCaption(bad)).toBeNull();
  });

  test('exact match, per variant, per attribute; unparseable and failed answers are wrong everywhere', () => {
    const two = 'a large blue star to the left of a small yellow square.';
    const one = 'a small red circle.';
    const scores = scoreCaptions([
      { scene: 0, variant: 'png', expected: two, predicted: ` ${two}\n` },
      { scene: 1, variant: 'png', expected: two, predicted: 'a large blue star above a small green square.' },
      { scene: 2, variant: 'jpeg', expected: one, predicted: 'a large red circle.' },
      { scene: 3, variant: 'jpeg', expected: one, predicted: 'garbage' },
      { scene: 0, variant: 'webp', expected: two, predicted: null },
    ]);
    expect(scores.exact).toEqual({ correct: 1, total: 5, accuracy: 0.2 });
    expect(scores.byVariant.png).toEqual({ correct: 1, total: 2, accuracy: 0.5 });
    expect(scores.byVariant.jpeg!.correct).toBe(0);
    expect(scores.byObjects.two).toMatchObject({ correct: 1, total: 3 });
    // Objects: 2 + 2 + 1 + 1 + 2 = 8.
    expect(scores.attributes.shape).toMatchObject({ correct: 5, total: 8 });
    // Small: the square of each two-object caption, and the one-object circle twice.
    expect(scores.attributes.shapeBySize).toEqual({ large: tally(2, 3), small: tally(3, 5) });
    expect(scores.attributes.color).toMatchObject({ correct: 4, total: 8 });
    expect(scores.attributes.size).toMatchObject({ correct: 4, total: 8 });
    expect(scores.attributes.relation).toMatchObject({ correct: 1, total: 3 });
    expect(scores.attributes.secondObject).toMatchObject({ correct: 1, total: 3 });
    expect([scores.unparseable, scores.failed]).toEqual([1, 1]);
    expect(exactMatch(one, 'a small red circle')).toBe(false);
  });

  test('a scene counts as read when every variant of it is exact; one right only in some variants is counted apart', () => {
    const one = 'a small red circle.';
    const outcome = (scene: number, variant: string, predicted: string) => ({ scene, variant, expected: one, predicted });
    const scores = scoreCaptions([
      outcome(0, 'png', one), outcome(0, 'jpeg', one),
      outcome(1, 'png', one), outcome(1, 'jpeg', 'a small red star.'),
      outcome(2, 'png', 'a large red circle.'), outcome(2, 'jpeg', 'a large red circle.'),
    ]);
    expect(scores.byScene).toEqual({ everyVariant: tally(1, 3), someVariants: 1 });
  });
});

describe('the passkey task', () => {
  const tokenizer = new ByteTokenizer();

  test('examples are seeded; the key comes first and again at the end; the filler length is in range', () => {
    expect(passkeyAt(1, 'train', 5, [100, 200])).toEqual(passkeyAt(1, 'train', 5, [100, 200]));
    const examples = Array.from({ length: 50 }, (_, i) => passkeyAt(1, 'train', i, [100, 200]));
    expect(new Set(examples.map((e) => e.key)).size).toBeGreaterThan(45);
    expect(passkeyAt(1, 'validation', 0, [100, 200]).key).not.toBe(examples[0]!.key);
    for (const { key, prompt, tokens, fillerTokens } of examples) {
      expect(key).toMatch(/^[1-9]\d{4}$/);
      expect(fillerTokens).toBeWithin(100, 201);
      expect(prompt.startsWith(`The pass key is ${key}. Remember it. `)).toBe(true);
      expect(prompt.endsWith(' What is the pass key? The pass key is ')).toBe(true);
      expect(prompt.length).toBe(`The pass key is ${key}. Remember it. `.length + fillerTokens + ' What is the pass key? The pass key is '.length);
      expect(tokens).toEqual([...tokenizer.encode(prompt + key), tokenizer.eosTokenId]);
    }
    expect(longestPasskeyTokens(300)).toBe(passkeyAt(9, 'train', 3, [300, 300]).tokens.length);
  });

  test('a training job may ask for keys of other lengths; the fixed 5-digit keys stay as they were', () => {
    expect(passkeyAt(1, 'validation', 3, [10, 20], [5, 5])).toEqual(passkeyAt(1, 'validation', 3, [10, 20]));
    const lengths = Array.from({ length: 60 }, (_, i) => passkeyAt(1, 'train', i, [0, 0], [1, 3]).key.length);
    expect(new Set(lengths)).toEqual(new Set([1, 2, 3]));
    expect(passkeyAt(1, 'train', 0, [0, 0], [9, 9]).key).toMatch(/^[1-9]\d{8}$/);
    expect(longestPasskeyTokens(10, 8)).toBe(longestPasskeyTokens(10) + 2 * 3);
  });

  test('training examples may put the key at any depth of a mixed haystack that holds no digit and no needle sentence', async () => {
    const layout = { depth: [0, 1] as [number, number], haystack: 'mixed' as const };
    const examples = Array.from({ length: 40 }, (_, i) => passkeyAt(1, 'train', i, [400, 400], [5, 5], layout));
    const { haystackAt } = await import('../../../src/data/needle.ts');
    const needleSentences = new Set(haystackAt(1, 'validation', 0, 'sentences', 20_000).text.split(/(?<=\. )/));
    const depths = examples.map(({ key, prompt }) => {
      const needle = `The pass key is ${key}. Remember it. `;
      const at = prompt.indexOf(needle);
      const haystack = prompt.slice(0, at) + prompt.slice(at + needle.length, -' What is the pass key? The pass key is '.length);
      expect(haystack.length).toBe(400);
      expect(haystack).not.toMatch(/\d/);
      for (const sentence of haystack.split(/(?<=\. )/)) expect(needleSentences.has(sentence)).toBe(false);
      // At a sentence start: the haystack before it ends a sentence.
      expect(at === 0 || prompt.slice(0, at).endsWith('. ')).toBe(true);
      return at / 400;
    });
    expect(Math.min(...depths)).toBeLessThan(0.2);
    expect(Math.max(...depths)).toBeGreaterThan(0.8);
    // The haystack mixes its two kinds: the passkey filler and scene captions.
    const text = examples.map((e) => e.prompt).join('');
    expect(text).toContain('The sky is blue. ');
    expect(text).toMatch(/A (small|large) \w+ \w+/);
    // The repeated haystack with the key first is the passkey example of before.
    expect(passkeyAt(1, 'train', 3, [100, 200], [5, 5], { depth: [0, 0], haystack: 'repeated' })).toEqual(passkeyAt(1, 'train', 3, [100, 200]));
  });

  test('an answer is right when its leading digits are the key', () => {
    expect(passkeyAnswered('48213', '48213')).toBe(true);
    expect(passkeyAnswered('48213', ' 48213. ')).toBe(true);
    for (const wrong of ['4821', '482130', '48214', '', 'the key 48213']) expect(passkeyAnswered('48213', wrong)).toBe(false);
  });

  const spec = (passkey: unknown, data: Record<string, unknown> = {}) => parseJobSpec(tinyJob({}, { type: 'synthetic-shapes', max_tokens: 512, passkey, ...data })).data;

  test('data.passkey is validated, each error naming its field', () => {
    expect(spec({ ratio: 0.2, filler_tokens: [160, 384] }).passkey).toEqual({ ratio: 0.2, filler_tokens: [160, 384], key_digits: [5, 5], depth: [0, 0], haystack: 'repeated', answer_only: false });
    expect(parseJobSpec(tinyJob()).data.passkey).toBeUndefined();
    // A passkey-only job: every step is a passkey step.
    expect(spec({ filler_tokens: [0, 40], key_digits: [1, 5], filler_schedule: [[0, 8], [100, 40]] }, { type: 'passkey' }).passkey)
      .toEqual({ ratio: 1, filler_tokens: [0, 40], key_digits: [1, 5], filler_schedule: [[0, 8], [100, 40]], depth: [0, 0], haystack: 'repeated', answer_only: false });
    expect(spec({ filler_tokens: [0, 40], depth: [0, 0.9], haystack: 'mixed' }, { type: 'passkey' }).passkey).toMatchObject({ depth: [0, 0.9], haystack: 'mixed' });
    const cases: [unknown, Record<string, unknown>, string][] = [
      [{ filler_tokens: [1, 2] }, {}, 'data.passkey.ratio'],
      [{ ratio: 0, filler_tokens: [1, 2] }, {}, 'data.passkey.ratio'],
      [{ ratio: 1.5, filler_tokens: [1, 2] }, {}, 'data.passkey.ratio'],
      [{ ratio: 0.8, filler_tokens: [1, 2] }, { text_data_path: 'corpus.txt', text_ratio: 0.25 }, 'data.passkey.ratio'],
      [{ ratio: 0.2, filler_tokens: [1, 2] }, { type: 'text', text_data_path: 'corpus.txt' }, 'data.passkey.ratio'],
      [{ ratio: 0.2, filler_tokens: [5, 2] }, {}, 'data.passkey.filler_tokens'],
      [{ ratio: 0.2, filler_tokens: [5] }, {}, 'data.passkey.filler_tokens'],
      [{ ratio: 0.2, filler_tokens: [160, 500] }, {}, 'data.passkey.filler_tokens'],
      [{ ratio: 0.2, filler_tokens: [1, 2], keys: 5 }, {}, 'data.passkey.keys'],
      [{ ratio: 0.2, filler_tokens: [1, 2], key_digits: [0, 5] }, {}, 'data.passkey.key_digits'],
      [{ ratio: 0.2, filler_tokens: [1, 2], depth: [0.5, 0.2] }, {}, 'data.passkey.depth'],
      [{ ratio: 0.2, filler_tokens: [1, 2], depth: [0, 1.5] }, {}, 'data.passkey.depth'],
      [{ ratio: 0.2, filler_tokens: [1, 2], haystack: 'english' }, {}, 'data.passkey.haystack'],
      [{ ratio: 0.2, filler_tokens: [1, 2], key_digits: [3, 10] }, {}, 'data.passkey.key_digits'],
      [{ ratio: 0.2, filler_tokens: [100, 430], key_digits: [5, 9] }, {}, 'data.passkey.filler_tokens'], // 511 tokens with 5 digits, 519 with 9
      [{ ratio: 0.2, filler_tokens: [1, 20], filler_schedule: [] }, {}, 'data.passkey.filler_schedule'],
      [{ ratio: 0.2, filler_tokens: [1, 20], filler_schedule: [[0, 5], [0, 10]] }, {}, 'data.passkey.filler_schedule'],
      [{ ratio: 0.2, filler_tokens: [1, 20], filler_schedule: [[0, 5], [10, 30]] }, {}, 'data.passkey.filler_schedule'],
      [{ ratio: 0.5, filler_tokens: [1, 2] }, { type: 'passkey' }, 'data.passkey.ratio'],
      [undefined, { type: 'passkey' }, 'data.passkey'],
      ['yes', {}, 'data.passkey'],
    ];
    for (const [passkey, data, field] of cases) {
      let error: unknown;
      try {
        spec(passkey, data);
      } catch (e) {
        error = e;
      }
      expect(error).toBeInstanceOf(SpecError);
      expect((error as SpecError).field).toBe(field);
    }
  });

  test('passkey steps are text steps at their ratio, a pure function of (seed, step)', async () => {
    const processor = new ImageProcessor({ imageSize: 16 });
    const data = spec({ ratio: 0.2, filler_tokens: [20, 40] });
    const open = () => TrainingData.open(data, { seed: 4, batchSize: 2, gradAccum: 1, processor });
    const [a, b] = [await open(), await open()];
    const steps = Array.from({ length: 100 }, (_, i) => i + 1).filter((step) => a.isTextStep(step));
    expect(steps).toHaveLength(20);
    const batch = await a.shard(steps[1]!, 0, 0, 1);
    expect(batch.images).toBeUndefined();
    expect(batch).toEqual(await b.shard(steps[1]!, 0, 0, 1));
    const rows = Array.from({ length: batch.rows }, (_, r) => Array.from(batch.ids.subarray(r * batch.length, r * batch.length + batch.lengths[r]!)));
    // Rows 2 and 3 of the passkey stream: the second passkey step reads on after the first.
    expect(rows).toEqual([2, 3].map((p) => passkeyAt(4, 'train', p, [20, 40]).tokens));
    expect((await a.shard(steps[0]! + 1, 0, 0, 1)).images).toBeDefined();
  });

  test('a passkey job reads passkeys at every step, its longest filler following the schedule; validation spans the whole range', async () => {
    const processor = new ImageProcessor({ imageSize: 16 });
    const data = spec({ filler_tokens: [0, 200], filler_schedule: [[0, 10], [100, 10], [200, 200]] }, { type: 'passkey', val_size: 40 });
    const training = await TrainingData.open(data, { seed: 4, batchSize: 8, gradAccum: 1, processor });
    const fillers = async (step: number) => {
      const batch = await training.shard(step, 0, 0, 1);
      expect(batch.images).toBeUndefined();
      return batch.lengths.map((length, r) => passkeyAt(4, 'train', (step - 1) * 8 + r, [0, 10]).tokens.length === length);
    };
    // Up to step 100 the filler is drawn in [0, 10]: the same draws as passkeyAt with that range.
    expect(await fillers(1)).toEqual(Array(8).fill(true));
    expect(await fillers(100)).toEqual(Array(8).fill(true));
    const late = await training.shard(300, 0, 0, 1);
    expect(Math.max(...late.lengths)).toBeGreaterThan(longestPasskeyTokens(10));
    const validation = await training.validation();
    expect(validation.flatMap((b) => b.lengths).length).toBe(40);
    expect(Math.max(...validation.flatMap((b) => b.lengths))).toBeGreaterThan(longestPasskeyTokens(100));
  });

  test('the filler schedule is piecewise linear and flat past its ends', () => {
    const points: [number, number][] = [[100, 10], [200, 110], [300, 110]];
    expect([0, 100, 150, 200, 250, 1000].map((step) => scheduled(points, step))).toEqual([10, 10, 60, 110, 110, 110]);
    expect(scheduled(undefined, 5)).toBeUndefined();
  });

  test('beside a text corpus, the text steps split between corpus windows and passkey examples', async () => {
    const dir = await tempDir();
    const corpus = join(dir, 'corpus.txt');
    await writeFile(corpus, 'The quick brown fox jumps over the lazy dog. '.repeat(40));
    const data = await TrainingData.open(
      { ...spec({ ratio: 0.25, filler_tokens: [20, 40] }, { text_data_path: 'corpus.txt', text_ratio: 0.25 }), text_data_path: corpus },
      { seed: 4, batchSize: 2, gradAccum: 1, processor: new ImageProcessor({ imageSize: 16 }) },
    );
    const kinds = { image: 0, corpus: 0, passkey: 0 };
    for (let step = 1; step <= 40; step++) {
      const batch = await data.shard(step, 0, 0, 1);
      const text = tokenizer.decode(batch.ids.subarray(0, batch.lengths[0]!));
      kinds[batch.images ? 'image' : text.includes('pass key') ? 'passkey' : 'corpus']++;
    }
    expect(kinds).toEqual({ image: 20, corpus: 10, passkey: 10 });
  });

  test('a training job with passkey steps runs', async () => {
    const job = parseJobSpec(tinyJob({ steps: 2, batch_size: 2 }, { type: 'synthetic-shapes', max_tokens: 160, val_size: 2, passkey: { ratio: 0.5, filler_tokens: [40, 60] } }));
    const events: TrainingEvent[] = [];
    const result = await runTraining(job, { outDir: join(await tempDir(), 'out'), onEvent: (e) => events.push(e) });
    expect(result.status).toBe('succeeded');
    expect(events.filter((e) => e.type === 'progress')).toHaveLength(2);
  }, 30_000);
});

describe('bun run eval', () => {
  let checkpoint: string;
  let attentionOnly: string;
  let server: RunningServer;

  beforeAll(async () => {
    checkpoint = await makeCheckpoint(TINY_MODEL, 'memory');
    attentionOnly = await makeCheckpoint({ ...TINY_MODEL, neuralMemoryLayers: [] }, 'attention-only');
    server = await startTestServer(checkpoint);
  });
  afterAll(() => server.shutdown());

  test('the arguments are checked', () => {
    expect(parseEvalArgs([])).toMatchObject({ model: 'models/default', count: 200, concurrency: 4, passkey: false, passkeySegments: [10, 16, 24] });
    expect(parseEvalArgs(['--ablation', '--attention-only', 'a', '--passkey-model', 'p'])).toMatchObject({
      passkey: false,
      attentionOnly: 'a',
      passkeyModels: { memory: 'p', attentionOnly: 'models/ablation/passkey-attention-only' },
    });
    expect(parseEvalArgs(['--ablation'])).toMatchObject({
      attentionOnly: 'models/ablation/shapes-attention-only',
      passkeyModels: { memory: 'models/passkey', attentionOnly: 'models/ablation/passkey-attention-only' },
    });
    expect(parseEvalArgs(['--long-prompt', '4000'])).toMatchObject({ longPrompt: 4000 });
    expect(parseEvalArgs([])).toMatchObject({ longPrompt: 0 });
    const misuses = [['--count', '0'], ['--long-prompt', 'x'], ['--needle', '--long-prompt', '9'], ['--attention-only', 'a'], ['--passkey-model', 'p'], ['--ablation', '--passkey'], ['--url', 'http://x', '--model', 'm'], ['--bogus'], ['--seed', '4294967296'], ['--passkey-segments', '10,10']];
    for (const argv of misuses) {
      expect(() => parseEvalArgs(argv)).toThrow(UsageError);
    }
  });

  test('--json to a folder that cannot be written is refused before any work', async () => {
    const logged: string[] = [];
    const run = runEval(parseEvalArgs(['--url', server.url, '--count', '1', '--json', '/nonexistent/results.json']), (line) => logged.push(line));
    await expect(run).rejects.toThrow('--json /nonexistent/results.json: cannot write to /nonexistent');
    expect(logged).toEqual([]);
  });

  test('--help prints the usage and exits 0', async () => {
    const child = Bun.spawn([process.execPath, 'src/eval.ts', '--help'], { stdout: 'pipe', stderr: 'pipe' });
    const [stdout, stderr, code] = [await new Response(child.stdout).text(), await new Response(child.stderr).text(), await child.exited];
    expect({ code, stderr }).toEqual({ code: 0, stderr: '' });
    expect(stdout).toStartWith('usage: bun run eval');
  });

  test('a run whose requests fail prints its report all the same and exits 1', async () => {
    const strict = await startTestServer(checkpoint, { MAX_PROMPT_BYTES: '64' });
    try {
      const argv = ['src/eval.ts', '--url', strict.url, '--count', '1', '--long-prompt', '100'];
      const child = Bun.spawn([process.execPath, ...argv], { stdout: 'pipe', stderr: 'pipe' });
      const [stdout, stderr, code] = [await new Response(child.stdout).text(), await new Response(child.stderr).text(), await child.exited];
      expect(code).toBe(1);
      expect(stdout).toContain('failed requests');
      expect(stdout).toContain('more than the limit of 64 (MAX_PROMPT_BYTES)');
      expect(stderr).toContain(`eval: ${VARIANTS.length} request(s) failed, scored wrong`);
    } finally {
      await strict.shutdown();
    }
  }, 30_000);

  test('every file of every variant is captioned through POST /v1/captions and scored', async () => {
    const out = join(await tempDir('titans-eval-'), 'images');
    const json = join(out, '..', 'results.json');
    const args = parseEvalArgs(['--url', server.url, '--count', '2', '--out', out, '--json', json, '--passkey', '--passkey-keys', '2', '--passkey-segments', '10']);
    const { text } = await runEval(args, () => {});
    const report = JSON.parse(await readFile(json, 'utf8')) as ModelReport;
    const { items, scores } = report.captions;
    expect(items).toHaveLength(2 * VARIANTS.length);
    expect(new Set(items.map((i) => i.variant))).toEqual(new Set(VARIANTS));
    for (const item of items) {
      expect(existsSync(item.path)).toBe(true);
      expect(item.responseId).toStartWith('cap-');
      expect(item.expected).toBe(sceneCaption(sceneAt(0, 'validation', item.scene)));
      expect(typeof item.predicted).toBe('string');
    }
    expect(scores.exact.total).toBe(items.length);
    expect(Object.keys(scores.byVariant)).toEqual([...VARIANTS]);
    expect(scores.failed).toBe(0);
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    const captioned = metrics.split('\n').filter((line) => line.startsWith('http_requests_total') && line.includes('/v1/captions') && line.includes('status="200"'));
    expect(captioned.map((line) => Number(line.split(' ').at(-1))).reduce((a, b) => a + b, 0)).toBe(items.length);
    expect(report.model).toMatchObject({ segmentLen: TINY_MODEL.segmentLen, neuralMemoryLayers: [1] });
    expect(report.passkey!.byLength).toEqual([{ segments: 10, fillerTokens: 80, tally: expect.objectContaining({ total: 2 }) }]);
    for (const line of ['exact match', ...VARIANTS, 'second object (two objects)', 'passkey, 10 segments']) expect(text).toContain(line);
  }, 30_000);

  test('--long-prompt puts that much of the needle\'s English before every prompt', async () => {
    const read = async () => Number(/^prompt_tokens_read_total (\d+)/m.exec(await (await fetch(`${server.url}/metrics`)).text())?.[1] ?? 0);
    const before = await read();
    const { text, json } = await runEval(parseEvalArgs(['--url', server.url, '--count', '1', '--long-prompt', '300']), () => {});
    expect(text).toContain('greedy, each prompt after 300 bytes of other text');
    const { captions } = json as ModelReport;
    expect(captions.longPrompt).toBe(300);
    expect(captions.scores.failed).toBe(0);
    // Each of the 7 files: 300 bytes, the default prompt and the image's slots.
    expect((await read()) - before).toBeGreaterThanOrEqual(7 * 300);
  }, 60_000);

  test('--ablation sets each memory model beside its attention-only twin: captions, then the passkey pair', async () => {
    const pair = ['--model', checkpoint, '--attention-only', attentionOnly, '--passkey-model', checkpoint, '--passkey-attention-only', attentionOnly];
    const args = parseEvalArgs(['--ablation', ...pair, '--count', '1', '--passkey-keys', '1', '--passkey-segments', '10,12']);
    const { text, json } = await runEval(args, () => {});
    const { memory, attention_only, passkey } = json as { memory: ModelReport; attention_only: ModelReport; passkey: { memory: PasskeyReport; attention_only: PasskeyReport } };
    expect(memory.model.neuralMemoryLayers).toEqual([1]);
    expect(attention_only.model.neuralMemoryLayers).toEqual([]);
    // The captioners are not asked for passkeys: the pair is.
    expect(memory.passkey).toBeUndefined();
    expect(passkey.memory.model.neuralMemoryLayers).toEqual([1]);
    expect(passkey.attention_only.passkey.byLength.map((l) => l.segments)).toEqual([10, 12]);
    expect(passkey.attention_only.passkey.trials).toHaveLength(2);
    expect(text).toContain('passkey, attention only:');
    expect(text).toContain('passkey, 12 segments');
    expect(text).toContain('no neural memory');
  }, 30_000);
});
