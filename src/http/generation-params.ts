/**
 * The sampling and length fields shared by /v1/captions and /v1/chat/completions, as one schema:
 * a wrong type or range is a 400 that names the field as the client spelled it. Values arrive as
 * JSON values or as multipart text, so numbers and booleans may be strings; null is the same as
 * absent, as OpenAI clients send it.
 */
import { z } from 'zod';
import type { GenerationParams } from '../inference/generation.ts';
import { MAX_TOP_LOGPROBS } from '../inference/logprobs.ts';
import { failsWith, shown } from '../schema/issues.ts';
import { invalidField } from './errors.ts';

export interface ParamLimits {
  maxTokensLimit: number;
  /** Each choice of a request (OpenAI's n) is a stream of its own. */
  maxConcurrentStreams: number;
}

/** max_tokens when the request gives none. */
export const DEFAULT_MAX_TOKENS = 64;
/** As OpenAI: at most 4 stop strings. */
const MAX_STOPS = 4;
const MAX_STOP_LENGTH = 64;

const NUMERIC = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;

interface Range {
  integer?: boolean;
  min: number;
  max: number;
  maxExclusive?: boolean;
}

/** A number as JSON or as form text, in `range`. */
export function numberInput(range: Range) {
  const kind = range.integer ? 'a whole number' : 'a number';
  const interval = `[${range.min}, ${range.max}${range.maxExclusive ? ')' : ']'}`;
  const error = failsWith((input) => `must be ${kind} in ${interval}, got ${shown(input)}`);
  const base = range.integer ? z.int(error) : z.number(error);
  const low = base.gte(range.min, error);
  const number = range.maxExclusive ? low.lt(range.max, error) : low.lte(range.max, error);
  // The range on the JSON number too: the OpenAPI document then says it as minimum and maximum.
  return z
    .union([number, z.string().trim().regex(NUMERIC, error)], error)
    .transform(Number)
    .pipe(number)
    .nullish()
    .meta({ description: `${kind} in ${interval}; form text is read as a number` });
}

/** A boolean as JSON or as form text ("true"/"false", "1"/"0"). */
export const booleanInput = z
  .union([z.boolean(), z.enum(['true', 'false', '1', '0'])], failsWith((input) => `must be true or false, got ${JSON.stringify(input)}`))
  .transform((value) => value === true || value === 'true' || value === '1')
  .nullish();

const stopError = (input: unknown) => `each stop must be a string of 1 to ${MAX_STOP_LENGTH} characters, got ${JSON.stringify(input)}`;
// Checked as a whole, so that every fault in the list is the field `stop` itself.
// The metadata tells the OpenAPI document the limits that the transform checks.
const stopString = { type: 'string', minLength: 1, maxLength: MAX_STOP_LENGTH };
const stops = z
  .union([z.string().meta(stopString), z.array(z.unknown()).meta({ items: stopString, maxItems: MAX_STOPS })], failsWith(stopError))
  .transform((value, ctx) => {
    const list = typeof value === 'string' ? [value] : value;
    if (list.length > MAX_STOPS) ctx.addIssue({ code: 'custom', message: `at most ${MAX_STOPS} stop strings, got ${list.length}` });
    // Characters, not UTF-16 units: an emoji is one.
    const bad = list.find((stop) => typeof stop !== 'string' || stop.length === 0 || [...stop].length > MAX_STOP_LENGTH);
    if (list.length <= MAX_STOPS && bad !== undefined) ctx.addIssue({ code: 'custom', message: stopError(bad) });
    return list as string[];
  })
  .nullish()
  .meta({ description: `a string, or up to ${MAX_STOPS} strings of 1 to ${MAX_STOP_LENGTH} characters (a repeated field in a form), that end the text when generated` });

