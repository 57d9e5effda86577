/**
 * The training job description, as the API receives it and the CLI reads it from config.json:
 * `{ model | base_checkpoint, data, vision_pretraining, train, activate }`. parseJobSpec checks every field at the
 * boundary and fills in defaults; a SpecError names the first bad field (API: 400).
 */
import { availableParallelism } from 'node:os';
import { ConfigError, resolveConfig, type MultimodalMACOptions } from '../../model/config.ts';
import { MAX_KEY_DIGITS, PASSKEY_DIGITS, longestPasskeyTokens } from '../data/passkey.ts';

export type DataType = 'synthetic-shapes' | 'annotations' | 'coco' | 'text' | 'passkey';

export interface DataSpec {
  type: DataType;
  /** annotations: JSON list of {image, text}. */
  annotations_file?: string;
  /** coco: COCO captions JSON. */
  captions_file?: string;
  /** annotations, coco: folder of the image files (default: the data folder). */
  image_dir?: string;
  /** Plain UTF-8 text for text-only steps (required for type "text"). */
  text_data_path?: string;
  /** Fraction of steps that are text-only: 1 for type "text", default 0.25 when text is given beside images. */
  text_ratio: number;
  /** Longest example in tokens; longer captions are cut, text is read in windows of this size. */
  max_tokens: number;
  /** Validation examples (synthetic: scenes of the validation split; files: held out from training). */
  val_size: number;
  /** Prompts put before the image, one drawn per example; "" is no prompt. */
  prompts: string[];
  /** Passkey retrieval examples (src/data/passkey.ts) as text-only steps beside the others; every step for type "passkey". */
  passkey?: PasskeySpec;
}

export interface PasskeySpec {
  /** Fraction of steps that are passkey steps; with text_ratio at most 1 in all. */
  ratio: number;
  /** [min, max] filler length in tokens; longer than 8 attention segments to need the memory. */
  filler_tokens: [number, number];
  /** [min, max] digits of a key (default [5, 5], the evaluation's). */
  key_digits: [number, number];
  /**
   * [step, tokens] points of a piecewise-linear schedule of the longest training filler, held flat
   * past its ends (a curriculum: short filler first); the validation examples always span filler_tokens.
   */
  filler_schedule?: [number, number][];
  /** [min, max] fraction of the filler before the key (default [0, 0]: the key first). */
  depth: [number, number];
  /** 'repeated' (default): the passkey filler; 'mixed': scene captions among its sentences (src/data/passkey.ts). */
  haystack: 'repeated' | 'mixed';
}

export interface TrainSpec {
  steps: number;
  batch_size: number;
  grad_accum: number;
  lr: number;
  /** Floor of the cosine decay; default lr / 10. */
  min_lr: number;
  warmup: number;
  weight_decay: number;
  clip: number;
  /** Validation loss every N steps and at the end; 0 = at the end only. */
  eval_every: number;
  /** Checkpoint every N steps; one is always written at the end. */
  checkpoint_every: number;
  /** Checkpoints kept (the latest K). */
  keep_checkpoints: number;
  seed: number;
  /** Data-parallel worker threads; batch_size must be a multiple of it. */
  workers: number;
  /**
   * Keep the vision encoder as it is: no gradient reaches it and the optimizer holds no state for
   * it. Default: true after vision_pretraining, false otherwise.
   */
  freeze_vision: boolean;
}

/**
 * Stage 1 of a two-stage run (src/training/vision-pretraining.ts): the vision encoder alone learns to
 * name what each image token shows, then captioning trains everything else with it frozen.
 */
export interface VisionPretrainingSpec {
  steps: number;
  batch_size: number;
  lr: number;
  warmup: number;
  /** Held-out accuracy every N steps and at the end; 0 = at the end only. */
  eval_every: number;
}

