/**
 * A checkpoint is a folder:
 *   model.safetensors      the weights, float32 or float16, by their dotted parameter names
 *   config.json            every constructor option, the tokenizer and image settings, the format version
 *   optimizer.safetensors  optional: the optimizer's moments, to resume training
 *   trainer.json           optional: step, random state and data position, to resume training
 * A folder is written beside its final place and renamed into it, so a reader never sees half of one.
 * It replaces an earlier checkpoint there, never a file or a folder that holds anything else.
 */
import * as tf from '@tensorflow/tfjs-core';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { serializableConfig, type MultimodalMACOptions } from './config.ts';
import { MultimodalMACNetwork } from './multimodal.ts';
import { decodeSafetensors, encodeSafetensors, SafetensorsError, type SafeTensor } from './safetensors.ts';

/**
 * 2: the memory's inner loss is a mean over the head's features (it was a sum) and the memory
 * options of the reference implementation exist. A version 1 config is read as the same model in
 * version 2's terms (upgradeVersion1).
 */
export const CHECKPOINT_FORMAT_VERSION = 2;

export class CheckpointError extends Error {
  override name = 'CheckpointError';
}

export interface SaveOptions {
  /** Weight precision on disk; float16 halves the size. Default float32. */
  dtype?: 'float32' | 'float16';
  /** Optimizer state tensors (saved as float32). */
  optimizer?: Record<string, tf.Tensor>;
  /** Anything JSON the trainer needs to resume. */
  trainer?: unknown;
}

export interface CheckpointConfig {
  formatVersion: number;
  model: MultimodalMACOptions;
  tokenizer: { type: 'byte'; numTokens: number; eosTokenId: number; imageTokenId: number };
  imageProcessor: { imageSize: number; mean: number[]; std: number[]; resize: string };
}

/**
 * What a checkpoint folder may hold: its own files, and those the trainer writes beside them
 * (src/training: card.json, the model card; pretraining.json, what produced a pretrained encoder).
 */
const CHECKPOINT_FILES = new Set(['model.safetensors', 'config.json', 'optimizer.safetensors', 'trainer.json', 'card.json', 'pretraining.json']);

/** float16's largest finite value: past it, a weight would be stored as Infinity. */
const FLOAT16_MAX = 65504;

export async function saveCheckpoint(model: MultimodalMACNetwork, dir: string, options: SaveOptions = {}): Promise<void> {
  await requireReplaceable(dir);
  const dtype = options.dtype === 'float16' ? 'F16' : 'F32';
  const parts = model.storedParts();
  const weights: Record<string, SafeTensor> = {};
  for (const [name, variable] of model.namedParameters()) {
    const data = (await variable.data()) as Float32Array;
    // Infinity is what no load accepts.
    const at = dtype === 'F16' ? firstIndex(data, (value) => Math.abs(value) > FLOAT16_MAX) : -1;
    if (at >= 0) throw new CheckpointError(`cannot save weight '${name}' as float16: it holds ${data[at]}, past float16's largest (${FLOAT16_MAX}); save it as float32`);
    weights[name] = { dtype, shape: variable.shape, data };
  }
  const files: [string, Uint8Array | string][] = [
    ['model.safetensors', encodeSafetensors(splitParts(weights, parts), { format: 'titans-mm', version: String(CHECKPOINT_FORMAT_VERSION) })],
    ['config.json', JSON.stringify(checkpointConfig(model), null, 2) + '\n'],
  ];
  if (options.optimizer) {
    const state: Record<string, SafeTensor> = {};
    for (const [name, tensor] of Object.entries(options.optimizer)) {
      state[name] = { dtype: 'F32', shape: tensor.shape, data: (await tensor.data()) as Float32Array };
    }
    files.push(['optimizer.safetensors', encodeSafetensors(splitParts(state, slotParts(parts, Object.keys(state))))]);
  }
  if (options.trainer !== undefined) files.push(['trainer.json', JSON.stringify(options.trainer, null, 2) + '\n']);

  const staging = join(dirname(dir), `.${basename(dir)}.tmp-${process.pid}-${Date.now()}`);
  await mkdir(staging, { recursive: true });
  try {
    for (const [name, content] of files) await writeFile(join(staging, name), content);
    const previous = `${staging}.old`;
    const replaced = await rename(dir, previous).then(() => true, () => false);
    await rename(staging, dir);
    if (replaced) await rm(previous, { recursive: true, force: true });
  } catch (error) {
    await rm(staging, { recursive: true, force: true });
    throw error;
  }
}

