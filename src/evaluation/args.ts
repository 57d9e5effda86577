/** The command line of `bun run eval`, checked before anything starts; a UsageError names the bad flag. */
import { parseArgs } from 'node:util';
import { DEFAULT_PROMPT } from '../inference/generation.ts';
import { PASSKEY_SEGMENTS } from './passkey-eval.ts';

/** The shapes-attention-only preset's result, committed beside the default model. */
export const ATTENTION_ONLY_MODEL = 'models/ablation/shapes-attention-only';
/** The passkey preset's result and its attention-only ablation. */
export const PASSKEY_MODEL = 'models/passkey';
export const PASSKEY_ATTENTION_ONLY_MODEL = 'models/ablation/passkey-attention-only';

export const USAGE = `usage: bun run eval [options]
  --model DIR            checkpoint to evaluate (default models/default), served in-process
  --url URL              evaluate a running server instead of starting one
  --count N              validation scenes, each in every variant (default 200)
  --seed S               seed of the validation split and the variants (default 0)
  --prompt TEXT          caption prompt (default "${DEFAULT_PROMPT}")
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
  --passkey-model DIR    the memory model of the passkey task (default ${PASSKEY_MODEL})
  --passkey-attention-only DIR
                         its attention-only twin (default ${PASSKEY_ATTENTION_ONLY_MODEL})`;

export interface EvalArgs {
  model: string;
  url?: string;
  count: number;
  seed: number;
  prompt: string;
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
}

export class UsageError extends Error {
  override name = 'UsageError';
}

export function parseEvalArgs(argv: string[]): EvalArgs {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      strict: true,
      options: {
        model: { type: 'string' },
        url: { type: 'string' },
        count: { type: 'string' },
        seed: { type: 'string' },
        prompt: { type: 'string' },
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
      },
    }));
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  for (const flag of ['attention-only', 'passkey-model', 'passkey-attention-only'] as const) {
    if (!values.ablation && values[flag] !== undefined) throw new UsageError(`--${flag} is for --ablation`);
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
    seed: whole(values.seed, '--seed', 0, 0),
    prompt: values.prompt ?? DEFAULT_PROMPT,
    ...(values.out !== undefined && { out: values.out }),
    ...(values.json !== undefined && { json: values.json }),
    concurrency: whole(values.concurrency, '--concurrency', 4, 1),
    passkey: values.passkey === true,
    passkeyKeys: whole(values['passkey-keys'], '--passkey-keys', 20, 1),
    passkeySegments: values['passkey-segments'] === undefined ? [...PASSKEY_SEGMENTS] : values['passkey-segments'].split(',').map((s) => whole(s.trim(), '--passkey-segments', 0, 1)),
    ...(values.ablation && {
      attentionOnly: values['attention-only'] ?? ATTENTION_ONLY_MODEL,
      passkeyModels: { memory: values['passkey-model'] ?? PASSKEY_MODEL, attentionOnly: values['passkey-attention-only'] ?? PASSKEY_ATTENTION_ONLY_MODEL },
    }),
  };
}

function whole(raw: string | undefined, flag: string, fallback: number, min: number): number {
  if (raw === undefined) return fallback;
  if (!/^\d+$/.test(raw) || Number(raw) < min) throw new UsageError(`${flag} must be a whole number >= ${min}, got '${raw}'`);
  return Number(raw);
}
