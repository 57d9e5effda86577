/**
 * The training job description, as the API receives it and the CLI reads it from config.json:
 * `{ model, base_checkpoint, data, vision_pretraining, train, activate }`. jobSpecSchema states
 * every field once (its type, range and default; GET /openapi.json publishes it); parseJobSpec checks
 * a body against it, then the rules between fields, and fills the defaults that depend on other
 * fields. A SpecError names the first bad field (API: 400).
 */
import { availableParallelism } from 'node:os';
import { z } from 'zod';
import { ConfigError, resolveConfig, type MultimodalMACOptions } from '../../model/config.ts';
import { MAX_SEED } from '../../model/random.ts';
import { MAX_KEY_DIGITS, PASSKEY_DIGITS, longestPasskeyTokens } from '../data/passkey.ts';
import { failsWith, firstIssue, shown } from '../schema/issues.ts';

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

/** A whole number in [min, max] (>= min without a max). */
function whole(min: number, max = Number.MAX_SAFE_INTEGER) {
  const range = max === Number.MAX_SAFE_INTEGER ? `>= ${min}` : `in [${min}, ${max}]`;
  const error = failsWith((input) => `must be a whole number ${range}, got ${shown(input)}`);
  return z.int(error).gte(min, error).lte(max, error);
}

/** A finite number in [min, max] (>= min without a max). */
function number(min: number, max = Infinity) {
  const range = max === Infinity ? `>= ${min}` : `between ${min} and ${max}`;
  const error = failsWith((input) => `must be a number ${range}, got ${shown(input)}`);
  const atLeast = z.number(error).gte(min, error);
  return max === Infinity ? atLeast : atLeast.lte(max, error);
}

/** A number > 0. */
function positive() {
  return number(0).gt(0, failsWith((input) => `must be a number > 0, got ${shown(input)}`));
}

const flag = () => z.boolean(failsWith(() => 'must be true or false'));

/** Longest path, as Linux's PATH_MAX: a job's spec is stored as given, and listed with every page of jobs. */
const MAX_PATH_CHARACTERS = 4096;

const path = () => {
  const error = failsWith(() => `must be a non-empty path of at most ${MAX_PATH_CHARACTERS} characters`);
  return z.string(error).min(1, error).max(MAX_PATH_CHARACTERS, error).refine((value) => !value.includes('\0'), error);
};

/** [min, max], whole numbers with lowest <= min <= max <= highest; checked as a whole, so a fault is the pair's. */
function wholeRange(lowest: number, highest = Number.MAX_SAFE_INTEGER) {
  const bounds = highest === Number.MAX_SAFE_INTEGER ? `${lowest} <= min <= max` : `${lowest} <= min <= max <= ${highest}`;
  const error = failsWith((input) => `must be [min, max], whole numbers with ${bounds}, got ${shown(input)}`);
  return z
    .array(z.unknown(), error)
    .refine((pair) => pair.length === 2 && pair.every((n) => Number.isSafeInteger(n) && (n as number) >= lowest && (n as number) <= highest) && (pair[0] as number) <= (pair[1] as number), error)
    .transform((pair) => pair as [number, number])
    .meta({ description: `[min, max], whole numbers with ${bounds}` });
}

/** A JSON object of exactly these fields: a misspelt field is refused, not ignored. */
function fields<Shape extends z.ZodRawShape>(shape: Shape) {
  return z.strictObject(shape, {
    error: (issue) => (issue.code === 'invalid_type' ? `must be a JSON object${issue.input === undefined ? ' (missing)' : ''}` : undefined),
  });
}

const DATA_TYPES = ['synthetic-shapes', 'annotations', 'coco', 'text', 'passkey'] as const;
export type DataType = (typeof DATA_TYPES)[number];

