import { afterAll, describe, expect, test } from 'bun:test';
import * as tf from '@tensorflow/tfjs-core';
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Glob } from 'bun';
import { CheckpointError, loadCheckpoint, readTrainingState, removeInterruptedSaves, saveCheckpoint } from '../../model/checkpoint.ts';
import { MultimodalMACNetwork } from '../../model/multimodal.ts';
import { TINY, ids, maxAbsDifference } from './helpers.ts';

const root = await mkdtemp(join(tmpdir(), 'titans-checkpoint-'));
afterAll(() => rm(root, { recursive: true, force: true }));

const model = new MultimodalMACNetwork({ ...TINY, seed: 21 });
const input = ids([[5, 9, 255, 13, 17, 21, 3, 8, 1]]);
const images = tf.zeros([1, 1, 3, 16, 16]) as tf.Tensor5D;
const logits = model.forward(input, { images, imagePositions: [[2]] });

describe('a checkpoint round trip', () => {
  test('float32 gives identical logits, with the options restored from config.json', async () => {
    const dir = join(root, 'f32');
    await saveCheckpoint(model, dir);
    expect((await readdir(dir)).sort()).toEqual(['config.json', 'model.safetensors']);
    const loaded = await loadCheckpoint(dir);
    expect(loaded.config).toEqual(model.config);
    expect(maxAbsDifference(loaded.forward(input, { images, imagePositions: [[2]] }), logits)).toBe(0);
    loaded.dispose();
  });

  test('float16 halves the file and stays close', async () => {
    const dir = join(root, 'f16');
    await saveCheckpoint(model, dir, { dtype: 'float16' });
    const f16 = (await readFile(join(dir, 'model.safetensors'))).byteLength;
    const f32 = (await readFile(join(root, 'f32', 'model.safetensors'))).byteLength;
    expect(f16).toBeLessThan(f32 * 0.55);
    const loaded = await loadCheckpoint(dir);
    expect(maxAbsDifference(loaded.forward(input, { images, imagePositions: [[2]] }), logits)).toBeLessThan(5e-2);
    loaded.dispose();
  });

  test('float16 is refused, naming the weight, for a weight past its largest value, which it would store as Infinity', async () => {
    const large = new MultimodalMACNetwork({ ...TINY, seed: 21 });
    const [name, variable] = large.namedParameters().find(([n]) => n.startsWith('text.'))!;
    tf.tidy(() => variable.assign(variable.add(tf.scalar(1e5)) as tf.Variable));
    const dir = join(root, 'f16-large');
    await expect(saveCheckpoint(large, dir, { dtype: 'float16' })).rejects.toThrow(`cannot save weight '${name}' as float16`);
    await saveCheckpoint(large, dir);
    (await loadCheckpoint(dir)).dispose();
    large.dispose();
  });

  test('optimizer and trainer state travel with the weights', async () => {
    const dir = join(root, 'resume');
    const moment = tf.tensor([1, 2, 3]);
    await saveCheckpoint(model, dir, { optimizer: { 'm.x': moment }, trainer: { step: 12, random: 99 } });
    const state = await readTrainingState(dir, model);
    expect(state?.trainer).toEqual({ step: 12, random: 99 });
    expect(Array.from(state!.optimizer['m.x']!.data)).toEqual([1, 2, 3]);
    expect(await readTrainingState(join(root, 'f32'), model)).toBeNull();
    moment.dispose();
  });

  test('saving over a checkpoint replaces it whole', async () => {
    const dir = join(root, 'replace');
    await saveCheckpoint(model, dir, { trainer: { step: 1 } });
    await saveCheckpoint(model, dir);
    expect((await readdir(dir)).sort()).toEqual(['config.json', 'model.safetensors']);
    expect((await readdir(root)).filter((name) => name.includes('.tmp-'))).toEqual([]);
  });
});

