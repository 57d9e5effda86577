/**
 * Needle in a haystack as an evaluation: for every haystack, prompt length and depth, `trials` keys
 * of the validation split, greedily completed through the HTTP API and scored as the passkey task
 * scores (the answer's leading digits are the key).
 */
import { needleAt, type HaystackKind } from '../data/needle.ts';
import { PASSKEY_DIGITS } from '../data/passkey.ts';
import { completeText } from './api-client.ts';
import { mapConcurrent } from './concurrency.ts';
import { passkeyAnswered } from './passkey-eval.ts';
import { tally, type Tally } from './scoring.ts';

export interface NeedleGrid {
  haystacks: readonly HaystackKind[];
  /** Prompt lengths in tokens. */
  lengths: readonly number[];
  depths: readonly number[];
  /** Keys per cell. */
  trials: number;
}

export interface NeedleEvalOptions extends NeedleGrid {
  seed: number;
  concurrency: number;
  /** Called as each cell (haystack, length, depth) has all its answers. */
  onCell?: (cell: NeedleCell, done: number, total: number) => void;
}

export interface NeedleTrial {
  haystack: HaystackKind;
  promptTokens: number;
  depth: number;
  key: string;
  /** Token offset of the key sentence in the prompt. */
  needleOffset: number;
  /** The generated text; null when the request failed (see error). */
  answer: string | null;
  correct: boolean;
  error?: string;
}

export interface NeedleCell {
  haystack: HaystackKind;
  promptTokens: number;
  depth: number;
  tally: Tally;
  /** Requests that failed, counted wrong. */
  failed: number;
}

export interface NeedleResult {
  cells: NeedleCell[];
  trials: NeedleTrial[];
}

export async function evaluateNeedle(url: string, options: NeedleEvalOptions): Promise<NeedleResult> {
  const { haystacks, lengths, depths, trials: perCell } = options;
  // Cell by cell, shortest prompts first, so that cells finish about in order and progress says how far.
  const cells = haystacks.flatMap((haystack) => lengths.flatMap((promptTokens) => depths.map((depth) => ({ haystack, promptTokens, depth }))));
  const cases = cells.flatMap((cell, c) => Array.from({ length: perCell }, (_, index) => ({ ...cell, c, index })));
  const answered: NeedleTrial[][] = cells.map(() => []);
  let cellsDone = 0;
  const trials = await mapConcurrent(cases, options.concurrency, async ({ haystack, promptTokens, depth, c, index }): Promise<NeedleTrial> => {
    // The same index in every cell: the keys are the same, only the haystack around them differs.
    const { key, needleOffset, prompt } = needleAt(options.seed, 'validation', index, { haystack, promptTokens, depth });
    const trial = await ask(url, prompt, { haystack, promptTokens, depth, key, needleOffset });
    answered[c]!.push(trial);
    if (answered[c]!.length === perCell) options.onCell?.(score(cells[c]!, answered[c]!), ++cellsDone, cells.length);
    return trial;
  });
  return { cells: cells.map((cell, c) => score(cell, answered[c]!)), trials };
}

async function ask(url: string, prompt: string, asked: Omit<NeedleTrial, 'answer' | 'correct' | 'error'>): Promise<NeedleTrial> {
  try {
    // One token more than the key, so that an answer running on past it is seen and counted wrong.
    const { text } = await completeText(url, prompt, PASSKEY_DIGITS + 1);
    return { ...asked, answer: text, correct: passkeyAnswered(asked.key, text) };
  } catch (error) {
    // A refused or failed request (a model whose state overflows on long prompts) is a wrong answer, not the end of the run.
    return { ...asked, answer: null, correct: false, error: (error as Error).message };
  }
}

function score(cell: Pick<NeedleCell, 'haystack' | 'promptTokens' | 'depth'>, trials: NeedleTrial[]): NeedleCell {
  return { ...cell, tally: tally(trials.filter((t) => t.correct).length, trials.length), failed: trials.filter((t) => t.error !== undefined).length };
}
