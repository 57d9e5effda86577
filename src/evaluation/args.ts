/** The command line of `bun run eval`, checked before anything starts; a UsageError names the bad flag. */
import { parseArgs } from 'node:util';
import { HAYSTACKS, NEEDLE_DEPTHS, NEEDLE_LENGTHS, shortestNeedlePrompt, type HaystackKind } from '../data/needle.ts';
import { DEFAULT_PROMPT } from '../inference/generation.ts';
import { MAX_SEED } from '../../model/random.ts';
import { UsageError, wholeNumber } from '../flags.ts';
import { PASSKEY_SEGMENTS } from './passkey-eval.ts';

/** The shapes-attention-only preset's result, committed beside the default model. */
export const ATTENTION_ONLY_MODEL = 'models/ablation/shapes-attention-only';
/** The passkey preset's result and its attention-only ablation. */
export const PASSKEY_MODEL = 'models/passkey';
export const PASSKEY_ATTENTION_ONLY_MODEL = 'models/ablation/passkey-attention-only';
/** The needle model: passkey taken on to keys anywhere, and to a memory that holds them (the passkey-boundary preset, last). */
export const NEEDLE_MODEL = 'models/passkey-long';
/** Its attention-only twin: the passkey ablation taken through the same stages (the *-attention-only presets). */
export const NEEDLE_ATTENTION_ONLY_MODEL = 'models/ablation/passkey-long-attention-only';

/** Keys per cell of the needle grid. */
export const NEEDLE_TRIALS = 4;

export const USAGE = `usage: bun run eval [options]
  --model DIR            checkpoint to evaluate (default models/default), served in-process
  --url URL              evaluate a running server instead of starting one
  --count N              validation scenes, each in every variant (default 200)
  --seed S               seed of the validation split and the variants (default 0)
  --prompt TEXT          caption prompt (default "${DEFAULT_PROMPT}")
  --long-prompt BYTES    put BYTES of varied English before each prompt (the needle's sentences, no
                         training text), to score captions after a long prompt (default 0)
  --out DIR              keep the image files there (default: a temporary folder, removed)
  --json FILE            write the full results as JSON
  --concurrency N        requests in flight (default 4)
  --passkey              also run the passkey task on the --model checkpoint
  --passkey-keys N       passkey examples per filler length (default 20)
  --passkey-segments L   filler lengths in attention segments (default ${PASSKEY_SEGMENTS.join(',')})
  --ablation             the Titans claim, side by side: the --model checkpoint's captions against
                         an attention-only one's, and the passkey task on a memory model against
                         its attention-only twin
  --attention-only DIR   the attention-only captioner (default ${ATTENTION_ONLY_MODEL})
  --passkey-model DIR    the memory model of the passkey task (default ${PASSKEY_MODEL}) and of --needle
                         (default ${NEEDLE_MODEL})
  --passkey-attention-only DIR
                         its attention-only twin (default ${PASSKEY_ATTENTION_ONLY_MODEL}; with --needle
                         ${NEEDLE_ATTENTION_ONLY_MODEL})
  --needle               needle in a haystack instead of captions: a key at depths of long haystacks,
                         asked of --passkey-model and --passkey-attention-only; Markdown tables
  --needle-lengths L     prompt lengths in tokens (default ${NEEDLE_LENGTHS.join(',')})
  --needle-depths D      depths of the key, fractions of the haystack (default ${NEEDLE_DEPTHS.join(',')})
  --needle-haystacks H   ${HAYSTACKS.join(', ')}: the passkey filler repeated, varied sentences (default both)
  --needle-trials N      keys per depth and length (default ${NEEDLE_TRIALS})
Exits 1 when any request failed (each is scored wrong and the report lists why), 2 on misuse.`;

/** Flags of the caption evaluation (and the passkey task beside it), which --needle does not run. */
const CAPTION_FLAGS = ['model', 'url', 'count', 'prompt', 'long-prompt', 'out', 'passkey', 'passkey-keys', 'passkey-segments', 'ablation', 'attention-only'] as const;
const NEEDLE_FLAGS = ['needle-lengths', 'needle-depths', 'needle-haystacks', 'needle-trials'] as const;

export interface NeedleArgs {
  lengths: number[];
  depths: number[];
  haystacks: HaystackKind[];
  trials: number;
  models: { memory: string; attentionOnly: string };
}

export interface EvalArgs {
  model: string;
  url?: string;
  count: number;
  seed: number;
  prompt: string;
  /** Bytes of text before each caption prompt. */
  longPrompt: number;
  out?: string;
  json?: string;
  concurrency: number;
  passkey: boolean;
  passkeyKeys: number;
  passkeySegments: number[];
  /** Set with --ablation: the attention-only checkpoint. */
  attentionOnly?: string;
  /** Set with --ablation: the pair that the passkey task compares. */
  passkeyModels?: { memory: string; attentionOnly: string };
  /** Set with --needle: needle in a haystack, and nothing else. */
  needle?: NeedleArgs;
}