const passkeySchema = fields({
  ratio: positive().optional().meta({ description: 'fraction of steps that are passkey steps; with text_ratio at most 1 in all (1, and optional, for data.type "passkey")' }),
  filler_tokens: wholeRange(0).meta({ description: '[min, max] filler length in tokens; longer than 8 attention segments to need the memory' }),
  key_digits: wholeRange(1, MAX_KEY_DIGITS).default([PASSKEY_DIGITS, PASSKEY_DIGITS]).meta({ description: "[min, max] digits of a key (default the evaluation's)" }),
  filler_schedule: z
    .array(z.unknown(), failsWith((input) => `must be a non-empty list of [step, tokens], got ${shown(input)}`))
    .optional()
    .meta({
      description:
        '[step, tokens] points of a piecewise-linear schedule of the longest training filler, held flat past its ends (a curriculum: short filler first); the validation examples always span filler_tokens',
    }),
  depth: z
    .array(z.unknown(), failsWith((input) => `must be [min, max] with 0 <= min <= max <= 1, got ${shown(input)}`))
    .refine(
      (d) => d.length === 2 && d.every((n) => typeof n === 'number' && n >= 0 && n <= 1) && (d[0] as number) <= (d[1] as number),
      failsWith((input) => `must be [min, max] with 0 <= min <= max <= 1, got ${shown(input)}`),
    )
    .transform((d) => d as [number, number])
    .default([0, 0])
    .meta({ description: '[min, max] fraction of the filler before the key (default [0, 0]: the key first)' }),
  haystack: z
    .enum(['repeated', 'mixed'], failsWith((input) => `must be "repeated" or "mixed", got ${shown(input)}`))
    .default('repeated')
    .meta({ description: "'repeated': the passkey filler; 'mixed': scene captions among its sentences (src/data/passkey.ts)" }),
  answer_only: flag()
    .default(false)
    .meta({ description: 'learn the key alone: the haystack and the question are read as context, as a long prompt before an image is (the validation loss too)' }),
});

const longPromptsSchema = fields({
  ratio: number(0, 1).meta({ description: 'fraction of the image steps whose examples read a long text before their prompt' }),
  bytes: wholeRange(0).meta({ description: '[min, max] length of that text in bytes (tokens), drawn once per step so that its rows are alike; the max plus the longest prompt at most max_tokens - 3 (the image token, a caption token and EOS follow)' }),
});

const promptsError = failsWith(() => `must be a non-empty list of at most ${LIMITS.prompts} strings`);

const dataSchema = fields({
  type: z.enum(DATA_TYPES, failsWith((input) => `must be one of ${DATA_TYPES.map((t) => `"${t}"`).join(', ')}, got ${shown(input)}`)),
  annotations_file: path().optional().meta({ description: 'annotations: JSON list of {image, text}' }),
  captions_file: path().optional().meta({ description: 'coco: COCO captions JSON' }),
  image_dir: path().optional().meta({ description: 'annotations, coco: folder of the image files (default: the data folder)' }),
  text_data_path: path().optional().meta({ description: 'plain UTF-8 text for text-only steps (required for type "text")' }),
  text_ratio: number(0, 1).optional().meta({ description: 'fraction of steps that are text-only: 1 for type "text", default 0.25 when text is given beside images' }),
  max_tokens: whole(8, LIMITS.exampleTokens).default(128).meta({ description: 'longest example in tokens; longer captions are cut, between characters and without EOS, text is read in windows of this size' }),
  val_size: whole(0, LIMITS.validationExamples).default(32).meta({ description: 'validation examples (synthetic: scenes of the validation split; files: held out from training, at most a tenth of them, an image with all its captions or not at all)' }),
  prompts: z
    .array(z.unknown(), promptsError)
    .min(1, promptsError)
    .max(LIMITS.prompts, promptsError)
    .refine((prompts) => prompts.every((p) => typeof p === 'string'), promptsError)
    .transform((prompts) => prompts as string[])
    .optional()
    .meta({ description: 'prompts put before the image, one drawn per example; "" is no prompt. Each at most max_tokens - 3 bytes. Default: "", "This is an image of ", "An image of ", "This picture shows ", "Caption: ", those of them that fit' }),
  long_prompts: longPromptsSchema
    .optional()
    .meta({ description: 'image examples that read sentences (src/data/passkey.ts) before the prompt, so that the model learns to caption after a long text' }),
  passkey: passkeySchema.optional().meta({ description: 'passkey retrieval examples (src/data/passkey.ts) as text-only steps beside the others; every step for type "passkey"' }),
});