/** What saveCheckpoint writes beside a checkpoint NAME: `.NAME.tmp-PID-TIME`, then `.NAME.tmp-PID-TIME.old`, the checkpoint it replaces. */
const STAGING = /^\.(.+)\.tmp-\d+-\d+(\.old)?$/;

/**
 * Clears what saves cut short (a kill, an ended thread) left in `parent`: a checkpoint moved aside
 * to be replaced goes back to its place if its successor never took it, and half-written folders go.
 * Only where no save into `parent` can be under way: a training run's start in its out folder.
 */
export async function removeInterruptedSaves(parent: string): Promise<void> {
  const names = await readdir(parent).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return [];
    throw error;
  });
  const entries = names.flatMap((entry) => {
    const match = STAGING.exec(entry);
    return match ? [{ entry, name: match[1]!, replaced: match[2] !== undefined }] : [];
  });
  // The checkpoints moved aside first, so that a half-written successor never takes their place.
  for (const { entry, name, replaced } of entries.sort((a, b) => Number(b.replaced) - Number(a.replaced))) {
    if (replaced && !existsSync(join(parent, name))) await rename(join(parent, entry), join(parent, name));
    else await rm(join(parent, entry), { recursive: true, force: true });
  }
}

/** Refuses a `dir` that a save would destroy: a file, or a folder that holds more than a checkpoint. */
async function requireReplaceable(dir: string): Promise<void> {
  const entries = await readdir(dir, { withFileTypes: true }).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return [];
    if (error.code === 'ENOTDIR') throw new CheckpointError(`cannot save a checkpoint to ${dir}: ${fileOnPath(dir)} is a file`);
    throw error;
  });
  const other = entries.find((entry) => !entry.isFile() || !CHECKPOINT_FILES.has(entry.name));
  if (other) {
    throw new CheckpointError(`cannot save a checkpoint to ${dir}: it holds '${other.name}', which is no part of a checkpoint (a save replaces only an earlier checkpoint)`);
  }
}

/** `dir` itself, or the folder above it that is a file instead. */
function fileOnPath(dir: string): string {
  for (let path = dir; path !== dirname(path); path = dirname(path)) {
    if (existsSync(path)) return path === dir ? 'it' : path;
  }
  return dir;
}

function checkpointConfig(model: MultimodalMACNetwork): CheckpointConfig {
  return { formatVersion: CHECKPOINT_FORMAT_VERSION, model: serializableConfig(model.config) as MultimodalMACOptions, ...describedSections(model) };
}

/** The tokenizer and image processor of a model, as config.json describes them for readers other than this library. */
function describedSections({ config, tokenizer }: MultimodalMACNetwork): Pick<CheckpointConfig, 'tokenizer' | 'imageProcessor'> {
  return {
    tokenizer: { type: 'byte', numTokens: tokenizer.numTokens, eosTokenId: tokenizer.eosTokenId, imageTokenId: tokenizer.imageTokenId },
    imageProcessor: { imageSize: config.imageSize, mean: [...config.imageMean], std: [...config.imageStd], resize: config.imageResize },
  };
}

/**
 * Refuses a config.json whose tokenizer or image processor sections (where it has them) describe
 * another model than its model options build: an edited section changes nothing here, but misleads
 * every other reader of the file.
 */
function requireMatchingSections(saved: CheckpointConfig, model: MultimodalMACNetwork, file: string): void {
  const described = describedSections(model);
  for (const section of ['tokenizer', 'imageProcessor'] as const) {
    const fields = saved[section] as Record<string, unknown> | undefined;
    if (fields === undefined) continue;
    for (const [field, value] of Object.entries(described[section])) {
      if (JSON.stringify(fields[field]) !== JSON.stringify(value)) {
        throw new CheckpointError(`${file}: ${section}.${field} is ${JSON.stringify(fields[field])}, but the model options make it ${JSON.stringify(value)}`);
      }
    }
  }
}