export interface JobSpec {
  model?: MultimodalMACOptions;
  base_checkpoint?: string;
  data: DataSpec;
  vision_pretraining?: VisionPretrainingSpec;
  train: TrainSpec;
  /** Load the final checkpoint into the inference workers when the job succeeds. */
  activate: boolean;
}

/** Prompts of docs/shapes.md: none, the default, and a few paraphrases. */
export const DEFAULT_PROMPTS = ['', 'This is an image of ', 'An image of ', 'This picture shows ', 'Caption: '];

/**
 * Upper bounds of the job fields that size a run. They keep a typo or a hostile body from asking for
 * a run of years or a batch no machine holds; what a job's model and batch need in memory together is
 * checked against the server's limit at submission (src/training/memory.ts).
 */
export const LIMITS = Object.freeze({
  steps: 10_000_000,
  batchSize: 1024,
  gradAccum: 1024,
  /** Longest example, in tokens (data.max_tokens). */
  exampleTokens: 65_536,
  /** Validation examples (data.val_size): each is read at every evaluation. */
  validationExamples: 10_000,
  keptCheckpoints: 100,
  prompts: 1000,
});

/** A bad field of a job body; `field` names it, for the API's 400. */
export class SpecError extends Error {
  override name = 'SpecError';

  constructor(
    readonly field: string,
    message: string,
  ) {
    super(message);
  }
}

const TOP_FIELDS = ['model', 'base_checkpoint', 'data', 'vision_pretraining', 'train', 'activate'];
const VISION_PRETRAINING_FIELDS = ['steps', 'batch_size', 'lr', 'warmup', 'eval_every'];
const DATA_FIELDS = ['type', 'annotations_file', 'captions_file', 'image_dir', 'text_data_path', 'text_ratio', 'max_tokens', 'val_size', 'prompts', 'passkey'];
const PASSKEY_FIELDS = ['ratio', 'filler_tokens', 'key_digits', 'filler_schedule', 'depth', 'haystack'];
const TRAIN_FIELDS = ['steps', 'batch_size', 'grad_accum', 'lr', 'min_lr', 'warmup', 'weight_decay', 'clip', 'eval_every', 'checkpoint_every', 'keep_checkpoints', 'seed', 'workers', 'freeze_vision'];
const DATA_TYPES: DataType[] = ['synthetic-shapes', 'annotations', 'coco', 'text', 'passkey'];

export function parseJobSpec(body: unknown): JobSpec {
  const top = record(body, 'body');
  unknownFields(top, TOP_FIELDS, '');
  if (top.model !== undefined && top.base_checkpoint !== undefined) {
    throw new SpecError('base_checkpoint', 'give either model or base_checkpoint, not both');
  }
  let model: MultimodalMACOptions | undefined;
  if (top.model !== undefined) {
    model = record(top.model, 'model') as MultimodalMACOptions;
    try {
      resolveConfig(model);
    } catch (error) {
      if (error instanceof ConfigError) throw new SpecError('model', `model: ${error.message}`);
      throw error;
    }
  }
  const base_checkpoint = top.base_checkpoint === undefined ? undefined : path(top.base_checkpoint, 'base_checkpoint');
  if (top.activate !== undefined && typeof top.activate !== 'boolean') throw new SpecError('activate', 'activate must be true or false');
  const train = parseTrain(top.train === undefined ? {} : record(top.train, 'train'), top.vision_pretraining !== undefined);
  const data = parseData(record(top.data, 'data'));
  const vision_pretraining = top.vision_pretraining === undefined ? undefined : parseVisionPretraining(record(top.vision_pretraining, 'vision_pretraining'), data);
  return { ...(model && { model }), ...(base_checkpoint && { base_checkpoint }), data, ...(vision_pretraining && { vision_pretraining }), train, activate: top.activate === true };
}