const trainSchema = fields({
  steps: whole(1, LIMITS.steps).default(1000),
  batch_size: whole(1, LIMITS.batchSize).default(8).meta({ description: 'a multiple of workers' }),
  grad_accum: whole(1, LIMITS.gradAccum).default(1),
  lr: number(0).default(3e-4),
  min_lr: number(0).optional().meta({ description: 'floor of the cosine decay; default lr / 10' }),
  warmup: whole(0).optional().meta({ description: 'at most steps; default min(100, steps / 10)' }),
  weight_decay: number(0).default(0.01),
  clip: positive().default(1),
  memory_update_cost: number(0)
    .default(0)
    .meta({ description: "added to the training loss per unit of the neural memory's update rate (its rows' mean step size as a fraction of maxLr, plus the mean share of its weights forgotten per chunk): a price on every change, so that the memory changes only for what an answer needs and holds it over any length. The validation loss leaves it out" }),
  eval_every: whole(0, LIMITS.steps).default(0).meta({ description: 'validation loss every N steps and at the end; 0 = at the end only' }),
  checkpoint_every: whole(0, LIMITS.steps).default(0).meta({ description: 'checkpoint every N steps; one is always written at the end' }),
  keep_checkpoints: whole(1, LIMITS.keptCheckpoints).default(3).meta({ description: 'checkpoints kept (the latest K)' }),
  seed: whole(0, MAX_SEED).default(0),
  workers: whole(1).default(1).meta({ description: 'data-parallel worker threads, at most the cores' }),
  freeze_vision: flag()
    .optional()
    .meta({ description: 'keep the vision encoder as it is: no gradient reaches it and the optimizer holds no state for it. Default: true after vision_pretraining, false otherwise' }),
});

/**
 * Stage 1 of a two-stage run (src/training/vision-pretraining.ts): the vision encoder alone learns to
 * name what each image token shows, then captioning trains everything else with it frozen.
 */
const visionPretrainingSchema = fields({
  steps: whole(1, LIMITS.steps).default(400),
  batch_size: whole(1, LIMITS.batchSize).default(32),
  lr: positive().default(2e-3),
  warmup: whole(0).optional().meta({ description: 'at most steps; default min(50, steps / 10)' }),
  eval_every: whole(0, LIMITS.steps).default(0).meta({ description: 'held-out accuracy every N steps and at the end; 0 = at the end only' }),
});

export const jobSpecSchema = fields({
  model: z
    .record(z.string(), z.unknown(), failsWith(() => 'must be a JSON object'))
    .optional()
    .meta({ description: "the constructor options of a new model (model/config.ts); default: the small model. With base_checkpoint, the options to change in it: only ones that keep every weight's shape" }),
  base_checkpoint: path().optional().meta({ description: 'a checkpoint in DATA_DIR to train on from' }),
  data: dataSchema,
  vision_pretraining: visionPretrainingSchema.optional(),
  train: trainSchema.prefault({}),
  activate: flag().default(false).meta({ description: 'load the final checkpoint into the inference workers when the job succeeds' }),
});

type Parsed = z.output<typeof jobSpecSchema>;
export type PasskeySpec = Omit<z.output<typeof passkeySchema>, 'ratio' | 'filler_schedule'> & { ratio: number; filler_schedule?: [number, number][] };
export type DataSpec = Omit<Parsed['data'], 'text_ratio' | 'passkey' | 'prompts'> & { text_ratio: number; passkey?: PasskeySpec; prompts: string[] };
export type TrainSpec = Required<Parsed['train']>;
export type VisionPretrainingSpec = Required<z.output<typeof visionPretrainingSchema>>;

export interface JobSpec {
  /** A new model's options; with base_checkpoint, the options changed in it. */
  model?: MultimodalMACOptions;
  base_checkpoint?: string;
  data: DataSpec;
  vision_pretraining?: VisionPretrainingSpec;
  train: TrainSpec;
  /** Load the final checkpoint into the inference workers when the job succeeds. */
  activate: boolean;
}

