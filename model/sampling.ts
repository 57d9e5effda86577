/**
 * Picks the next token from the logits of one position (DESIGN.md section 3, Generation). Plain
 * JavaScript on 256 numbers: reading the logits back once is cheaper than a chain of tensor ops.
 *
 * The filters follow Hugging Face's logits warpers, applied in the same order: temperature, top-k,
 * top-p (nucleus, Holtzman et al. 2019), min-p (Nguyen et al. 2024). Before them, `penalized` adds
 * OpenAI's logit bias and its presence and frequency penalties.
 */
import type { Random } from './random.ts';

export interface SamplingOptions {
  /** 0 = greedy (argmax); default 1. */
  temperature?: number;
  /** Keep the k most likely tokens; 0 or undefined = off. */
  topK?: number;
  /** Keep the smallest set of most likely tokens whose probability reaches p; in [0, 1], where 0 keeps the most likely token alone. */
  topP?: number;
  /** Drop tokens less likely than minP times the most likely one; in [0, 1). */
  minP?: number;
  /** Subtracted once from the logit of every token already generated; in [-2, 2], as OpenAI's presence_penalty. */
  presencePenalty?: number;
  /** Subtracted from a token's logit as many times as it was generated; in [-2, 2], as OpenAI's frequency_penalty. */
  frequencyPenalty?: number;
  /** Added to the logits of these token ids; each in [-100, 100], as OpenAI's logit_bias. */
  logitBias?: Record<number, number>;
}

/** A sampling option out of range; `field` names it so that an API can point at its own field. */
export class InvalidSamplingOptionError extends RangeError {
  constructor(
    readonly field: keyof SamplingOptions,
    message: string,
  ) {
    super(`${field} ${message}`);
    this.name = 'InvalidSamplingOptionError';
  }
}

export function validateSampling(options: SamplingOptions): void {
  validateFilters(options);
  for (const field of ['presencePenalty', 'frequencyPenalty'] as const) {
    const penalty = options[field];
    if (penalty !== undefined && !(isNumber(penalty) && penalty >= -2 && penalty <= 2)) throw new InvalidSamplingOptionError(field, `must be in [-2, 2], got ${penalty}`);
  }
  for (const [id, bias] of Object.entries(options.logitBias ?? {})) {
    if (!/^\d+$/.test(id)) throw new InvalidSamplingOptionError('logitBias', `keys must be token ids, got ${JSON.stringify(id)}`);
    if (!(isNumber(bias) && bias >= -100 && bias <= 100)) throw new InvalidSamplingOptionError('logitBias', `values must be in [-100, 100], got ${bias} for token ${id}`);
  }
}

/** The options sampleToken reads, which it checks at every token (the rest are checked once, by a generation). */
function validateFilters(options: SamplingOptions): void {
  const { temperature, topK, topP, minP } = options;
  if (temperature !== undefined && !(isNumber(temperature) && temperature >= 0)) {
    throw new InvalidSamplingOptionError('temperature', `must be a finite number >= 0, got ${temperature}`);
  }
  if (topK !== undefined && !(Number.isInteger(topK) && topK >= 0)) {
    throw new InvalidSamplingOptionError('topK', `must be an integer >= 1 (0 = off), got ${topK}`);
  }
  if (topP !== undefined && !(isNumber(topP) && topP >= 0 && topP <= 1)) {
    throw new InvalidSamplingOptionError('topP', `must be in [0, 1], got ${topP}`);
  }
  if (minP !== undefined && !(isNumber(minP) && minP >= 0 && minP < 1)) {
    throw new InvalidSamplingOptionError('minP', `must be in [0, 1), got ${minP}`);
  }
}

/**
 * The logits with OpenAI's logit bias added, and less each token's presence penalty (once it was
 * generated) and frequency penalty (once for each time): mu - c * frequency - [c > 0] * presence, `c`
 * the count of each token among those generated so far. The logits themselves where nothing applies.
 */
export function penalized(logits: Float32Array, options: SamplingOptions, counts: Uint32Array): Float32Array {
  const { presencePenalty = 0, frequencyPenalty = 0, logitBias = {} } = options;
  const biased = Object.entries(logitBias);
  if (presencePenalty === 0 && frequencyPenalty === 0 && biased.length === 0) return logits;
  const out = Float32Array.from(logits);
  for (const [id, bias] of biased) out[Number(id)]! += bias;
  for (let id = 0; id < out.length; id++) {
    const count = counts[id] ?? 0;
    if (count > 0) out[id]! -= count * frequencyPenalty + presencePenalty;
  }
  return out;
}

/**
 * Greedy decoding draws no random number; every other call draws exactly one, so a seed fixes the
 * whole generated sequence.
 */
export function sampleToken(logits: Float32Array, options: SamplingOptions, random: Random): number {
  validateFilters(options);
  if (logits.length === 0) throw new RangeError('logits must not be empty');
  const temperature = options.temperature ?? 1;
  if (temperature === 0) return argmax(logits);

  const probs = softmax(logits, temperature);
  let kept: number[] = [];
  for (let id = 0; id < probs.length; id++) kept.push(id);

  if (options.topK || (options.topP !== undefined && options.topP < 1)) {
    // Most likely first; ties keep the lower index first, as greedy does.
    kept.sort((a, b) => (probs[b] ?? 0) - (probs[a] ?? 0) || a - b);
    if (options.topK) kept = kept.slice(0, options.topK);
    if (options.topP !== undefined) kept = nucleus(probs, kept, options.topP);
  }

  if (options.minP) {
    let pmax = 0;
    for (const id of kept) pmax = Math.max(pmax, probs[id] ?? 0);
    const threshold = options.minP * pmax;
    kept = kept.filter((id) => (probs[id] ?? 0) >= threshold);
  }

  let r = random.next() * sum(probs, kept);
  for (const id of kept) {
    r -= probs[id] ?? 0;
    if (r < 0) return id;
  }
  // Rounding can leave r a hair above zero after the last token.
  return kept[kept.length - 1] ?? 0;
}

/**
 * The shortest prefix of `ranked` (most likely first) whose probability reaches p, measured on the
 * distribution left by top-k, renormalized, as chained warpers do. Never empty.
 */
function nucleus(probs: Float64Array, ranked: number[], p: number): number[] {
  const target = p * sum(probs, ranked);
  let cumulative = 0;
  let count = 0;
  while (count < ranked.length && cumulative < target) {
    cumulative += probs[ranked[count] ?? 0] ?? 0;
    count++;
  }
  return ranked.slice(0, Math.max(count, 1));
}

function isNumber(value: unknown): value is number {
  return typeof value === 'number' && Number.isFinite(value);
}

function argmax(values: Float32Array): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) {
    if ((values[i] ?? -Infinity) > (values[best] ?? -Infinity)) best = i;
  }
  return best;
}

/** Unnormalized: sampling divides by the sum of the kept tokens anyway. */
function softmax(logits: Float32Array, temperature: number): Float64Array {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) max = Math.max(max, logits[i] ?? -Infinity);
  if (!Number.isFinite(max)) throw new RangeError(`logits must have a finite maximum, got ${max}`);
  const probs = new Float64Array(logits.length);
  // Subtracting the maximum keeps exp() finite for any temperature.
  for (let i = 0; i < logits.length; i++) probs[i] = Math.exp(((logits[i] ?? 0) - max) / temperature);
  return probs;
}

function sum(probs: Float64Array, ids: number[]): number {
  let total = 0;
  for (const id of ids) total += probs[id] ?? 0;
  return total;
}