function parseVisionPretraining(pretraining: Record<string, unknown>, data: DataSpec): VisionPretrainingSpec {
  unknownFields(pretraining, VISION_PRETRAINING_FIELDS, 'vision_pretraining.');
  // Its labels (what each part of an image shows) come from the generator's scene descriptions.
  if (data.type !== 'synthetic-shapes') {
    throw new SpecError('vision_pretraining', `vision_pretraining needs data.type "synthetic-shapes", got "${data.type}"`);
  }
  const steps = integer(pretraining.steps, 'vision_pretraining.steps', 400, 1, LIMITS.steps);
  const warmup = integer(pretraining.warmup, 'vision_pretraining.warmup', Math.min(50, Math.floor(steps / 10)), 0);
  if (warmup > steps) throw new SpecError('vision_pretraining.warmup', `vision_pretraining.warmup (${warmup}) must be at most vision_pretraining.steps (${steps})`);
  return {
    steps,
    batch_size: integer(pretraining.batch_size, 'vision_pretraining.batch_size', 32, 1, LIMITS.batchSize),
    lr: positive(pretraining.lr, 'vision_pretraining.lr', 2e-3),
    warmup,
    eval_every: integer(pretraining.eval_every, 'vision_pretraining.eval_every', 0, 0, LIMITS.steps),
  };
}

function parseData(data: Record<string, unknown>): DataSpec {
  unknownFields(data, DATA_FIELDS, 'data.');
  if (!DATA_TYPES.includes(data.type as DataType)) {
    throw new SpecError('data.type', `data.type must be one of ${DATA_TYPES.map((t) => `"${t}"`).join(', ')}, got ${JSON.stringify(data.type)}`);
  }
  const type = data.type as DataType;
  const required: Record<DataType, string[]> = {
    'synthetic-shapes': [],
    annotations: ['annotations_file'],
    coco: ['captions_file', 'image_dir'],
    text: ['text_data_path'],
    passkey: ['passkey'],
  };
  for (const field of required[type]) {
    if (data[field] === undefined) throw new SpecError(`data.${field}`, `data.${field} is required for data.type "${type}"`);
  }
  const paths: Partial<DataSpec> = {};
  for (const field of ['annotations_file', 'captions_file', 'image_dir', 'text_data_path'] as const) {
    if (data[field] !== undefined) paths[field] = path(data[field], `data.${field}`);
  }
  const hasText = paths.text_data_path !== undefined;
  const text_ratio = type === 'text' ? 1 : hasText ? number(data.text_ratio, 'data.text_ratio', 0.25, 0, 1) : 0;
  if (type !== 'text' && !hasText && data.text_ratio !== undefined) {
    throw new SpecError('data.text_ratio', 'data.text_ratio needs data.text_data_path');
  }
  const prompts = data.prompts === undefined ? DEFAULT_PROMPTS : data.prompts;
  if (!Array.isArray(prompts) || prompts.length === 0 || prompts.length > LIMITS.prompts || prompts.some((p) => typeof p !== 'string')) {
    throw new SpecError('data.prompts', `data.prompts must be a non-empty list of at most ${LIMITS.prompts} strings`);
  }
  const max_tokens = integer(data.max_tokens, 'data.max_tokens', 128, 8, LIMITS.exampleTokens);
  const passkey = data.passkey === undefined ? undefined : parsePasskey(record(data.passkey, 'data.passkey'), type, text_ratio, max_tokens);
  return {
    type,
    ...paths,
    text_ratio,
    max_tokens,
    val_size: integer(data.val_size, 'data.val_size', 32, 0, LIMITS.validationExamples),
    prompts,
    ...(passkey && { passkey }),
  };
}

