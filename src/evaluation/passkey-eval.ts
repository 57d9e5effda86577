/**
 * The passkey task as an evaluation: for each filler length (in attention segments of the model
 * under test), `keys` examples of the validation split, greedily completed through the HTTP API.
 */
import { PASSKEY_DIGITS, passkeyAt } from '../data/passkey.ts';
import { completeText } from './api-client.ts';
import { mapConcurrent } from './concurrency.ts';
import { tally, type Tally } from './scoring.ts';

/** Filler lengths in segments: all beyond the 8 segments a Titans claim is about. */
export const PASSKEY_SEGMENTS: readonly number[] = [10, 16, 24];

export interface PasskeyEvalOptions {
  segmentLen: number;
  segments: readonly number[];
  /** Examples per filler length. */
  keys: number;
  seed: number;
  concurrency: number;
}

export interface PasskeyTrial {
  segments: number;
  key: string;
  /** The generated text; null when the request failed (see error). */
  answer: string | null;
  correct: boolean;
  error?: string;
}

export interface PasskeyLengthScore {
  segments: number;
  fillerTokens: number;
  tally: Tally;
}

export interface PasskeyResult {
  byLength: PasskeyLengthScore[];
  trials: PasskeyTrial[];
}

/** Whether a generated answer is the key: its leading run of digits, no fewer and no more. */
export function passkeyAnswered(key: string, generated: string): boolean {
  return /^\s*(\d*)/.exec(generated)![1] === key;
}

export async function evaluatePasskey(url: string, options: PasskeyEvalOptions): Promise<PasskeyResult> {
  const cases = options.segments.flatMap((segments) => Array.from({ length: options.keys }, (_, index) => ({ segments, index })));
  const trials = await mapConcurrent(cases, options.concurrency, async ({ segments, index }): Promise<PasskeyTrial> => {
    const fillerTokens = segments * options.segmentLen;
    // The same index at every length: the keys are the same, only the distance differs.
    const { key, prompt } = passkeyAt(options.seed, 'validation', index, [fillerTokens, fillerTokens]);
    try {
      // One token more than the key, so that an answer running on past it is seen and counted wrong.
      const { text } = await completeText(url, prompt, PASSKEY_DIGITS + 1);
      return { segments, key, answer: text, correct: passkeyAnswered(key, text) };
    } catch (error) {
      return { segments, key, answer: null, correct: false, error: (error as Error).message };
    }
  });
  const byLength = options.segments.map((segments) => {
    const mine = trials.filter((t) => t.segments === segments);
    return { segments, fillerTokens: segments * options.segmentLen, tally: tally(mine.filter((t) => t.correct).length, mine.length) };
  });
  return { byLength, trials };
}
