/**
 * Needle in a haystack (DESIGN.md section 6), in the single-needle form of the Titans paper and of
 * RULER (Hsieh et al. 2024): the passkey's sentence at a depth of a long haystack, the passkey's
 * question at the end. Two haystacks: the passkey filler repeated, which the passkey models trained
 * on, and varied English sentences that no training example holds, so that a model must pick the key
 * out of text it has never read rather than out of a pattern it knows by heart.
 */
import { Random } from '../../model/random.ts';
import { ByteTokenizer } from '../../model/tokenizer.ts';
import { drawKey, keySentence, PASSKEY_DIGITS, QUESTION, repeatedFiller, sentencesOf } from './passkey.ts';
import { deriveSeed } from './seed.ts';
import { SPLIT_IDS, type Split } from './shapes.ts';

export const HAYSTACKS = ['repeated', 'sentences'] as const;
export type HaystackKind = (typeof HAYSTACKS)[number];

/** The paper's grid: depths as fractions of the haystack, lengths in tokens of the whole prompt. */
export const NEEDLE_DEPTHS: readonly number[] = [0, 0.25, 0.5, 0.75, 0.9];
export const NEEDLE_LENGTHS: readonly number[] = [1024, 2048, 4096, 8192, 16384, 32768, 65536];

// Its own seed path, apart from the passkey's (7) and the image variants' (11).
const NEEDLE_PATH = 13;
// Under an example's path, so that the key's draws and the haystack's never shift each other.
const KEY_DRAWS = 0;
const HAYSTACK_DRAWS = 1;

const tokenizer = new ByteTokenizer();

export interface Haystack {
  /** Exactly the bytes (tokens: it is ASCII) asked for; the last sentence may be cut short. */
  text: string;
  /** Offsets at which a sentence begins, 0 first. */
  sentenceStarts: number[];
}

export interface NeedleOptions {
  haystack: HaystackKind;
  /** Length of the whole prompt in tokens: haystack, key sentence and question. */
  promptTokens: number;
  /** Fraction of the haystack before the key sentence, in [0, 1]; it goes in at the nearest sentence start. */
  depth: number;
  keyDigits?: number;
}

export interface NeedleExample {
  key: string;
  /** Token (byte) offset of the key sentence in the prompt. */
  needleOffset: number;
  /** Everything up to the answer: haystack with the key sentence inside, question. */
  prompt: string;
  /** The training example: prompt, key, EOS. */
  tokens: number[];
}

/**
 * Example number `index` of a split. Its key and its haystack's sentences depend on (seed, split,
 * index) only: at every length, depth and haystack the key is the same, and a longer haystack reads
 * on where a shorter one ends.
 */
export function needleAt(seed: number, split: Split, index: number, options: NeedleOptions): NeedleExample {
  const { haystack: kind, promptTokens, depth, keyDigits = PASSKEY_DIGITS } = options;
  if (!(depth >= 0 && depth <= 1)) throw new RangeError(`depth must be in [0, 1], got ${depth}`);
  const key = drawKey(new Random(deriveSeed(seed, NEEDLE_PATH, SPLIT_IDS[split], index, KEY_DRAWS)), keyDigits);
  const needle = keySentence(key);
  const bytes = promptTokens - needle.length - QUESTION.length;
  if (bytes < 0) throw new RangeError(`a needle prompt with a ${keyDigits}-digit key has at least ${shortestNeedlePrompt(keyDigits)} tokens, not ${promptTokens}`);
  const { text, sentenceStarts } = haystackAt(seed, split, index, kind, bytes);
  const needleOffset = nearest(sentenceStarts, depth * bytes);
  const prompt = text.slice(0, needleOffset) + needle + text.slice(needleOffset) + QUESTION;
  return { key, needleOffset, prompt, tokens: [...tokenizer.encode(prompt + key), tokenizer.eosTokenId] };
}