export function parseJobSpec(body: unknown): JobSpec {
  const result = jobSpecSchema.safeParse(body);
  if (!result.success) {
    const { field, message, unknown } = firstIssue(result.error);
    throw new SpecError(field || 'body', unknown ? `unknown field '${field}'` : `${field || 'body'} ${message}`);
  }
  const top = result.data;
  const model = top.model as MultimodalMACOptions | undefined;
  // Changes to a base checkpoint's options are checked against its config (resolveJobPaths).
  if (model !== undefined && top.base_checkpoint === undefined) {
    try {
      resolveConfig(model);
    } catch (error) {
      if (error instanceof ConfigError) throw modelOptionError(error, model);
      throw error;
    }
  }
  const train = resolveTrain(top.train, top.vision_pretraining !== undefined);
  const data = resolveData(top.data);
  const vision_pretraining = top.vision_pretraining && resolveVisionPretraining(top.vision_pretraining, data);
  const { base_checkpoint, activate } = top;
  return { ...(model && { model }), ...(base_checkpoint && { base_checkpoint }), data, ...(vision_pretraining && { vision_pretraining }), train, activate };
}

function resolveVisionPretraining(pretraining: z.output<typeof visionPretrainingSchema>, data: DataSpec): VisionPretrainingSpec {
  // Its labels (what each part of an image shows) come from the generator's scene descriptions.
  if (data.type !== 'synthetic-shapes') {
    throw new SpecError('vision_pretraining', `vision_pretraining needs data.type "synthetic-shapes", got "${data.type}"`);
  }
  const { steps } = pretraining;
  const warmup = pretraining.warmup ?? Math.min(50, Math.floor(steps / 10));
  if (warmup > steps) throw new SpecError('vision_pretraining.warmup', `vision_pretraining.warmup (${warmup}) must be at most vision_pretraining.steps (${steps})`);
  return { ...pretraining, warmup };
}

/** Which files each data type reads. */
const REQUIRED: Record<DataType, ('annotations_file' | 'captions_file' | 'image_dir' | 'text_data_path' | 'passkey')[]> = {
  'synthetic-shapes': [],
  annotations: ['annotations_file'],
  coco: ['captions_file', 'image_dir'],
  text: ['text_data_path'],
  passkey: ['passkey'],
};

function resolveData({ passkey: givenPasskey, text_ratio: givenRatio, prompts: givenPrompts, ...data }: Parsed['data']): DataSpec {
  const { type } = data;
  for (const field of REQUIRED[type]) {
    if ((field === 'passkey' ? givenPasskey : data[field]) === undefined) throw new SpecError(`data.${field}`, `data.${field} is required for data.type "${type}"`);
  }
  const hasText = data.text_data_path !== undefined;
  if (type !== 'text' && !hasText && givenRatio !== undefined) {
    throw new SpecError('data.text_ratio', 'data.text_ratio needs data.text_data_path');
  }
  const text_ratio = type === 'text' ? 1 : hasText ? (givenRatio ?? 0.25) : 0;
  const passkey = givenPasskey && resolvePasskey(givenPasskey, type, text_ratio, data.max_tokens);
  // An example is prompt, image token, caption, EOS, and only the caption is cut to max_tokens: a
  // longer prompt would make every example longer than the memory estimate and the client allow for.
  const longestPrompt = data.max_tokens - 3;
  const bytes = (prompt: string) => Buffer.byteLength(prompt);
  const prompts = givenPrompts ?? DEFAULT_PROMPTS.filter((prompt) => bytes(prompt) <= longestPrompt);
  const images = type !== 'text' && type !== 'passkey';
  const tooLong = images ? prompts.findIndex((prompt) => bytes(prompt) > longestPrompt) : -1;
  if (tooLong >= 0) {
    const field = `data.prompts[${tooLong}]`;
    throw new SpecError(field, `${field} is ${bytes(prompts[tooLong]!)} bytes (tokens) long; with the image token, one caption token and EOS its examples must fit data.max_tokens (${data.max_tokens}), so at most ${longestPrompt}`);
  }
  if (data.long_prompts) {
    if (!images) throw new SpecError('data.long_prompts', `data.long_prompts is for image data, not data.type "${type}"`);
    // The long text comes before the prompt: the two must leave room for a caption too.
    const room = longestPrompt - Math.max(...prompts.map(bytes));
    if (data.long_prompts.bytes[1] > room) {
      throw new SpecError('data.long_prompts.bytes', `data.long_prompts.bytes (${data.long_prompts.bytes[1]} at most) with the longest of data.prompts (${longestPrompt - room} bytes), the image token, one caption token and EOS must fit data.max_tokens (${data.max_tokens}), so at most ${room}`);
    }
  }
  return { ...data, prompts, text_ratio, ...(passkey && { passkey }) };
}

