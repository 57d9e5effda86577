/**
 * The passkey retrieval task (Mohtashami & Jaggi 2023, "Landmark Attention"; the Titans paper's
 * needle-in-a-haystack test): a short random key at the start, filler, then the question. With the
 * filler many attention segments long, the key is out of every window by the time it is asked for,
 * so only a model that carries it in its long-term memory can answer.
 */
import { Random } from '../../model/random.ts';
import { ByteTokenizer } from '../../model/tokenizer.ts';
import { deriveSeed } from './seed.ts';
import { SPLIT_IDS, type Split } from './shapes.ts';

export const PASSKEY_DIGITS = 5;
/** The filler of every passkey example: short sentences repeated, which training reads at every step. */
export const FILLER = 'The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ';
/** The question at the end of a prompt: the answer follows it. */
export const QUESTION = ' What is the pass key? The pass key is ';
// Its own seed path, so that passkey draws never repeat the scene generator's (seed, split, index) draws.
const PASSKEY_PATH = 7;

const tokenizer = new ByteTokenizer();

/** The sentence that gives the key. */
export function keySentence(key: string): string {
  return `The pass key is ${key}. Remember it. `;
}

/** A key of `digits` digits from one draw: a leading digit of 1-9, so that it reads as a number of that many digits. */
export function drawKey(random: Random, digits: number): string {
  return String(10 ** (digits - 1) + random.int(9 * 10 ** (digits - 1)));
}

export interface PasskeyExample {
  key: string;
  /** Filler length in tokens (bytes: the filler is ASCII). */
  fillerTokens: number;
  /** Everything up to the answer: key, filler, question. */
  prompt: string;
  /** The training example: prompt, key, EOS. */
  tokens: number[];
}

/** The most digits a key may have: a key is drawn whole from one 32-bit draw. */
export const MAX_KEY_DIGITS = 9;

/**
 * Example number `index` of a split, its filler length drawn in [min, max] tokens and its key's
 * length in `keyDigits` (the evaluation's PASSKEY_DIGITS unless a training job asks for others).
 */
export function passkeyAt(seed: number, split: Split, index: number, fillerTokens: readonly [number, number], keyDigits: readonly [number, number] = [PASSKEY_DIGITS, PASSKEY_DIGITS]): PasskeyExample {
  const random = new Random(deriveSeed(seed, PASSKEY_PATH, SPLIT_IDS[split], index));
  const [min, max] = fillerTokens;
  const length = min + random.int(max - min + 1);
  // Drawn only when it varies, so that fixed-length keys are the same whatever the range's form.
  const digits = keyDigits[0] === keyDigits[1] ? keyDigits[0] : keyDigits[0] + random.int(keyDigits[1] - keyDigits[0] + 1);
  const key = drawKey(random, digits);
  const filler = FILLER.repeat(Math.ceil(length / FILLER.length)).slice(0, length);
  const prompt = `${keySentence(key)}${filler}${QUESTION}`;
  return { key, fillerTokens: length, prompt, tokens: [...tokenizer.encode(prompt + key), tokenizer.eosTokenId] };
}

/** Tokens of the longest example with at most `maxFillerTokens` of filler (to check against max_tokens). */
export function longestPasskeyTokens(maxFillerTokens: number, maxKeyDigits = PASSKEY_DIGITS): number {
  return passkeyAt(0, 'train', 0, [maxFillerTokens, maxFillerTokens], [maxKeyDigits, maxKeyDigits]).tokens.length;
}