/** The shortest prompt a needle fits in: key sentence and question, no haystack. */
export function shortestNeedlePrompt(keyDigits = PASSKEY_DIGITS): number {
  return keySentence('0'.repeat(keyDigits)).length + QUESTION.length;
}

/** The haystack of example `index` of a split, `bytes` long. */
export function haystackAt(seed: number, split: Split, index: number, kind: HaystackKind, bytes: number): Haystack {
  const next = kind === 'repeated' ? repeatedFiller() : englishSentences(new Random(deriveSeed(seed, NEEDLE_PATH, SPLIT_IDS[split], index, HAYSTACK_DRAWS)));
  return sentencesOf(next, bytes);
}

const SUBJECTS = [
  'the old fisherman', 'a young teacher', 'my neighbor', 'the baker', 'our captain', 'the little girl', 'a tired doctor', 'the farmer',
  'his sister', 'the mayor', 'a quiet student', 'the painter', 'her grandfather', 'the pilot', 'a stranger', 'the librarian',
  'the gardener', 'our guide', 'the shopkeeper', 'a street musician', 'the night nurse', 'my cousin', 'the carpenter', 'a retired sailor',
];
const VERBS = [
  'carried', 'found', 'bought', 'sold', 'painted', 'repaired', 'lost', 'borrowed',
  'cleaned', 'wrapped', 'noticed', 'described', 'forgot', 'delivered', 'measured', 'hid',
];
const OBJECTS = [
  'a wooden chair', 'an old map', 'a basket of apples', 'a silver bell', 'the broken clock', 'a blue bicycle', 'a box of letters',
  'a small boat', 'a warm coat', 'the kitchen table', 'a jar of honey', 'a pair of boots', 'the garden gate', 'a heavy suitcase',
  'a paper lantern', 'a loaf of bread', 'the church window', 'a woolen blanket', 'a bag of onions', 'a tin kettle',
];
const PLACES = [
  'near the river', 'in the market', 'at the station', 'behind the library', 'on the hill', 'by the harbor', 'in the garden',
  'at the edge of town', 'under the bridge', 'in the village square', 'next to the bakery', 'on the north road',
  'inside the old mill', 'by the lake', 'at the school gate', 'in the narrow lane',
];
const TIMES = [
  'on Monday morning', 'before dinner', 'after the storm', 'late at night', 'in early spring', 'yesterday', 'at noon', 'last winter',
  'on a rainy afternoon', 'during the festival', 'before sunrise', 'after lunch', 'on Sunday evening', 'in the autumn', 'at dawn',
  'just before midnight',
];
const WEATHER = ['cold', 'quiet', 'windy', 'warm', 'foggy', 'busy', 'dark', 'bright', 'noisy', 'calm'];

/** Sentences from templates over the word lists above: ASCII, no digits, tens of thousands of them. */
function englishSentences(random: Random): () => string {
  const pick = <T>(items: readonly T[]) => items[random.int(items.length)]!;
  const clause = () => `${pick(SUBJECTS)} ${pick(VERBS)} ${pick(OBJECTS)}`;
  const templates = [
    () => `${clause()} ${pick(PLACES)} ${pick(TIMES)}.`,
    () => `${pick(TIMES)}, ${clause()} ${pick(PLACES)}.`,
    () => `${pick(PLACES)}, ${clause()}.`,
    () => `${clause()} ${pick(TIMES)}.`,
    () => `it was ${pick(WEATHER)} ${pick(PLACES)} ${pick(TIMES)}.`,
    () => `${clause()}, and ${clause()}.`,
  ];
  return () => {
    const sentence = pick(templates)();
    return `${sentence[0]!.toUpperCase()}${sentence.slice(1)} `;
  };
}

/** The value of `sorted` nearest to `target`, the earlier on a tie. */
function nearest(sorted: readonly number[], target: number): number {
  return sorted.reduce((best, value) => (Math.abs(value - target) < Math.abs(best - target) ? value : best));
}