function resolvePasskey(passkey: z.output<typeof passkeySchema>, type: DataType, textRatio: number, maxTokens: number): PasskeySpec {
  let ratio = 1;
  if (type === 'passkey') {
    // Every step is a passkey step: there is nothing else to read.
    if (passkey.ratio !== undefined && passkey.ratio !== 1) throw new SpecError('data.passkey.ratio', `data.passkey.ratio is 1 for data.type "passkey", got ${JSON.stringify(passkey.ratio)}`);
  } else {
    if (passkey.ratio === undefined) throw new SpecError('data.passkey.ratio', 'data.passkey.ratio is required');
    ratio = passkey.ratio;
  }
  if (textRatio + ratio > 1) {
    throw new SpecError('data.passkey.ratio', `data.passkey.ratio (${ratio}) plus data.text_ratio (${textRatio}) must be at most 1`);
  }
  const { filler_tokens: filler, key_digits: digits } = passkey;
  // Cutting an example to max_tokens would cut off the answer, the only part worth learning.
  const longest = longestPasskeyTokens(filler[1], digits[1]);
  if (longest > maxTokens) {
    throw new SpecError('data.passkey.filler_tokens', `a passkey example with ${filler[1]} filler tokens is ${longest} tokens long, more than data.max_tokens (${maxTokens})`);
  }
  const schedule = passkey.filler_schedule === undefined ? undefined : fillerSchedule(passkey.filler_schedule, filler);
  return { ratio, filler_tokens: filler, key_digits: digits, ...(schedule && { filler_schedule: schedule }), depth: passkey.depth, haystack: passkey.haystack, answer_only: passkey.answer_only };
}

function fillerSchedule(points: unknown[], filler: [number, number]): [number, number][] {
  const field = 'data.passkey.filler_schedule';
  const valid = points.length > 0 && points.every((p, i) =>
    Array.isArray(p) && p.length === 2 && p.every((n) => Number.isSafeInteger(n)) && p[1] >= filler[0] && p[1] <= filler[1] && p[0] >= 0 && (i === 0 || p[0] > (points[i - 1] as number[])[0]!));
  if (!valid) {
    throw new SpecError(field, `${field} must be a non-empty list of [step, tokens], steps increasing, tokens within filler_tokens [${filler.join(', ')}], got ${JSON.stringify(points)}`);
  }
  return (points as [number, number][]).map(([step, tokens]) => [step, tokens]);
}

function resolveTrain(train: Parsed['train'], pretrainsVision: boolean): TrainSpec {
  const { steps, workers, batch_size, lr } = train;
  // Each worker holds a model copy and wants a core of its own: more than the cores only costs memory.
  if (workers > availableParallelism()) {
    throw new SpecError('train.workers', `train.workers (${workers}) must be at most the number of cores (${availableParallelism()})`);
  }
  if (batch_size % workers !== 0) {
    throw new SpecError('train.batch_size', `train.batch_size (${batch_size}) must be a multiple of train.workers (${workers})`);
  }
  const warmup = train.warmup ?? Math.min(100, Math.floor(steps / 10));
  if (warmup > steps) throw new SpecError('train.warmup', `train.warmup (${warmup}) must be at most train.steps (${steps})`);
  // The floor of a decay: above lr, the schedule would climb to it instead.
  const min_lr = train.min_lr ?? lr / 10;
  if (min_lr > lr) throw new SpecError('train.min_lr', `train.min_lr (${min_lr}) must be at most train.lr (${lr}): it is the floor the learning rate decays to`);
  return { ...train, warmup, min_lr, freeze_vision: train.freeze_vision ?? pretrainsVision };
}

/**
 * A model option the config refuses, as the job's field: `model.textDim` where the job gave it, else
 * `model` (a default that the options given make invalid, such as patchSize for another imageSize).
 */
export function modelOptionError(error: ConfigError, given: object = {}): SpecError {
  const [top, nested] = error.option?.split('.') ?? [];
  const inner = top === undefined ? undefined : (given as Record<string, unknown>)[top];
  const named = top !== undefined && (nested === undefined ? top in given : typeof inner === 'object' && inner !== null && nested in inner);
  const field = named ? `model.${error.option}` : 'model';
  return new SpecError(field, `${field}: ${error.message}`);
}
