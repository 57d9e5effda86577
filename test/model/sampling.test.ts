import { describe, expect, test } from 'bun:test';
import { Random } from '../../model/random.ts';
import { InvalidSamplingOptionError, penalized, sampleToken, validateSampling } from '../../model/sampling.ts';
import type { SamplingOptions } from '../../model/sampling.ts';

/** Logits over the byte vocabulary, drawn from a seeded normal so each test sees the same ones. */
function randomLogits(seed: number, scale = 2): Float32Array {
  const random = new Random(seed);
  return Float32Array.from({ length: 256 }, () => random.normal() * scale);
}

function softmax(logits: Float32Array, temperature = 1): number[] {
  const max = Math.max(...logits);
  const exps = Array.from(logits, (logit) => Math.exp((logit - max) / temperature));
  const total = exps.reduce((a, b) => a + b, 0);
  return exps.map((e) => e / total);
}

function draws(logits: Float32Array, options: SamplingOptions, count: number, seed = 1): number[] {
  const random = new Random(seed);
  return Array.from({ length: count }, () => sampleToken(logits, options, random));
}

function argmax(values: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if ((values[i] ?? 0) > (values[best] ?? 0)) best = i;
  return best;
}

/** Token ids sorted from most to least likely. */
function ranked(logits: Float32Array): number[] {
  return Array.from(logits.keys()).sort((a, b) => (logits[b] ?? 0) - (logits[a] ?? 0));
}

describe('sampleToken', () => {
  test('temperature 0 is greedy: the argmax, without consuming randomness', () => {
    const random = new Random(5);
    for (let seed = 0; seed < 20; seed++) {
      const logits = randomLogits(seed);
      expect(sampleToken(logits, { temperature: 0 }, random)).toBe(argmax(logits));
    }
    expect(random.state).toBe(5);
  });

  test('greedy breaks ties toward the lowest index', () => {
    const logits = new Float32Array(256);
    logits[7] = 3;
    logits[42] = 3;
    expect(sampleToken(logits, { temperature: 0 }, new Random(0))).toBe(7);
  });

  test('the same seed gives the same sequence; another seed another one', () => {
    const logits = randomLogits(3, 0.5);
    const options = { temperature: 0.9, topP: 0.95 };
    expect(draws(logits, options, 50, 42)).toEqual(draws(logits, options, 50, 42));
    expect(draws(logits, options, 50, 42)).not.toEqual(draws(logits, options, 50, 43));
  });

  test('each non-greedy draw consumes exactly one random number', () => {
    const random = new Random(9);
    const mirror = new Random(9);
    sampleToken(randomLogits(1), { temperature: 1, topK: 10, topP: 0.8, minP: 0.05 }, random);
    mirror.next();
    expect(random.state).toBe(mirror.state);
  });

  test('top-k 1 is greedy at any temperature', () => {
    for (let seed = 0; seed < 20; seed++) {
      const logits = randomLogits(seed);
      expect(draws(logits, { temperature: 5, topK: 1 }, 20, seed)).toEqual(Array(20).fill(argmax(logits)));
    }
  });

  test.each([1, 0.5, 2])('empirical frequencies match softmax(logits / %p)', (temperature) => {
    const logits = Float32Array.from({ length: 256 }, (_, i) => (i < 8 ? i * 0.4 : -20));
    const expected = softmax(logits, temperature);
    const count = 40_000;
    const counts = new Array<number>(256).fill(0);
    for (const id of draws(logits, { temperature }, count)) counts[id] = (counts[id] ?? 0) + 1;
    for (let id = 0; id < 256; id++) {
      const p = expected[id] ?? 0;
      // Five standard errors of a binomial proportion, plus a floor for the near-zero ones.
      const tolerance = 5 * Math.sqrt((p * (1 - p)) / count) + 1e-4;
      expect(Math.abs((counts[id] ?? 0) / count - p)).toBeLessThan(tolerance);
    }
  });

  test('top-k draws only among the k most likely tokens', () => {
    const logits = randomLogits(8, 0.3);
    const allowed = new Set(ranked(logits).slice(0, 5));
    const seen = new Set(draws(logits, { topK: 5 }, 2000));
    expect([...seen].every((id) => allowed.has(id))).toBe(true);
    expect(seen.size).toBe(5);
  });

  test('top-p keeps the smallest set of likely tokens whose probability reaches p', () => {
    // Probabilities 0.5, 0.3, 0.15, 0.05: p = 0.75 needs the first two, p = 0.81 the first three.
    const logits = new Float32Array(256).fill(-Infinity);
    [0.5, 0.3, 0.15, 0.05].forEach((p, id) => (logits[id] = Math.log(p)));
    expect(new Set(draws(logits, { topP: 0.75 }, 2000))).toEqual(new Set([0, 1]));
    expect(new Set(draws(logits, { topP: 0.81 }, 2000))).toEqual(new Set([0, 1, 2]));
  });

  test('top-p always keeps the most likely token, even for a tiny p or 0 (as OpenAI takes it)', () => {
    const logits = randomLogits(4, 0.1);
    expect(new Set(draws(logits, { topP: 1e-9 }, 200))).toEqual(new Set([argmax(logits)]));
    expect(new Set(draws(logits, { topP: 0 }, 200))).toEqual(new Set([argmax(logits)]));
  });

  test('top-p never picks a token outside the nucleus', () => {
    const logits = randomLogits(21);
    const probs = softmax(logits);
    const order = ranked(logits);
    let cumulative = 0;
    const nucleus = new Set<number>();
    for (const id of order) {
      if (cumulative >= 0.6) break;
      nucleus.add(id);
      cumulative += probs[id] ?? 0;
    }
    for (const id of draws(logits, { topP: 0.6 }, 3000)) expect(nucleus.has(id)).toBe(true);
  });

  test('min-p never picks a token less likely than minP times the most likely one', () => {
    const logits = randomLogits(13);
    const probs = softmax(logits);
    const threshold = 0.2 * Math.max(...probs);
    const seen = new Set(draws(logits, { minP: 0.2 }, 3000));
    for (const id of seen) expect(probs[id] ?? 0).toBeGreaterThanOrEqual(threshold);
    expect(seen.size).toBe(probs.filter((p) => p >= threshold).length);
  });

  test('filters compose: the draw satisfies top-k, top-p and min-p at once', () => {
    const logits = randomLogits(17, 1);
    const topFive = new Set(ranked(logits).slice(0, 5));
    const probs = softmax(logits);
    const threshold = 0.1 * Math.max(...probs);
    for (const id of draws(logits, { temperature: 1, topK: 5, topP: 0.9, minP: 0.1 }, 2000)) {
      expect(topFive.has(id)).toBe(true);
      expect(probs[id] ?? 0).toBeGreaterThanOrEqual(threshold);
    }
  });

  test('never picks a token whose logit is -Infinity', () => {
    const logits = randomLogits(2);
    for (let id = 0; id < 256; id += 2) logits[id] = -Infinity;
    for (const id of draws(logits, { temperature: 3 }, 2000)) expect(id % 2).toBe(1);
  });
});

