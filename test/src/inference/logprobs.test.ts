import { describe, expect, test } from 'bun:test';
import { openAiLogprob, tokenEventFields } from '../../../src/http/logprob-fields.ts';
import { tokenLogprob } from '../../../src/inference/logprobs.ts';

/** Logits over the 256 bytes, the image placeholder ruled out as generate() does. */
function logits(values: Record<number, number>): Float32Array {
  const out = new Float32Array(256).fill(-5);
  for (const [id, value] of Object.entries(values)) out[Number(id)] = value;
  out[255] = -Infinity;
  return out;
}

describe('tokenLogprob', () => {
  test('is the log-softmax of the logits: the probabilities of all tokens sum to 1', () => {
    const l = logits({ 97: 3, 98: 2.5, 254: 1 });
    const all = Array.from({ length: 255 }, (_, id) => Math.exp(tokenLogprob(l, id, 0).logprob));
    expect(all.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 6);
    expect(tokenLogprob(l, 97, 0).logprob).toBeCloseTo(3 - Math.log(Math.exp(3) + Math.exp(2.5) + Math.exp(1) + 252 * Math.exp(-5)), 6);
  });

  test('lists the most likely tokens first, never the image placeholder', () => {
    const { top } = tokenLogprob(logits({ 97: 3, 98: 2.5, 254: 1 }), 98, 4);
    expect(top.map((t) => t.tokenId)).toEqual([97, 98, 254, 0]);
    expect(tokenLogprob(logits({}), 1, 20).top.every((t) => t.tokenId !== 255)).toBe(true);
  });
});

describe("OpenAI's shape", () => {
  test('a byte is its character, a byte past ASCII is bytes:\\xNN, the end of text has no bytes', () => {
    const l = logits({ 0xc3: 3, 97: 2, 254: 1 });
    const entry = openAiLogprob(tokenLogprob(l, 0xc3, 3));
    expect(entry).toMatchObject({ token: 'bytes:\\xc3', bytes: [0xc3] });
    expect(entry.top_logprobs.map((t) => [t.token, t.bytes])).toEqual([['bytes:\\xc3', [0xc3]], ['a', [97]], ['<|endoftext|>', null]]);
    expect(openAiLogprob(tokenLogprob(l, 97, 1), true)).toMatchObject({ token: 'a', token_id: 97, top_logprobs: [{ token_id: 0xc3 }] });
  });

  test('a caption token event gains logprob, and top_logprobs only when asked for', () => {
    const l = logits({ 97: 3 });
    expect(Object.keys(tokenEventFields(tokenLogprob(l, 97, 0)))).toEqual(['logprob']);
    expect(tokenEventFields(tokenLogprob(l, 97, 2)).top_logprobs).toHaveLength(2);
    expect(tokenEventFields(undefined)).toEqual({});
  });
});