function parsePasskey(passkey: Record<string, unknown>, type: DataType, textRatio: number, maxTokens: number): PasskeySpec {
  unknownFields(passkey, PASSKEY_FIELDS, 'data.passkey.');
  let ratio = 1;
  if (type === 'passkey') {
    // Every step is a passkey step: there is nothing else to read.
    if (passkey.ratio !== undefined && passkey.ratio !== 1) throw new SpecError('data.passkey.ratio', `data.passkey.ratio is 1 for data.type "passkey", got ${JSON.stringify(passkey.ratio)}`);
  } else {
    if (passkey.ratio === undefined) throw new SpecError('data.passkey.ratio', 'data.passkey.ratio is required');
    ratio = positive(passkey.ratio, 'data.passkey.ratio', 0);
  }
  if (textRatio + ratio > 1) {
    throw new SpecError('data.passkey.ratio', `data.passkey.ratio (${ratio}) plus data.text_ratio (${textRatio}) must be at most 1`);
  }
  const filler = wholeRange(passkey.filler_tokens, 'data.passkey.filler_tokens', 0, Number.MAX_SAFE_INTEGER);
  const digits = wholeRange(passkey.key_digits, 'data.passkey.key_digits', 1, MAX_KEY_DIGITS, [PASSKEY_DIGITS, PASSKEY_DIGITS]);
  // Cutting an example to max_tokens would cut off the answer, the only part worth learning.
  const longest = longestPasskeyTokens(filler[1], digits[1]);
  if (longest > maxTokens) {
    throw new SpecError('data.passkey.filler_tokens', `a passkey example with ${filler[1]} filler tokens is ${longest} tokens long, more than data.max_tokens (${maxTokens})`);
  }
  const schedule = passkey.filler_schedule === undefined ? undefined : fillerSchedule(passkey.filler_schedule, filler);
  const depth = passkey.depth ?? [0, 0];
  if (!Array.isArray(depth) || depth.length !== 2 || !depth.every((d) => typeof d === 'number' && d >= 0 && d <= 1) || depth[0] > depth[1]) {
    throw new SpecError('data.passkey.depth', `data.passkey.depth must be [min, max] with 0 <= min <= max <= 1, got ${JSON.stringify(passkey.depth)}`);
  }
  const haystack = passkey.haystack ?? 'repeated';
  if (haystack !== 'repeated' && haystack !== 'mixed') {
    throw new SpecError('data.passkey.haystack', `data.passkey.haystack must be "repeated" or "mixed", got ${JSON.stringify(passkey.haystack)}`);
  }
  return { ratio, filler_tokens: filler, key_digits: digits, ...(schedule && { filler_schedule: schedule }), depth: [depth[0], depth[1]], haystack };
}

function fillerSchedule(value: unknown, filler: [number, number]): [number, number][] {
  const field = 'data.passkey.filler_schedule';
  const points = Array.isArray(value) ? value : [];
  const valid = points.length > 0 && points.every((p, i) =>
    Array.isArray(p) && p.length === 2 && p.every((n) => Number.isSafeInteger(n)) && p[1] >= filler[0] && p[1] <= filler[1] && p[0] >= 0 && (i === 0 || p[0] > points[i - 1][0]));
  if (!valid) {
    throw new SpecError(field, `${field} must be a non-empty list of [step, tokens], steps increasing, tokens within filler_tokens [${filler.join(', ')}], got ${JSON.stringify(value)}`);
  }
  return points.map(([step, tokens]) => [step, tokens]);
}

/** [min, max], whole numbers with lowest <= min <= max <= highest; the fallback, if any, when not given. */
function wholeRange(value: unknown, field: string, lowest: number, highest: number, fallback?: [number, number]): [number, number] {
  if (value === undefined && fallback) return fallback;
  if (!Array.isArray(value) || value.length !== 2 || !value.every((n) => Number.isSafeInteger(n) && n >= lowest && n <= highest) || value[0] > value[1]) {
    const bounds = highest === Number.MAX_SAFE_INTEGER ? `${lowest} <= min <= max` : `${lowest} <= min <= max <= ${highest}`;
    throw new SpecError(field, `${field} must be [min, max], whole numbers with ${bounds}, got ${JSON.stringify(value)}`);
  }
  return [value[0], value[1]];
}