/** The tokens a generation can write: the bytes 0-253 and the end of text (254); 255, the image placeholder, never is. */
const WRITABLE_TOKENS = 255;
const biasError = (input: unknown) => `must be an object from token ids (0-254) to numbers in [-100, 100], got ${JSON.stringify(input)}`;
// An object in JSON, or its JSON text in a form field.
const logitBias = z
  .union([z.record(z.string(), z.unknown()).meta({ additionalProperties: { type: 'number', minimum: -100, maximum: 100 } }), z.string()], failsWith(biasError))
  .transform((value, ctx) => {
    let parsed: unknown = value;
    if (typeof value === 'string') {
      try {
        parsed = JSON.parse(value);
      } catch {
        parsed = value;
      }
    }
    const entries = typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed) ? Object.entries(parsed) : null;
    const bad = entries?.find(([id, bias]) => !/^\d+$/.test(id) || Number(id) >= WRITABLE_TOKENS || typeof bias !== 'number' || !(bias >= -100 && bias <= 100));
    if (!entries || bad) {
      ctx.addIssue({ code: 'custom', message: biasError(bad ? Object.fromEntries([bad]) : value) });
      return z.NEVER;
    }
    return Object.fromEntries(entries.map(([id, bias]) => [Number(id), bias as number])) as Record<number, number>;
  })
  .nullish()
  .meta({ description: 'token ids (bytes, 0-254; 254 ends the text) to numbers in [-100, 100] added to their logits, as OpenAI\'s logit_bias; JSON text in a form field' });

/** The fields, in the request's own names; a route puts them into its body's schema. */
export function generationFields(limits: ParamLimits) {
  return {
    max_tokens: numberInput({ integer: true, min: 1, max: limits.maxTokensLimit }),
    temperature: numberInput({ min: 0, max: 2 }),
    top_k: numberInput({ integer: true, min: 0, max: 256 }),
    top_p: numberInput({ min: 0, max: 1 }),
    min_p: numberInput({ min: 0, max: 1, maxExclusive: true }),
    // Any integer that JSON holds exactly, as OpenAI takes an int64 (clients send timestamps and negative numbers); the generator takes 32 bits of it.
    seed: numberInput({ integer: true, min: Number.MIN_SAFE_INTEGER, max: Number.MAX_SAFE_INTEGER }),
    stop: stops,
    presence_penalty: numberInput({ min: -2, max: 2 }),
    frequency_penalty: numberInput({ min: -2, max: 2 }),
    logit_bias: logitBias,
    logprobs: booleanInput,
    top_logprobs: numberInput({ integer: true, min: 0, max: MAX_TOP_LOGPROBS }),
  };
}

type GenerationFields = z.output<z.ZodObject<ReturnType<typeof generationFields>>>;

/** The seed modulo 2^32, as the generator takes it (model/random.ts MAX_SEED): -1 is 2^32 - 1, and 2^32 is 0. */
function generatorSeed(seed: number | null | undefined): number | undefined {
  return seed === null || seed === undefined ? undefined : Number(BigInt.asUintN(32, BigInt(seed)));
}

/** The checked fields as the pool's parameters; `maxTokens` when a route reads it under another name. */
export function toGenerationParams(fields: GenerationFields, maxTokens = fields.max_tokens): GenerationParams {
  const params: GenerationParams = { maxTokens: maxTokens ?? DEFAULT_MAX_TOKENS, stop: fields.stop ?? [] };
  const sampling = {
    temperature: fields.temperature, topK: fields.top_k, topP: fields.top_p, minP: fields.min_p, seed: generatorSeed(fields.seed),
    presencePenalty: fields.presence_penalty, frequencyPenalty: fields.frequency_penalty, logitBias: fields.logit_bias,
  };
  for (const [name, value] of Object.entries(sampling)) if (value !== undefined && value !== null) Object.assign(params, { [name]: value });
  if (fields.logprobs) params.logprobs = fields.top_logprobs ?? 0;
  else if (fields.top_logprobs !== undefined && fields.top_logprobs !== null) throw invalidField('top_logprobs', 'needs logprobs: true');
  return params;
}