describe('a bad checkpoint fails with a message that names the problem', () => {
  async function copyOf(name: string): Promise<string> {
    const dir = join(root, name);
    await saveCheckpoint(model, dir);
    return dir;
  }

  test('missing folder', async () => {
    await expect(loadCheckpoint(join(root, 'nowhere'))).rejects.toThrow(/config\.json: no such file/);
  });

  test('corrupt weights file', async () => {
    const dir = await copyOf('corrupt');
    const bytes = await readFile(join(dir, 'model.safetensors'));
    await writeFile(join(dir, 'model.safetensors'), bytes.subarray(0, bytes.byteLength - 100));
    const error = await loadCheckpoint(dir).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(CheckpointError);
    expect(String(error)).toContain('model.safetensors');
  });

  test('a config that does not match the weights names the first mismatched weight', async () => {
    const dir = await copyOf('mismatch');
    const config = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8'));
    config.model.textDim = 48;
    await writeFile(join(dir, 'config.json'), JSON.stringify(config));
    await expect(loadCheckpoint(dir)).rejects.toThrow(/weight 'vision\..*|weight '.*' has shape/);
  });

  test('a weight that holds NaN or Infinity is refused by name, as a damaged file, before anything loads', async () => {
    for (const value of [NaN, -Infinity]) {
      const damaged = new MultimodalMACNetwork({ ...TINY, seed: 21 });
      const [name, variable] = damaged.namedParameters().find(([n]) => n.startsWith('text.'))!;
      tf.tidy(() => variable.assign(variable.add(tf.scalar(value)) as tf.Variable));
      const dir = join(root, `not-finite-${value}`);
      await saveCheckpoint(damaged, dir);
      damaged.dispose();
      const baseline = tf.memory().numTensors;
      await expect(loadCheckpoint(dir)).rejects.toThrow(`weight '${name}' holds ${value} at index 0`);
      expect(tf.memory().numTensors).toBe(baseline);
    }
  });

  test('a missing weight is named', async () => {
    const dir = await copyOf('missing-weight');
    const config = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8'));
    config.model.depth = 3;
    config.model.neuralMemoryLayers = [1, 2, 3];
    await writeFile(join(dir, 'config.json'), JSON.stringify(config));
    await expect(loadCheckpoint(dir)).rejects.toThrow("missing weight 'text.layers.2.");
  });

  test('an unknown format version and an invalid option', async () => {
    const dir = await copyOf('version');
    const config = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8'));
    await writeFile(join(dir, 'config.json'), JSON.stringify({ ...config, formatVersion: 99 }));
    await expect(loadCheckpoint(dir)).rejects.toThrow('format version 99 is not supported');
    await writeFile(join(dir, 'config.json'), JSON.stringify({ ...config, model: { ...config.model, heads: -1 } }));
    await expect(loadCheckpoint(dir)).rejects.toThrow("option 'heads'");
  });

  test('a version 1 checkpoint loads as the same model: its summed inner loss becomes a mean with maxLr times dimHead', async () => {
    const options = { ...TINY, seed: 22, neuralMemoryKwargs: { maxLr: 0.8, memModelNormAddResidual: false } };
    const current = new MultimodalMACNetwork(options);
    const dir = join(root, 'version-1');
    await saveCheckpoint(current, dir);
    const config = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8'));
    const { memModelNormAddResidual, spectralNormSurprises, initDecayBias, ...version1Memory } = config.model.neuralMemoryKwargs;
    const { neuralMemWeightResidual, ...version1Model } = config.model;
    const maxLr = 0.8 / TINY.dimHead!;
    await writeFile(join(dir, 'config.json'), JSON.stringify({ ...config, formatVersion: 1, model: { ...version1Model, neuralMemoryKwargs: { ...version1Memory, maxLr } } }));
    const loaded = await loadCheckpoint(dir);
    expect(loaded.config.neuralMemoryKwargs.maxLr).toBeCloseTo(0.8, 10);
    expect(loaded.config.neuralMemoryKwargs.memModelNormAddResidual).toBe(false);
    const sequence = ids([Array.from({ length: 40 }, (_, i) => (i * 29 + 3) % 250)]);
    expect(maxAbsDifference(loaded.forward(sequence), current.forward(sequence))).toBeLessThan(1e-5);
    tf.dispose([sequence]);
    loaded.dispose();
    current.dispose();
  });

  test('every bundled checkpoint loads, and reads text to finite logits', async () => {
    const dirs = [...new Glob('models/**/config.json').scanSync(join(import.meta.dir, '../..'))].map((file) => join(import.meta.dir, '../..', file, '..'));
    expect(dirs.length).toBeGreaterThanOrEqual(5);
    const sequence = ids([Array.from({ length: 24 }, (_, i) => (i * 31 + 7) % 250)]);
    for (const dir of dirs) {
      const loaded = await loadCheckpoint(dir);
      const out = loaded.forward(sequence);
      expect(out.shape).toEqual([1, 24, 256]);
      expect(out.dataSync().every(Number.isFinite)).toBe(true);
      tf.dispose(out);
      loaded.dispose();
    }
    sequence.dispose();
  });

  test('a failed load leaves no tensor behind', async () => {
    const baseline = tf.memory().numTensors;
    await loadCheckpoint(join(root, 'mismatch')).catch(() => undefined);
    expect(tf.memory().numTensors).toBe(baseline);
  });
});

describe('saving replaces an earlier checkpoint, and nothing else', () => {
  test('a folder that holds anything but a checkpoint is refused by name, and left as it was', async () => {
    const dir = join(root, 'my-files');
    await mkdir(dir);
    await writeFile(join(dir, 'important.txt'), 'precious');
    const error = await saveCheckpoint(model, dir).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(CheckpointError);
    expect(String(error)).toContain(`cannot save a checkpoint to ${dir}: it holds 'important.txt', which is no part of a checkpoint`);
    expect(await readdir(dir)).toEqual(['important.txt']);
  });

  test('a checkpoint with a folder inside it is refused too', async () => {
    const dir = join(root, 'nested');
    await saveCheckpoint(model, dir);
    await mkdir(join(dir, 'step-000010'));
    await expect(saveCheckpoint(model, dir)).rejects.toThrow("it holds 'step-000010'");
  });

  test('a file is refused, and left as it was', async () => {
    const file = join(root, 'a-file');
    await writeFile(file, 'mine');
    await expect(saveCheckpoint(model, file)).rejects.toThrow(`cannot save a checkpoint to ${file}: it is a file`);
    // A folder below a file: the file is named, not the folder that cannot be made.
    await expect(saveCheckpoint(model, join(file, 'step-000001'))).rejects.toThrow(`cannot save a checkpoint to ${join(file, 'step-000001')}: ${file} is a file`);
    expect(await readFile(file, 'utf8')).toBe('mine');
  });

  test('an empty folder, or a checkpoint with the files a trainer writes beside it, is replaced', async () => {
    const empty = join(root, 'empty');
    await mkdir(empty);
    await saveCheckpoint(model, empty);
    expect((await readdir(empty)).sort()).toEqual(['config.json', 'model.safetensors']);
    const trained = join(root, 'trained');
    await saveCheckpoint(model, trained, { trainer: { step: 3 } });
    await writeFile(join(trained, 'card.json'), '{}');
    await writeFile(join(trained, 'pretraining.json'), '{}');
    await saveCheckpoint(model, trained);
    expect((await readdir(trained)).sort()).toEqual(['config.json', 'model.safetensors']);
  });
});

describe('what saves cut short left', () => {
  test('is cleared: a checkpoint moved aside returns to its place where its successor never took it, half-written folders go', async () => {
    const dir = join(root, 'cut-saves');
    await saveCheckpoint(model, join(dir, 'step-000002'));
    const left = [
      // Cut while replacing step-000003: moved aside, its successor not yet in place.
      '.step-000003.tmp-41-1.old',
      '.step-000003.tmp-41-1',
      // Cut while replacing step-000002, which is in place again.
      '.step-000002.tmp-42-2',
      '.step-000002.tmp-42-2.old',
    ];
    for (const name of left) await mkdir(join(dir, name));
    await writeFile(join(dir, '.step-000003.tmp-41-1.old', 'config.json'), '{}');
    await removeInterruptedSaves(dir);
    expect((await readdir(dir)).sort()).toEqual(['step-000002', 'step-000003']);
    expect(await readdir(join(dir, 'step-000003'))).toEqual(['config.json']);
    expect((await readdir(join(dir, 'step-000002'))).sort()).toEqual(['config.json', 'model.safetensors']);
    // A folder that does not exist yet holds nothing to clear.
    await removeInterruptedSaves(join(root, 'not-yet'));
  });
});

describe('config.json describes one model', () => {
  async function editedConfig(name: string, edit: (config: Record<string, Record<string, unknown>>) => void): Promise<string> {
    const dir = join(root, name);
    await saveCheckpoint(model, dir);
    const config = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8'));
    edit(config);
    await writeFile(join(dir, 'config.json'), JSON.stringify(config));
    return dir;
  }

  test('a tokenizer or image processor section that disagrees with the model options is refused, naming the field', async () => {
    const tokenizer = await editedConfig('edited-tokenizer', (config) => { config.tokenizer!.eosTokenId = 3; });
    const error = await loadCheckpoint(tokenizer).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(CheckpointError);
    expect(String(error)).toContain(`${join(tokenizer, 'config.json')}: tokenizer.eosTokenId is 3, but the model options make it 254`);
    const image = await editedConfig('edited-image', (config) => { config.imageProcessor!.imageSize = 64; });
    await expect(loadCheckpoint(image)).rejects.toThrow('imageProcessor.imageSize is 64, but the model options make it 16');
    const mean = await editedConfig('edited-mean', (config) => { config.imageProcessor!.mean = [0, 0, 0]; });
    await expect(loadCheckpoint(mean)).rejects.toThrow('imageProcessor.mean is [0,0,0], but the model options make it [0.5,0.5,0.5]');
  });

  test('a config.json without those sections (written by hand) loads', async () => {
    const dir = await editedConfig('no-sections', (config) => { delete config.tokenizer; delete config.imageProcessor; });
    const loaded = await loadCheckpoint(dir);
    expect(loaded.config).toEqual(model.config);
    loaded.dispose();
  });
});
