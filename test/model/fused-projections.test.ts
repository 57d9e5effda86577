/**
 * The neural memory's queries, keys and values are one product (and one convolution): the model
 * computes what the three separate ones computed, and checkpoints keep the three separate names.
 */
import { afterAll, describe, expect, test } from 'bun:test';
import * as tf from '@tensorflow/tfjs-core';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadCheckpoint, readTrainingState, saveCheckpoint } from '../../model/checkpoint.ts';
import type { MultimodalMACOptions } from '../../model/config.ts';
import { MultimodalMACNetwork } from '../../model/multimodal.ts';
import { AdamW } from '../../model/optim.ts';
import { decodeSafetensors } from '../../model/safetensors.ts';
import { ids } from './helpers.ts';

/** Logits that the implementation before the fusion computed for a seeded model (see its `source`). */
const unfused = JSON.parse(await readFile(join(import.meta.dir, 'fixtures', 'unfused-logits.json'), 'utf8')) as {
  options: MultimodalMACOptions;
  tokens: number[];
  rows: number[];
  logits: number[][];
};

const root = await mkdtemp(join(tmpdir(), 'titans-fused-'));
afterAll(() => rm(root, { recursive: true, force: true }));

async function storedTensors(dir: string) {
  return decodeSafetensors(new Uint8Array(await readFile(join(dir, 'model.safetensors')))).tensors;
}

function maxDifference(actual: tf.Tensor, expected: number[]): number {
  const values = actual.dataSync();
  return expected.reduce((max, e, i) => Math.max(max, Math.abs(values[i]! - e)), 0);
}

describe('fused queries, keys and values in the neural memory', () => {
  test('a seeded model gives the logits of the unfused implementation, in a forward and decoding token by token (max abs difference < 1e-5)', () => {
    const model = new MultimodalMACNetwork(unfused.options);
    const { tokens, rows } = unfused;
    const forward = tf.tidy(() => model.text.forward(model.text.embed(ids([tokens]))).logits);
    const cache = model.text.createCache(1);
    const stepped = tokens.map((token) => {
      const embedding = tf.tidy(() => model.text.embed(ids([[token]])));
      const logits = model.text.step(embedding, cache);
      embedding.dispose();
      return logits;
    });
    rows.forEach((row, i) => {
      tf.tidy(() => {
        expect(maxDifference(forward.slice([0, row, 0], [1, 1, -1]), unfused.logits[i]!)).toBeLessThan(1e-5);
        expect(maxDifference(stepped[row]!, unfused.logits[i]!)).toBeLessThan(1e-5);
      });
    });
    tf.dispose([forward, ...stepped]);
    cache.dispose();
    model.dispose();
  });

  test('a checkpoint keeps toQueries, toKeys, toValues and the three convolutions under their own names and shapes', async () => {
    const model = new MultimodalMACNetwork(unfused.options);
    const dir = join(root, 'names');
    await saveCheckpoint(model, dir);
    const stored = await storedTensors(dir);
    const memory = 'text.layers.0.memory.';
    const inner = 2 * 8; // heads x dimHead of the fixture's options
    for (const name of ['toQueries', 'toKeys', 'toValues']) expect(stored[`${memory}${name}.weight`]!.shape).toEqual([32, inner]);
    for (const name of ['queryConv', 'keyConv', 'valueConv']) expect(stored[`${memory}${name}.weight`]!.shape).toEqual([3, inner]);
    expect(Object.keys(stored).filter((name) => name.includes('toQKV') && name.includes('memory') || name.includes('qkvConv'))).toEqual([]);
    // Each stored part is its block of the fused weight.
    const fused = model.text.layers[0]!.memory!.toQKV.weight.arraySync() as number[][];
    const keys = stored[`${memory}toKeys.weight`]!;
    expect(Array.from(keys.data.subarray(0, inner))).toEqual(fused[0]!.slice(inner, 2 * inner).map(Math.fround));
    model.dispose();
  });

  test('the bundled model, saved before the fusion, loads and saves back the same tensors under the same names', async () => {
    const model = await loadCheckpoint('models/default');
    const dir = join(root, 'default');
    await saveCheckpoint(model, dir);
    const [before, after] = [await storedTensors('models/default'), await storedTensors(dir)];
    expect(Object.keys(after)).toEqual(Object.keys(before));
    for (const [name, tensor] of Object.entries(before)) {
      expect(after[name]!.shape).toEqual(tensor.shape);
      expect(Buffer.compare(Buffer.from(after[name]!.data.buffer, after[name]!.data.byteOffset, after[name]!.data.byteLength),
        Buffer.from(tensor.data.buffer, tensor.data.byteOffset, tensor.data.byteLength))).toBe(0);
    }
    model.dispose();
  });

  test("the optimizer's moments of a fused weight are saved as its parts and read back joined", async () => {
    const model = new MultimodalMACNetwork(unfused.options);
    const optimizer = new AdamW(model.namedParameters(), { lr: 1e-2 });
    const grads = tf.tidy(() => Object.fromEntries(model.namedParameters().map(([name, v]) => [name, tf.randomNormal(v.shape, 0, 1, 'float32', 3)])));
    optimizer.step(grads);
    const dir = join(root, 'optimizer');
    await saveCheckpoint(model, dir, { optimizer: optimizer.state(), trainer: { step: 1 } });
    const optimizerFile = decodeSafetensors(new Uint8Array(await readFile(join(dir, 'optimizer.safetensors')))).tensors;
    expect(optimizerFile['m.text.layers.0.memory.toKeys.weight']).toBeDefined();
    expect(optimizerFile['m.text.layers.0.memory.toQKV.weight']).toBeUndefined();
    const state = await readTrainingState(dir, model);
    for (const [name, tensor] of Object.entries(optimizer.state())) {
      expect(Array.from(state!.optimizer[name]!.data)).toEqual(Array.from(tensor.dataSync()));
    }
    tf.dispose(Object.values(grads));
    optimizer.dispose();
    model.dispose();
  });
});