/** Reads and checks config.json. */
export async function readCheckpointConfig(dir: string): Promise<CheckpointConfig> {
  const text = await readFile(join(dir, 'config.json'), 'utf8').catch((error: NodeJS.ErrnoException) => {
    throw new CheckpointError(`cannot read ${join(dir, 'config.json')}: ${error.code === 'ENOENT' ? 'no such file' : error.message}`);
  });
  let parsed: CheckpointConfig;
  try {
    parsed = JSON.parse(text) as CheckpointConfig;
  } catch (error) {
    throw new CheckpointError(`${join(dir, 'config.json')} is not valid JSON: ${(error as Error).message}`);
  }
  if (parsed?.formatVersion !== CHECKPOINT_FORMAT_VERSION && parsed?.formatVersion !== 1) {
    throw new CheckpointError(`${join(dir, 'config.json')}: format version ${JSON.stringify(parsed?.formatVersion)} is not supported (expected 1 or ${CHECKPOINT_FORMAT_VERSION})`);
  }
  if (typeof parsed.model !== 'object' || parsed.model === null) throw new CheckpointError(`${join(dir, 'config.json')}: missing "model" options`);
  return parsed.formatVersion === 1 ? upgradeVersion1(parsed) : parsed;
}

/**
 * A version 1 model took its surprises of sum_d (M(k) - v)^2, had no residual norm around its memory
 * network and no spectral norm: the same model today has maxLr times dimHead and those options off.
 */
function upgradeVersion1(config: CheckpointConfig): CheckpointConfig {
  const { model } = config;
  const memory = model.neuralMemoryKwargs ?? {};
  // Version 1 saved every option; its defaults (dimHead 64, maxLr 0.1) only cover a hand-written file.
  const dimHead = memory.dimHead ?? model.dimHead ?? 64;
  const maxLr = (memory.maxLr ?? 0.1) * dimHead;
  return {
    ...config,
    formatVersion: CHECKPOINT_FORMAT_VERSION,
    model: { ...model, neuralMemoryKwargs: { ...memory, maxLr, memModelNormAddResidual: false, spectralNormSurprises: false } },
  };
}

/**
 * Builds the model that config.json describes and loads its weights. `construct` lets a caller build
 * a subclass (the public MultimodalMAC adds its image processor).
 */
export async function loadCheckpoint<M extends MultimodalMACNetwork = MultimodalMACNetwork>(
  dir: string,
  construct: (options: MultimodalMACOptions) => M = (options) => new MultimodalMACNetwork(options) as M,
): Promise<M> {
  const config = await readCheckpointConfig(dir);
  let model: M;
  try {
    model = construct(config.model);
  } catch (error) {
    throw new CheckpointError(`${join(dir, 'config.json')}: ${(error as Error).message}`);
  }
  try {
    requireMatchingSections(config, model, join(dir, 'config.json'));
    loadWeights(model, await readSafetensors(join(dir, 'model.safetensors')), join(dir, 'model.safetensors'));
  } catch (error) {
    model.dispose();
    throw error;
  }
  return model;
}

/**
 * Copies weights into the model's variables after checking every name and shape, in the file's
 * terms: a fused parameter (Module.storeAsParts) is checked part by part, then joined.
 */
export function loadWeights(model: MultimodalMACNetwork, tensors: Record<string, SafeTensor>, source: string): void {
  const params = model.namedParameters();
  const parts = model.storedParts();
  const expected = new Map<string, number[]>();
  for (const [name, variable] of params) {
    const split = parts.get(name);
    if (!split) expected.set(name, variable.shape);
    else for (const part of split) expected.set(part, [...variable.shape.slice(0, -1), variable.shape.at(-1)! / split.length]);
  }
  for (const [name, shape] of expected) {
    const tensor = tensors[name];
    if (!tensor) throw new CheckpointError(`${source}: missing weight '${name}' (shape [${shape.join(', ')}])`);
    if (tensor.shape.join() !== shape.join()) {
      throw new CheckpointError(`${source}: weight '${name}' has shape [${tensor.shape.join(', ')}], the model expects [${shape.join(', ')}]`);
    }
    if (tensor.dtype === 'I32') throw new CheckpointError(`${source}: weight '${name}' is int32, expected float`);
    // Training never stores one (a non-finite update is skipped): such a file is damaged, and would load only to overflow on every request.
    const at = firstIndex(tensor.data, (value) => !Number.isFinite(value));
    if (at >= 0) throw new CheckpointError(`${source}: weight '${name}' holds ${tensor.data[at]} at index ${at}; a checkpoint's weights are finite`);
  }
  const unexpected = Object.keys(tensors).find((name) => !expected.has(name));
  if (unexpected) throw new CheckpointError(`${source}: unexpected weight '${unexpected}' that the model does not have`);
  const joined = joinParts(tensors, parts);
  for (const [name, variable] of params) {
    const { data, shape } = joined[name]!;
    tf.tidy(() => variable.assign(tf.tensor(data, shape, 'float32')));
  }
}

