import { describe, expect, test } from 'bun:test';
import { z } from 'zod';
import { ApiError } from '../../../src/http/errors.ts';
import { booleanInput, DEFAULT_MAX_TOKENS, generationFields, toGenerationParams } from '../../../src/http/generation-params.ts';
import { parseFields } from '../../../src/http/validation.ts';

const schema = z.strictObject({ ...generationFields({ maxTokensLimit: 100, maxConcurrentStreams: 4 }), max_completion_tokens: generationFields({ maxTokensLimit: 100, maxConcurrentStreams: 4 }).max_tokens });
const read = (fields: Record<string, unknown>) => toGenerationParams(parseFields(schema, fields));

describe('the generation fields', () => {
  test('defaults, and numbers from JSON or from form text; null is absent', () => {
    expect(read({})).toEqual({ maxTokens: DEFAULT_MAX_TOKENS, stop: [] });
    expect(read({ max_tokens: '10', temperature: 0.5, top_k: '40', top_p: '0.9', min_p: 0.05, seed: '7', stop: 'END' })).toEqual({
      maxTokens: 10, temperature: 0.5, topK: 40, topP: 0.9, minP: 0.05, seed: 7, stop: ['END'],
    });
    expect(read({ temperature: null, stop: null, seed: ' 3 ' })).toEqual({ maxTokens: DEFAULT_MAX_TOKENS, stop: [], seed: 3 });
    expect(read({ logprobs: 'true', top_logprobs: '2' })).toMatchObject({ logprobs: 2 });
  });

  test('a wrong type or range is a 400 that names the field, and says what was given', () => {
    const bad: Record<string, unknown>[] = [
      { max_tokens: 101 }, { max_tokens: '' }, { max_tokens: true }, { temperature: '1e999' }, { temperature: '0x10' },
      { top_k: -1 }, { top_p: -0.1 }, { min_p: 1 }, { seed: 2 ** 53 }, { stop: [''] }, { stop: [1] }, { stop: ['a', 'b', 'c', 'd', 'e'] },
      { top_logprobs: 1 },
    ];
    for (const fields of bad) {
      const field = Object.keys(fields)[0]!;
      let error: unknown;
      try {
        read(fields);
      } catch (e) {
        error = e;
      }
      expect(error).toBeInstanceOf(ApiError);
      expect(error).toMatchObject({ status: 400, field, message: expect.stringMatching(new RegExp(`^${field}: `)) });
    }
    expect(() => read({ max_tokens: 'ten' })).toThrow('max_tokens: must be a whole number in [1, 100], got "ten"');
    expect(() => read({ stop: ['a', 'b', 'c', 'd', 'e'] })).toThrow('stop: at most 4 stop strings, got 5');
  });

  test('max_tokens may be read under another name (max_completion_tokens)', () => {
    const fields = parseFields(schema, { max_completion_tokens: 3 });
    expect(toGenerationParams(fields, fields.max_completion_tokens).maxTokens).toBe(3);
  });

  test('booleans', () => {
    expect(booleanInput.parse('false')).toBe(false);
    expect(booleanInput.parse(true)).toBe(true);
    expect(booleanInput.parse(undefined)).toBeUndefined();
    expect(() => parseFields(z.object({ stream: booleanInput }), { stream: 'yes' })).toThrow('stream: must be true or false, got "yes"');
  });
});
