/**
 * The sampling and length fields shared by /v1/captions and /v1/chat/completions, checked at the
 * boundary: a wrong type or range is a 400 that names the field as the client spelled it. Values
 * arrive as JSON values or as multipart text, so numbers may be numeric strings.
 */
import { invalidField } from './errors.ts';
import type { GenerationParams } from '../inference/generation.ts';
import { MAX_TOP_LOGPROBS } from '../inference/logprobs.ts';

export interface ParamLimits {
  maxTokensLimit: number;
}

/** max_tokens when the request gives none. */
export const DEFAULT_MAX_TOKENS = 64;
/** As OpenAI: at most 4 stop strings. */
const MAX_STOPS = 4;
const MAX_STOP_LENGTH = 64;

/** Field name -> its value as sent (undefined when absent). */
export type FieldReader = (field: string) => unknown;

export function readGenerationParams(read: FieldReader, limits: ParamLimits, maxTokensField = 'max_tokens'): GenerationParams {
  const params: GenerationParams = {
    maxTokens: number(read, maxTokensField, { integer: true, min: 1, max: limits.maxTokensLimit }) ?? DEFAULT_MAX_TOKENS,
    stop: stops(read('stop')),
  };
  const temperature = number(read, 'temperature', { min: 0, max: 2 });
  const topK = number(read, 'top_k', { integer: true, min: 0, max: 256 });
  const topP = number(read, 'top_p', { min: 0, max: 1, minExclusive: true });
  const minP = number(read, 'min_p', { min: 0, max: 1, maxExclusive: true });
  const seed = number(read, 'seed', { integer: true, min: 0, max: 2 ** 32 - 1 });
  if (temperature !== undefined) params.temperature = temperature;
  if (topK !== undefined) params.topK = topK;
  if (topP !== undefined) params.topP = topP;
  if (minP !== undefined) params.minP = minP;
  if (seed !== undefined) params.seed = seed;
  const topLogprobs = number(read, 'top_logprobs', { integer: true, min: 0, max: MAX_TOP_LOGPROBS });
  if (readBoolean(read, 'logprobs')) params.logprobs = topLogprobs ?? 0;
  else if (topLogprobs !== undefined) throw invalidField('top_logprobs', 'needs logprobs: true');
  return params;
}

/** `stream` as a boolean field ("true"/"false" in a form); undefined when absent. */
export function readBoolean(read: FieldReader, field: string): boolean | undefined {
  const value = read(field);
  if (value === undefined || value === null) return undefined;
  if (value === true || value === 'true' || value === '1') return true;
  if (value === false || value === 'false' || value === '0') return false;
  throw invalidField(field, `must be true or false, got ${JSON.stringify(value)}`);
}

interface Range {
  integer?: boolean;
  min: number;
  max: number;
  minExclusive?: boolean;
  maxExclusive?: boolean;
}

const NUMERIC = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;

function number(read: FieldReader, field: string, range: Range): number | undefined {
  const raw = read(field);
  if (raw === undefined || raw === null) return undefined;
  const value = typeof raw === 'number' ? raw : typeof raw === 'string' && NUMERIC.test(raw.trim()) ? Number(raw) : NaN;
  const kind = range.integer ? 'a whole number' : 'a number';
  const interval = `${range.minExclusive ? '(' : '['}${range.min}, ${range.max}${range.maxExclusive ? ')' : ']'}`;
  const inRange =
    Number.isFinite(value) &&
    (range.minExclusive ? value > range.min : value >= range.min) &&
    (range.maxExclusive ? value < range.max : value <= range.max) &&
    (!range.integer || Number.isInteger(value));
  if (!inRange) throw invalidField(field, `must be ${kind} in ${interval}, got ${JSON.stringify(raw)}`);
  return value;
}

function stops(raw: unknown): string[] {
  if (raw === undefined || raw === null) return [];
  const list = Array.isArray(raw) ? raw : [raw];
  if (list.length > MAX_STOPS) throw invalidField('stop', `at most ${MAX_STOPS} stop strings, got ${list.length}`);
  for (const stop of list) {
    if (typeof stop !== 'string' || stop.length === 0 || stop.length > MAX_STOP_LENGTH) {
      throw invalidField('stop', `each stop must be a string of 1 to ${MAX_STOP_LENGTH} characters, got ${JSON.stringify(stop)}`);
    }
  }
  return list as string[];
}