/** The index of the first value that passes `test`, or -1; a plain loop, ten times faster than findIndex over a large model. */
function firstIndex(data: Float32Array | Int32Array, test: (value: number) => boolean): number {
  for (let i = 0; i < data.length; i++) if (test(data[i]!)) return i;
  return -1;
}

/**
 * Training state saved beside the weights, or null when the checkpoint has none. Its optimizer
 * state is keyed by `model`'s parameter names (fused ones joined from their parts).
 */
export async function readTrainingState(dir: string, model: MultimodalMACNetwork): Promise<{ optimizer: Record<string, SafeTensor>; trainer: unknown } | null> {
  const trainerText = await readFile(join(dir, 'trainer.json'), 'utf8').catch(() => null);
  if (trainerText === null) return null;
  let trainer: unknown;
  try {
    trainer = JSON.parse(trainerText);
  } catch (error) {
    throw new CheckpointError(`cannot read ${join(dir, 'trainer.json')}: ${(error as Error).message}`);
  }
  const optimizer = await readSafetensors(join(dir, 'optimizer.safetensors'));
  return { optimizer: joinParts(optimizer, slotParts(model.storedParts(), Object.keys(optimizer))), trainer };
}

/** Tensors under the model's names -> under the file's: each fused parameter split into its parts. */
function splitParts(tensors: Record<string, SafeTensor>, parts: Map<string, string[]>): Record<string, SafeTensor> {
  const out: Record<string, SafeTensor> = {};
  for (const [name, tensor] of Object.entries(tensors)) {
    const split = parts.get(name);
    if (!split) {
      out[name] = tensor;
      continue;
    }
    const width = tensor.shape.at(-1)! / split.length;
    const rows = tensor.data.length / tensor.shape.at(-1)!;
    split.forEach((part, p) => {
      const data = new Float32Array(rows * width);
      for (let r = 0; r < rows; r++) data.set(tensor.data.subarray((r * split.length + p) * width, (r * split.length + p + 1) * width), r * width);
      out[part] = { dtype: tensor.dtype, shape: [...tensor.shape.slice(0, -1), width], data };
    });
  }
  return out;
}

/** The inverse of splitParts; a fused parameter whose parts are not all there is left out. */
function joinParts(tensors: Record<string, SafeTensor>, parts: Map<string, string[]>): Record<string, SafeTensor> {
  const out: Record<string, SafeTensor> = { ...tensors };
  for (const [name, split] of parts) {
    const pieces = split.map((part) => tensors[part]);
    for (const part of split) delete out[part];
    if (pieces.some((piece) => !piece)) continue;
    const [first] = pieces as SafeTensor[];
    const width = first!.shape.at(-1)!;
    const rows = first!.data.length / width;
    const data = new Float32Array(rows * width * split.length);
    pieces.forEach((piece, p) => {
      for (let r = 0; r < rows; r++) data.set(piece!.data.subarray(r * width, (r + 1) * width), (r * split.length + p) * width);
    });
    out[name] = { dtype: first!.dtype, shape: [...first!.shape.slice(0, -1), width * split.length], data };
  }
  return out;
}

/** `parts` for state keyed `<slot>.<parameter>`, as the optimizer's `m.` and `v.` moments are. */
function slotParts(parts: Map<string, string[]>, keys: string[]): Map<string, string[]> {
  const slots = new Set(keys.map((key) => key.slice(0, key.indexOf('.') + 1)));
  const out = new Map<string, string[]>();
  for (const slot of slots) for (const [name, split] of parts) out.set(slot + name, split.map((part) => slot + part));
  return out;
}

async function readSafetensors(path: string): Promise<Record<string, SafeTensor>> {
  const bytes = await readFile(path).catch((error: NodeJS.ErrnoException) => {
    throw new CheckpointError(`cannot read ${path}: ${error.code === 'ENOENT' ? 'no such file' : error.message}`);
  });
  try {
    return decodeSafetensors(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength)).tensors;
  } catch (error) {
    if (error instanceof SafetensorsError) throw new CheckpointError(`${path}: ${error.message}`);
    throw error;
  }
}