export function parseEvalArgs(argv: string[]): EvalArgs {
  let values: Values;
  try {
    values = parse(argv);
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  if (values.needle) {
    for (const flag of CAPTION_FLAGS) {
      if (values[flag] !== undefined) throw new UsageError(`--needle runs alone, on --passkey-model and --passkey-attention-only; --${flag} is for the caption evaluation`);
    }
  } else {
    for (const flag of NEEDLE_FLAGS) {
      if (values[flag] !== undefined) throw new UsageError(`--${flag} is for --needle`);
    }
    if (!values.ablation && values['attention-only'] !== undefined) throw new UsageError('--attention-only is for --ablation');
    for (const flag of ['passkey-model', 'passkey-attention-only'] as const) {
      if (!values.ablation && values[flag] !== undefined) throw new UsageError(`--${flag} is for --ablation or --needle`);
    }
  }
  // The ablation runs the passkey task on its own pair, not on the captioners.
  if (values.ablation && values.passkey) throw new UsageError('--ablation runs the passkey task on --passkey-model and --passkey-attention-only; --passkey is for one model');
  // Two models need two servers; a --url names one.
  if (values.ablation && values.url !== undefined) throw new UsageError('--ablation evaluates two checkpoints in-process: give --model and --attention-only, not --url');
  if (values.url !== undefined && values.model !== undefined) throw new UsageError('give --model or --url, not both');
  return {
    model: values.model ?? 'models/default',
    ...(values.url !== undefined && { url: values.url.replace(/\/+$/, '') }),
    count: whole(values.count, '--count', 200, 1),
    seed: whole(values.seed, '--seed', 0, 0, MAX_SEED),
    prompt: values.prompt ?? DEFAULT_PROMPT,
    longPrompt: whole(values['long-prompt'], '--long-prompt', 0, 0),
    ...(values.out !== undefined && { out: values.out }),
    ...(values.json !== undefined && { json: values.json }),
    concurrency: whole(values.concurrency, '--concurrency', 4, 1),
    passkey: values.passkey === true,
    passkeyKeys: whole(values['passkey-keys'], '--passkey-keys', 20, 1),
    passkeySegments: list(values['passkey-segments'], '--passkey-segments', PASSKEY_SEGMENTS, (s) => whole(s, '--passkey-segments', 0, 1)),
    ...(values.ablation && {
      attentionOnly: values['attention-only'] ?? ATTENTION_ONLY_MODEL,
      passkeyModels: passkeyPair(values),
    }),
    ...(values.needle && { needle: needleArgs(values) }),
  };
}

function parse(argv: string[]) {
  return parseArgs({
    args: argv,
    strict: true,
    options: {
      model: { type: 'string' },
      url: { type: 'string' },
      count: { type: 'string' },
      seed: { type: 'string' },
      prompt: { type: 'string' },
      'long-prompt': { type: 'string' },
      out: { type: 'string' },
      json: { type: 'string' },
      concurrency: { type: 'string' },
      passkey: { type: 'boolean' },
      'passkey-keys': { type: 'string' },
      'passkey-segments': { type: 'string' },
      ablation: { type: 'boolean' },
      'attention-only': { type: 'string' },
      'passkey-model': { type: 'string' },
      'passkey-attention-only': { type: 'string' },
      needle: { type: 'boolean' },
      'needle-lengths': { type: 'string' },
      'needle-depths': { type: 'string' },
      'needle-haystacks': { type: 'string' },
      'needle-trials': { type: 'string' },
    },
  }).values;
}

type Values = ReturnType<typeof parse>;

function passkeyPair(values: Values, memory = PASSKEY_MODEL, attentionOnly = PASSKEY_ATTENTION_ONLY_MODEL): { memory: string; attentionOnly: string } {
  return { memory: values['passkey-model'] ?? memory, attentionOnly: values['passkey-attention-only'] ?? attentionOnly };
}

function needleArgs(values: Values): NeedleArgs {
  const shortest = shortestNeedlePrompt();
  const lengths = list(values['needle-lengths'], '--needle-lengths', NEEDLE_LENGTHS, (s) => whole(s, '--needle-lengths', 0, shortest));
  const depths = list(values['needle-depths'], '--needle-depths', NEEDLE_DEPTHS, (s) => {
    if (!/^(\d+(\.\d*)?|\.\d+)$/.test(s) || Number(s) > 1) throw new UsageError(`--needle-depths must be fractions in [0, 1], got '${s}'`);
    return Number(s);
  });
  const haystacks = list(values['needle-haystacks'], '--needle-haystacks', HAYSTACKS, (s) => {
    if (!(HAYSTACKS as readonly string[]).includes(s)) throw new UsageError(`--needle-haystacks must be some of ${HAYSTACKS.join(', ')}, got '${s}'`);
    return s as HaystackKind;
  });
  return {
    lengths,
    depths,
    haystacks,
    trials: whole(values['needle-trials'], '--needle-trials', NEEDLE_TRIALS, 1),
    models: passkeyPair(values, NEEDLE_MODEL, NEEDLE_ATTENTION_ONLY_MODEL),
  };
}

/** A comma-separated flag's items, each parsed; a repeated item would make a table with a repeated row or column. */
function list<T>(raw: string | undefined, flag: string, fallback: readonly T[], parseItem: (item: string) => T): T[] {
  if (raw === undefined) return [...fallback];
  const items = raw.split(',').map((s) => parseItem(s.trim()));
  if (new Set(items).size !== items.length) throw new UsageError(`${flag} names an item twice: '${raw}'`);
  return items;
}

/** A whole-number flag's value, or `fallback` when it is not given. */
function whole(raw: string | undefined, flag: string, fallback: number, min: number, max?: number): number {
  return raw === undefined ? fallback : wholeNumber(flag, raw, min, max);
}