function parseTrain(train: Record<string, unknown>, pretrainsVision: boolean): TrainSpec {
  unknownFields(train, TRAIN_FIELDS, 'train.');
  const steps = integer(train.steps, 'train.steps', 1000, 1, LIMITS.steps);
  const lr = number(train.lr, 'train.lr', 3e-4, 0);
  const workers = integer(train.workers, 'train.workers', 1, 1);
  // Each worker holds a model copy and wants a core of its own: more than the cores only costs memory.
  if (workers > availableParallelism()) {
    throw new SpecError('train.workers', `train.workers (${workers}) must be at most the number of cores (${availableParallelism()})`);
  }
  const batch_size = integer(train.batch_size, 'train.batch_size', 8, 1, LIMITS.batchSize);
  if (batch_size % workers !== 0) {
    throw new SpecError('train.batch_size', `train.batch_size (${batch_size}) must be a multiple of train.workers (${workers})`);
  }
  const warmup = integer(train.warmup, 'train.warmup', Math.min(100, Math.floor(steps / 10)), 0);
  if (warmup > steps) throw new SpecError('train.warmup', `train.warmup (${warmup}) must be at most train.steps (${steps})`);
  if (train.freeze_vision !== undefined && typeof train.freeze_vision !== 'boolean') {
    throw new SpecError('train.freeze_vision', 'train.freeze_vision must be true or false');
  }
  return {
    steps,
    batch_size,
    grad_accum: integer(train.grad_accum, 'train.grad_accum', 1, 1, LIMITS.gradAccum),
    lr,
    min_lr: number(train.min_lr, 'train.min_lr', lr / 10, 0),
    warmup,
    weight_decay: number(train.weight_decay, 'train.weight_decay', 0.01, 0),
    clip: positive(train.clip, 'train.clip', 1),
    eval_every: integer(train.eval_every, 'train.eval_every', 0, 0, LIMITS.steps),
    checkpoint_every: integer(train.checkpoint_every, 'train.checkpoint_every', 0, 0, LIMITS.steps),
    keep_checkpoints: integer(train.keep_checkpoints, 'train.keep_checkpoints', 3, 1, LIMITS.keptCheckpoints),
    seed: integer(train.seed, 'train.seed', 0, 0, 2 ** 32 - 1),
    workers,
    freeze_vision: train.freeze_vision ?? pretrainsVision,
  };
}

function record(value: unknown, field: string): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new SpecError(field, `${field} must be a JSON object${value === undefined ? ' (missing)' : ''}`);
  }
  return value as Record<string, unknown>;
}

function unknownFields(value: Record<string, unknown>, known: string[], prefix: string): void {
  const extra = Object.keys(value).find((key) => !known.includes(key));
  if (extra !== undefined) throw new SpecError(`${prefix}${extra}`, `unknown field '${prefix}${extra}'`);
}

function path(value: unknown, field: string): string {
  if (typeof value !== 'string' || value.length === 0 || value.includes('\0')) throw new SpecError(field, `${field} must be a non-empty path`);
  return value;
}

function integer(value: unknown, field: string, fallback: number, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (value === undefined) return fallback;
  if (!Number.isSafeInteger(value) || (value as number) < min || (value as number) > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `>= ${min}` : `in [${min}, ${max}]`;
    throw new SpecError(field, `${field} must be a whole number ${range}, got ${JSON.stringify(value)}`);
  }
  return value as number;
}

function positive(value: unknown, field: string, fallback: number): number {
  const n = number(value, field, fallback, 0);
  if (n === 0) throw new SpecError(field, `${field} must be a number > 0, got 0`);
  return n;
}

function number(value: unknown, field: string, fallback: number, min: number, max = Infinity): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isFinite(value) || value < min || value > max) {
    const range = max === Infinity ? `>= ${min}` : `between ${min} and ${max}`;
    throw new SpecError(field, `${field} must be a number ${range}, got ${JSON.stringify(value)}`);
  }
  return value;
}
