import { describe, expect, test } from 'bun:test';
import { ApiError } from '../../../src/http/errors.ts';
import { DEFAULT_MAX_TOKENS, readBoolean, readGenerationParams } from '../../../src/http/generation-params.ts';

const limits = { maxTokensLimit: 100 };
const read = (fields: Record<string, unknown>) => (field: string) => fields[field];

describe('readGenerationParams', () => {
  test('defaults, and numbers from JSON or from form text', () => {
    expect(readGenerationParams(read({}), limits)).toEqual({ maxTokens: DEFAULT_MAX_TOKENS, stop: [] });
    expect(readGenerationParams(read({ max_tokens: '10', temperature: 0.5, top_k: '40', top_p: '0.9', min_p: 0.05, seed: '7', stop: 'END' }), limits)).toEqual({
      maxTokens: 10, temperature: 0.5, topK: 40, topP: 0.9, minP: 0.05, seed: 7, stop: ['END'],
    });
  });

  test('a wrong type or range is a 400 that names the field', () => {
    const bad: Record<string, unknown>[] = [
      { max_tokens: 101 }, { max_tokens: '' }, { max_tokens: true }, { temperature: '1e999' }, { temperature: '0x10' },
      { top_k: -1 }, { top_p: 0 }, { min_p: 1 }, { seed: 2 ** 32 }, { stop: [''] }, { stop: [1] }, { stop: ['a', 'b', 'c', 'd', 'e'] },
    ];
    for (const fields of bad) {
      const field = Object.keys(fields)[0]!;
      let error: unknown;
      try {
        readGenerationParams(read(fields), limits);
      } catch (e) {
        error = e;
      }
      expect(error).toBeInstanceOf(ApiError);
      expect(error).toMatchObject({ status: 400, field });
    }
  });

  test('max_tokens may be read under another name (max_completion_tokens)', () => {
    expect(readGenerationParams(read({ max_completion_tokens: 3 }), limits, 'max_completion_tokens').maxTokens).toBe(3);
  });

  test('booleans', () => {
    expect(readBoolean(read({ stream: 'false' }), 'stream')).toBe(false);
    expect(readBoolean(read({ stream: true }), 'stream')).toBe(true);
    expect(readBoolean(read({}), 'stream')).toBeUndefined();
    expect(() => readBoolean(read({ stream: 'yes' }), 'stream')).toThrow(ApiError);
  });
});
