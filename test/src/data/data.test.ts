import { describe, expect, test } from 'bun:test';
import { mkdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { DataPathError, resolveInside } from '../../../src/data/paths.ts';
import { imageTokenRegions } from '../../../model/multimodal.ts';
import { COLORS, objectsInRegions, renderScene, sceneAt, sceneCaption, type Region, type Scene, type SceneObject } from '../../../src/data/shapes.ts';
import { CaptionedFiles } from '../../../src/data/sources.ts';
import { holdOut, TrainingData } from '../../../src/data/training-data.ts';
import { ImageProcessor } from '../../../src/image.ts';
import { runTraining } from '../../../src/training/run.ts';
import { resolveJobPaths } from '../../../src/training/resolve.ts';
import { DEFAULT_PROMPTS, parseJobSpec, SpecError } from '../../../src/training/spec.ts';
import type { TrainingEvent } from '../../../src/training/events.ts';
import { tempDir, tinyJob, writeCaptionFixtures } from '../training/helpers.ts';

/** Bounding box of an object as drawn: [width, height]. */
function box(o: SceneObject): [number, number] {
  if (o.shape === 'triangle') return [o.extent, (o.extent * Math.sqrt(3)) / 2];
  if (o.shape === 'star') return [o.extent, o.extent * 0.951];
  return [o.extent, o.extent];
}

describe('synthetic shape scenes follow docs/shapes.md', () => {
  const scenes = Array.from({ length: 400 }, (_, i) => sceneAt(7, 'train', i));

  test('canvas, background, objects, colours and sizes', () => {
    for (const s of scenes) {
      expect(s.width).toBeWithin(48, 801);
      expect(s.height).toBeWithin(48, 801);
      expect(s.width / s.height).toBeWithin(0.75, 4 / 3 + 1e-9);
      for (const c of s.background) expect(c).toBeWithin(190, 256);
      expect(s.noise).toBeLessThanOrEqual(8);
      expect(s.objects.length).toBeWithin(1, 3);
      for (const o of s.objects) {
        const [w, h] = box(o);
        expect(o.cx - w / 2).toBeGreaterThanOrEqual(0);
        expect(o.cx + w / 2).toBeLessThanOrEqual(s.width);
        expect(o.cy - h / 2).toBeGreaterThanOrEqual(0);
        expect(o.cy + h / 2).toBeLessThanOrEqual(s.height);
        o.rgb.forEach((v, c) => expect(Math.abs(v - COLORS[o.color]![c]!)).toBeLessThanOrEqual(20));
        const fraction = o.extent / Math.min(s.width, s.height);
        if (o.size === 'small') expect(fraction).toBeWithin(0.16, 0.26);
        else expect(fraction).toBeWithin(0.36, 0.5);
        if (o.shape === 'star') expect(o.innerRatio).toBeWithin(0.4, 0.5);
      }
    }
  });

  test('two objects: boxes apart, one offset dominant, reading order in the caption', () => {
    const pairs = scenes.filter((s) => s.objects.length === 2);
    expect(pairs.length).toBeGreaterThan(100);
    for (const s of pairs) {
      const [a, b] = s.objects as [SceneObject, SceneObject];
      const [aw, ah] = box(a);
      const [bw, bh] = box(b);
      const apart = Math.abs(a.cx - b.cx) >= (aw + bw) / 2 || Math.abs(a.cy - b.cy) >= (ah + bh) / 2;
      expect(apart).toBe(true);
      const dx = (b.cx - a.cx) / s.width;
      const dy = (b.cy - a.cy) / s.height;
      if (s.relation === 'left of') {
        expect(dx).toBeGreaterThanOrEqual(0.25);
        expect(dx).toBeGreaterThanOrEqual(2 * Math.abs(dy));
      } else {
        expect(s.relation).toBe('above');
        expect(dy).toBeGreaterThanOrEqual(0.25);
        expect(dy).toBeGreaterThanOrEqual(2 * Math.abs(dx));
      }
    }
  });

  test('captions are exact sentences', () => {
    const object = '(small|large) (red|green|blue|yellow|purple|orange) (circle|square|triangle|star)';
    const pattern = new RegExp(`^a ${object}( (to the left of|above) a ${object})?\\.$`);
    for (const s of scenes) expect(sceneCaption(s)).toMatch(pattern);
    const one: Scene = { ...scenes[0]!, relation: 'alone', objects: [{ ...scenes[0]!.objects[0]!, size: 'small', color: 'red', shape: 'circle' }] };
    expect(sceneCaption(one)).toBe('a small red circle.');
  });

  test('seeded: the same index gives the same scene; the splits differ', () => {
    expect(sceneAt(7, 'train', 3)).toEqual(scenes[3]!);
    const train = new Set(scenes.map((s) => JSON.stringify(s)));
    const validation = Array.from({ length: 50 }, (_, i) => JSON.stringify(sceneAt(7, 'validation', i)));
    expect(validation.some((s) => train.has(s))).toBe(false);
  });

  test('rendering draws each object in its colour on the background', async () => {
    for (const s of scenes.slice(0, 20)) {
      const { data, width } = await renderScene({ ...s, noise: 0 });
      const pixel = (x: number, y: number) => Array.from(data.subarray(3 * (Math.round(y) * width + Math.round(x)), 3 * (Math.round(y) * width + Math.round(x)) + 3));
      for (const o of s.objects) {
        // The centre of a star's box is inside it only near its middle; its outer centre is safe.
        const y = o.shape === 'star' ? o.cy + 0.05 * o.extent : o.shape === 'triangle' ? o.cy + 0.1 * o.extent : o.cy;
        pixel(o.cx, y).forEach((v, c) => expect(Math.abs(v - o.rgb[c]!)).toBeLessThanOrEqual(1));
      }
      expect(pixel(0, 0)).toEqual([...s.background]);
    }
  });
});

describe('what each image token shows, for vision pretraining', () => {
  const scenes = Array.from({ length: 300 }, (_, i) => sceneAt(5, 'train', i));
  const boxOf = (s: Scene, o: SceneObject): Region => {
    const [w, h] = box(o);
    return { top: (o.cy - h / 2) / s.height, bottom: (o.cy + h / 2) / s.height, left: (o.cx - w / 2) / s.width, right: (o.cx + w / 2) / s.width };
  };
  const touches = (a: Region, b: Region) => a.top < b.bottom && b.top < a.bottom && a.left < b.right && b.left < a.right;

  test("an object's own bounding box shows that object", () => {
    for (const s of scenes) expect(objectsInRegions(s, s.objects.map((o) => boxOf(s, o)))).toEqual(s.objects.map((_, i) => i));
  });

  test('on the 4 x 4 grid of the shapes preset, every object is seen, only where it lies, and the rest is background', () => {
    const regions = imageTokenRegions(16, 8);
    for (const s of scenes) {
      const labels = objectsInRegions(s, regions);
      s.objects.forEach((o, i) => {
        expect(labels).toContain(i);
        regions.forEach((r, t) => labels[t] === i && expect(touches(r, boxOf(s, o))).toBe(true));
      });
      regions.forEach((r, t) => s.objects.every((o) => !touches(r, boxOf(s, o))) && expect(labels[t]).toBe(-1));
    }
  });
});

describe('data paths', () => {
  test('must be a readable file (a folder for image_dir) inside the base once links are followed, and none of the reserved paths', async () => {
    const dir = await tempDir();
    await mkdir(join(dir, 'images'));
    await mkdir(join(dir, 'jobs'));
    await writeFile(join(dir, 'corpus.txt'), 'some text');
    await writeFile(join(dir, 'jobs', 'config.json'), '{}');
    await symlink('/etc/hostname', join(dir, 'escape.txt'));
    const reserved = [join(dir, 'jobs')];
    const resolveText = (path: string) => resolveJobPaths(parseJobSpec({ data: { type: 'text', text_data_path: path } }), dir, reserved);
    expect((await resolveText('corpus.txt')).data.text_data_path).toBe(join(dir, 'corpus.txt'));
    await expect(resolveText('.')).rejects.toThrow("data.text_data_path '.' must be a file, but it is a folder");
    await expect(resolveText('escape.txt')).rejects.toThrow("data.text_data_path 'escape.txt' leads outside the data folder");
    await expect(resolveText('jobs/config.json')).rejects.toThrow("data.text_data_path 'jobs/config.json' is one of the server's own files");
    const coco = (imageDir: string) => resolveJobPaths(parseJobSpec({ data: { type: 'coco', captions_file: 'corpus.txt', image_dir: imageDir } }), dir, reserved);
    expect((await coco('images')).data.image_dir).toBe(join(dir, 'images'));
    await expect(coco('corpus.txt')).rejects.toThrow("data.image_dir 'corpus.txt' must be a folder, but it is a file");
    await expect(coco('jobs')).rejects.toThrow(DataPathError);
  });

  test('resolve inside the data folder; escapes are refused naming the field', () => {
    expect(resolveInside('/data', 'a/b.json', 'f')).toBe('/data/a/b.json');
    expect(resolveInside('/data', '/data/x', 'f')).toBe('/data/x');
    for (const escape of ['../x', '/etc/passwd', 'a/../../x', '/data2/x']) {
      expect(() => resolveInside('/data', escape, 'data.image_dir')).toThrow(DataPathError);
      expect(() => resolveInside('/data', escape, 'data.image_dir')).toThrow('data.image_dir');
    }
  });
});

const processor = new ImageProcessor({ imageSize: 16 });

describe('batches are a pure function of (seed, step)', () => {
  test('two openings give the same shards; shards split the batch', async () => {
    const spec = parseJobSpec(tinyJob({ batch_size: 4, grad_accum: 2 })).data;
    const open = () => TrainingData.open(spec, { seed: 5, batchSize: 4, gradAccum: 2, processor });
    const [a, b] = [await open(), await open()];
    expect(await a.shard(3, 1, 0, 1)).toEqual(await b.shard(3, 1, 0, 1));
    const whole = await a.shard(2, 0, 0, 1);
    const halves = [await b.shard(2, 0, 0, 2), await b.shard(2, 0, 1, 2)];
    const rows = (batch: typeof whole) => Array.from({ length: batch.rows }, (_, r) => Array.from(batch.ids.subarray(r * batch.length, r * batch.length + batch.lengths[r]!)));
    expect([...rows(halves[0]!), ...rows(halves[1]!)]).toEqual(rows(whole));
    expect(await a.shard(2, 1, 0, 1)).not.toEqual(whole);
    // [prompt..., image token, caption..., EOS]
    const first = rows(whole)[0]!;
    expect(first.at(-1)).toBe(254);
    expect(first[whole.imagePositions![0]![0]!]).toBe(255);
  });
});

describe('prompts (data.prompts)', () => {
  test('by default, those of the original that fit max_tokens; text and passkey data, which read none, are not refused for them', () => {
    const prompts = (data: Record<string, unknown>) => parseJobSpec(tinyJob({}, data)).data.prompts;
    expect(prompts({ type: 'synthetic-shapes' })).toEqual(DEFAULT_PROMPTS);
    expect(prompts({ type: 'synthetic-shapes', max_tokens: 16 })).toEqual(['', 'An image of ', 'Caption: ']);
    expect(prompts({ type: 'synthetic-shapes', max_tokens: 8 })).toEqual(['']);
    expect(() => prompts({ type: 'text', text_data_path: 'a.txt', max_tokens: 16, prompts: ['x'.repeat(20)] })).not.toThrow();
    expect(() => prompts({ type: 'synthetic-shapes', max_tokens: 16, prompts: ['x'.repeat(20)] })).toThrow(new SpecError('data.prompts[0]', 'data.prompts[0] is 20 bytes (tokens) long; with the image token, one caption token and EOS its examples must fit data.max_tokens (16), so at most 13'));
  });
});

describe('long prompts (data.long_prompts)', () => {
  const spec = (longPrompts: unknown, data: Record<string, unknown> = {}) => parseJobSpec(tinyJob({}, { type: 'synthetic-shapes', val_size: 4, max_tokens: 400, long_prompts: longPrompts, ...data })).data;
  const rowsOf = (batch: Awaited<ReturnType<TrainingData['shard']>>) =>
    Array.from({ length: batch.rows }, (_, r) => Array.from(batch.ids.subarray(r * batch.length, r * batch.length + batch.lengths[r]!)));

  test('put text of one drawn length before the prompts of the chosen image steps, as context only', async () => {
    const data = await TrainingData.open(spec({ ratio: 0.5, bytes: [100, 300] }), { seed: 5, batchSize: 4, gradAccum: 1, processor });
    const plain = await TrainingData.open(spec(undefined), { seed: 5, batchSize: 4, gradAccum: 1, processor });
    const steps = await Promise.all([1, 2, 3, 4].map((step) => data.shard(step, 0, 0, 1)));
    // Every other image step reads long prompts; the others are the plain run's batches.
    const long = steps.filter((batch) => batch.contextLengths !== undefined);
    expect(long).toHaveLength(2);
    for (const [i, batch] of steps.entries()) {
      if (batch.contextLengths) continue;
      expect(batch).toEqual(await plain.shard(i + 1, 0, 0, 1));
    }
    for (const batch of long) {
      const before = batch.imagePositions!.map(([position]) => position!);
      expect(batch.contextLengths).toEqual(before);
      // One length of text for every row, within bytes, before prompts of at most 20 bytes.
      const text = new TextDecoder().decode(new Uint8Array(rowsOf(batch)[0]!.slice(0, before[0])));
      expect(Math.max(...before) - Math.min(...before)).toBeLessThanOrEqual(20);
      expect(Math.min(...before)).toBeGreaterThanOrEqual(100);
      expect(Math.max(...before)).toBeLessThanOrEqual(320);
      expect(text).toMatch(/^[A-Z][a-z]/);
    }
    // Drawn from (seed, step): a second opening reads the same.
    const again = await TrainingData.open(spec({ ratio: 0.5, bytes: [100, 300] }), { seed: 5, batchSize: 4, gradAccum: 1, processor });
    expect(await again.shard(2, 0, 0, 1)).toEqual(steps[1]!);
  });

  test('are for image data, and leave room in max_tokens for the prompt and a caption', () => {
    // 400 tokens: the longest default prompt (20), the image token, a caption token and EOS leave 377.
    expect(spec({ ratio: 0.5, bytes: [0, 377] }).long_prompts!.bytes).toEqual([0, 377]);
    expect(() => spec({ ratio: 0.5, bytes: [0, 378] })).toThrow(new SpecError('data.long_prompts.bytes', 'data.long_prompts.bytes (378 at most) with the longest of data.prompts (20 bytes), the image token, one caption token and EOS must fit data.max_tokens (400), so at most 377'));
    expect(() => spec({ ratio: 1, bytes: [60, 63] }, { max_tokens: 64, prompts: ['This is an image of '] })).toThrow(/so at most 41$/);
    expect(() => parseJobSpec(tinyJob({}, { type: 'text', text_data_path: 'a.txt', long_prompts: { ratio: 1, bytes: [0, 10] } })))
      .toThrow(new SpecError('data.long_prompts', 'data.long_prompts is for image data, not data.type "text"'));
    expect(() => spec({ ratio: 2, bytes: [0, 10] })).toThrow(SpecError);
    expect(() => spec({ ratio: 0.5, bytes: [10, 5] })).toThrow(SpecError);
  });
});

describe('data sets', async () => {
  const dir = await tempDir();
  await writeCaptionFixtures(dir, 12, 2);
  await writeFile(join(dir, 'corpus.txt'), 'The quick brown fox jumps over the lazy dog. '.repeat(40));

  async function train(data: Record<string, unknown>, steps = 2, workers = 1): Promise<TrainingEvent[]> {
    const spec = await resolveJobPaths(parseJobSpec(tinyJob({ steps, batch_size: 2, workers }, data)), dir);
    const events: TrainingEvent[] = [];
    const result = await runTraining(spec, { outDir: join(dir, 'out', String(Math.random())), onEvent: (e) => events.push(e) });
    expect(result.status).toBe('succeeded');
    return events;
  }

  test('annotations (the original format): trains; bad images are skipped and counted', async () => {
    const events = await train({ type: 'annotations', annotations_file: 'annotations.json', image_dir: 'images', val_size: 2 }, 6);
    const progress = events.filter((e) => e.type === 'progress');
    expect(progress).toHaveLength(6);
    // 14 entries, 2 broken: six steps of two rows visit most of them.
    expect((progress.at(-1) as { skipped_images: number }).skipped_images).toBeGreaterThan(0);
    expect(events.some((e) => e.type === 'eval')).toBe(true);
  }, 60_000);

  test('an image folder that holds none of the images is told apart from images that will not decode', async () => {
    const spec = await resolveJobPaths(parseJobSpec(tinyJob({ steps: 1, batch_size: 2 }, { type: 'annotations', annotations_file: 'annotations.json', image_dir: '.', val_size: 0 })), dir);
    const data = await TrainingData.open(spec.data, { seed: 1, batchSize: 2, gradAccum: 1, processor });
    await expect(data.shard(1, 0, 0, 1)).rejects.toThrow(/^none of the 14 training images can be used \(the first: image: '[^']+' does not exist; check data\.image_dir\)$/);
  });

  test('data-parallel workers count the same skipped images as one', async () => {
    const data = { type: 'annotations', annotations_file: 'annotations.json', image_dir: 'images', val_size: 0 };
    const last = (events: TrainingEvent[]) => (events.filter((e) => e.type === 'progress').at(-1) as { skipped_images: number }).skipped_images;
    const [one, two] = [last(await train(data, 7, 1)), last(await train(data, 7, 2))];
    expect(one).toBe(2);
    expect(two).toBe(one);
  }, 60_000);

  test('a resumed run counts the images skipped before its checkpoint, as the run it continues did', async () => {
    const data = { type: 'annotations', annotations_file: 'annotations.json', image_dir: 'images', val_size: 0 };
    for (const workers of [1, 2]) {
      const spec = await resolveJobPaths(parseJobSpec(tinyJob({ steps: 7, batch_size: 2, workers, checkpoint_every: 3 }, data)), dir);
      const counts = async (outDir: string, resumeFrom?: string) => {
        const events: TrainingEvent[] = [];
        await runTraining(spec, { outDir, resumeFrom, onEvent: (e) => events.push(e) });
        return events.flatMap((e) => (e.type === 'progress' && e.step > 3 ? [e.skipped_images] : []));
      };
      const outDir = join(dir, 'out', `whole-${workers}`);
      const whole = await counts(outDir);
      expect(await counts(join(dir, 'out', `resumed-${workers}`), join(outDir, 'step-000003'))).toEqual(whole);
      expect(whole.at(-1)).toBe(2);
    }
  }, 60_000);

  test('an image named in an annotations file is skipped when a symbolic link leads it out of image_dir', async () => {
    const outside = await tempDir();
    const { images: elsewhere } = await writeCaptionFixtures(outside, 1);
    await symlink(join(elsewhere, 'scene-0.png'), join(dir, 'images', 'link.png'));
    const files = new CaptionedFiles([{ image: 'scene-0.png', text: 'inside.' }, { image: 'link.png', text: 'outside.' }], join(dir, 'images'), processor);
    expect(await files.load(0)).not.toBeNull();
    expect(await files.load(1)).toBeNull();
    expect([...files.skipped]).toEqual([1]);
  });

  test('a hold-out takes whole images: no validation image is trained on through its other captions', () => {
    // COCO's five captions an image.
    const pairs = Array.from({ length: 500 }, (_, i) => ({ image: `image-${i % 100}.jpg`, text: `caption ${i}` }));
    const { train, validation } = holdOut(pairs, 50, 1, (pair) => pair.image);
    const trained = new Set(train.map((pair) => pair.image));
    expect(validation.length).toBe(50);
    expect(validation.filter((pair) => trained.has(pair.image))).toEqual([]);
    expect(train.length + validation.length).toBe(500);
    // Items of their own each, as text windows are: exactly val_size, at most a tenth of the list.
    expect(holdOut(pairs, 50, 1).validation).toHaveLength(50);
    expect(holdOut(pairs.slice(0, 30), 50, 1).validation).toHaveLength(3);
    // Never past a tenth, however large an image's group: ten captions of one image all train.
    const oneImage = Array.from({ length: 10 }, (_, i) => ({ image: 'only.png', text: `caption ${i}` }));
    expect(holdOut(oneImage, 32, 1, (pair) => pair.image)).toEqual({ validation: [], train: expect.any(Array) });
    const sizes = [3, 1, 4, 1, 5, 9, 2, 6].flatMap((n, image) => Array.from({ length: n }, () => ({ image: `${image}.png`, text: '' })));
    expect(holdOut(sizes, 32, 1, (pair) => pair.image).validation.length).toBeLessThanOrEqual(3);
  });

  test('COCO captions', async () => {
    const events = await train({ type: 'coco', captions_file: 'coco.json', image_dir: 'images' });
    expect(events.filter((e) => e.type === 'progress')).toHaveLength(2);
  }, 60_000);

  test('plain text alone, and mixed with images at a ratio', async () => {
    const text = await train({ type: 'text', text_data_path: 'corpus.txt', max_tokens: 32 });
    expect(text.some((e) => e.type === 'eval')).toBe(true);
    const spec = parseJobSpec(tinyJob({}, { type: 'synthetic-shapes', text_data_path: 'corpus.txt', text_ratio: 0.25 })).data;
    const data = await TrainingData.open({ ...spec, text_data_path: join(dir, 'corpus.txt') }, { seed: 1, batchSize: 2, gradAccum: 1, processor });
    const textSteps = Array.from({ length: 100 }, (_, i) => data.isTextStep(i + 1)).filter(Boolean).length;
    expect(textSteps).toBe(25);
    expect((await data.shard(4, 0, 0, 1)).images).toBeUndefined();
    expect((await data.shard(5, 0, 0, 1)).images).toBeDefined();
  }, 60_000);

  test('a missing file is named; a malformed one fails with its name', async () => {
    const missing = parseJobSpec({ data: { type: 'annotations', annotations_file: 'none.json' } });
    await expect(resolveJobPaths(missing, dir)).rejects.toThrow("data.annotations_file: 'none.json' does not exist");
    await writeFile(join(dir, 'bad.json'), '{"not": "a list"}');
    const bad = await resolveJobPaths(parseJobSpec(tinyJob({}, { type: 'annotations', annotations_file: 'bad.json' })), dir);
    await expect(runTraining(bad, { outDir: join(dir, 'bad'), onEvent: () => {} })).rejects.toThrow(join(dir, 'bad.json'));
  });
});

describe('passkey examples (data.passkey)', () => {
  const spec = (passkey: Record<string, unknown>) => parseJobSpec(tinyJob({}, { type: 'passkey', val_size: 4, max_tokens: 400, passkey: { filler_tokens: [50, 200], ...passkey } })).data;

  test('with answer_only, read the haystack and the question as context and learn the key and EOS alone', async () => {
    const learned = await TrainingData.open(spec({ answer_only: true }), { seed: 5, batchSize: 4, gradAccum: 1, processor });
    const plain = await TrainingData.open(spec({}), { seed: 5, batchSize: 4, gradAccum: 1, processor });
    const batch = await learned.shard(1, 0, 0, 1);
    const { contextLengths, ...rest } = batch;
    expect(rest).toEqual(await plain.shard(1, 0, 0, 1));
    expect((await plain.shard(1, 0, 0, 1)).contextLengths).toBeUndefined();
    // Every row learns exactly its five digits and EOS.
    expect(contextLengths!.map((context, r) => batch.lengths[r]! - context)).toEqual([6, 6, 6, 6]);
    const row = Array.from(batch.ids.subarray(0, batch.lengths[0]!));
    expect(new TextDecoder().decode(new Uint8Array(row.slice(contextLengths![0]! - 16, -1)))).toMatch(/^The pass key is \d{5}$/);
    // The validation loss is the same measure.
    const [validation] = await learned.validation();
    expect(validation!.contextLengths!.map((context, r) => validation!.lengths[r]! - context)).toEqual([6, 6, 6, 6]);
  });
});