describe('validateSampling', () => {
  test('accepts the defaults and every boundary value', () => {
    expect(() => validateSampling({})).not.toThrow();
    expect(() => validateSampling({ temperature: 0, topK: 0, topP: 1, minP: 0 })).not.toThrow();
    expect(() => validateSampling({ temperature: 2.5, topK: 256, topP: 0.01, minP: 0.99 })).not.toThrow();
    expect(() => validateSampling({ presencePenalty: -2, frequencyPenalty: 2, logitBias: { 0: -100, 255: 100 } })).not.toThrow();
  });

  test.each([
    ['temperature', { temperature: -0.1 }],
    ['temperature', { temperature: Number.NaN }],
    ['temperature', { temperature: Number.POSITIVE_INFINITY }],
    ['topK', { topK: -1 }],
    ['topK', { topK: 2.5 }],
    ['topP', { topP: -0.01 }],
    ['topP', { topP: 1.01 }],
    ['minP', { minP: 1 }],
    ['minP', { minP: -0.5 }],
    ['topP', { topP: '0.5' as unknown as number }],
    ['presencePenalty', { presencePenalty: 2.5 }],
    ['frequencyPenalty', { frequencyPenalty: -3 }],
    ['logitBias', { logitBias: { 7: 101 } }],
    ['logitBias', { logitBias: { x: 1 } as unknown as Record<number, number> }],
  ] as const)('refuses a bad %s, naming the field', (field, options) => {
    let error: unknown;
    try {
      validateSampling(options);
    } catch (caught) {
      error = caught;
    }
    expect(error).toBeInstanceOf(InvalidSamplingOptionError);
    expect(error).toBeInstanceOf(RangeError);
    expect((error as InvalidSamplingOptionError).field).toBe(field);
    expect((error as Error).message).toStartWith(`${field} `);
  });

  test('sampleToken validates its options too', () => {
    expect(() => sampleToken(randomLogits(0), { topP: 2 }, new Random(0))).toThrow(/topP/);
  });
});

describe('penalized', () => {
  test("adds the logit bias, and takes off each generated token's presence penalty once and its frequency penalty per time", () => {
    const logits = Float32Array.from([1, 2, 3, 4, -Infinity]);
    const counts = Uint32Array.from([0, 1, 3, 0, 2]);
    const out = penalized(logits, { presencePenalty: 0.5, frequencyPenalty: 0.25, logitBias: { 0: 10, 4: 100 } }, counts);
    expect(Array.from(out)).toEqual([11, 2 - 0.25 - 0.5, 3 - 0.75 - 0.5, 4, -Infinity]);
    // The model's own logits are left as they were.
    expect(Array.from(logits)).toEqual([1, 2, 3, 4, -Infinity]);
  });

  test('without bias or penalties the logits pass through untouched, and sampling is what it was', () => {
    const logits = randomLogits(3);
    expect(penalized(logits, { presencePenalty: 0, frequencyPenalty: 0, logitBias: {} }, new Uint32Array(256).fill(5))).toBe(logits);
  });

  test('a penalty changes what greedy decoding picks', () => {
    const logits = Float32Array.from([0, 1, 0.5]);
    const counts = Uint32Array.from([0, 1, 0]);
    expect(sampleToken(penalized(logits, {}, counts), { temperature: 0 }, new Random(0))).toBe(1);
    expect(sampleToken(penalized(logits, { presencePenalty: 0.6 }, counts), { temperature: 0 }, new Random(0))).toBe(2);
  });
});
