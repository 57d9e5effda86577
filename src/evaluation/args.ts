/** The command line of `bun run eval`, checked before anything starts; a UsageError names the bad flag. */
import { parseArgs } from 'node:util';
import { DEFAULT_PROMPT } from '../inference/generation.ts';
import { PASSKEY_SEGMENTS } from './passkey-eval.ts';

/** The shapes-attention-only preset's result, committed beside the default model. */
export const ATTENTION_ONLY_MODEL = 'models/ablation/shapes-attention-only';

export const USAGE = `usage: bun run eval [options]
  --model DIR            checkpoint to evaluate (default models/default), served in-process
  --url URL              evaluate a running server instead of starting one
  --count N              validation scenes, each in every variant (default 200)
  --seed S               seed of the validation split and the variants (default 0)
  --prompt TEXT          caption prompt (default "${DEFAULT_PROMPT}")
  --out DIR              keep the image files there (default: a temporary folder, removed)
  --json FILE            write the full results as JSON
  --concurrency N        requests in flight (default 4)
  --passkey              also run the passkey task
  --passkey-keys N       passkey examples per filler length (default 20)
  --passkey-segments L   filler lengths in attention segments (default ${PASSKEY_SEGMENTS.join(',')})
  --ablation             the --model checkpoint against an attention-only one, side by side:
                         captions and the passkey task
  --attention-only DIR   that checkpoint (default ${ATTENTION_ONLY_MODEL})`;

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
      },
    }));
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  if (!values.ablation && values['attention-only'] !== undefined) throw new UsageError('--attention-only is for --ablation');
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
    passkey: values.passkey === true || values.ablation === true,
    passkeyKeys: whole(values['passkey-keys'], '--passkey-keys', 20, 1),
    passkeySegments: values['passkey-segments'] === undefined ? [...PASSKEY_SEGMENTS] : values['passkey-segments'].split(',').map((s) => whole(s.trim(), '--passkey-segments', 0, 1)),
    ...(values.ablation && { attentionOnly: values['attention-only'] ?? ATTENTION_ONLY_MODEL }),
  };
}

function whole(raw: string | undefined, flag: string, fallback: number, min: number): number {
  if (raw === undefined) return fallback;
  if (!/^\d+$/.test(raw) || Number(raw) < min) throw new UsageError(`${flag} must be a whole number >= ${min}, got '${raw}'`);
  return Number(raw);
}
