import { describe, expect, spyOn, test } from 'bun:test';
import * as tf from '@tensorflow/tfjs-core';
import type { MultimodalMACOptions } from '../../model/config.ts';
import { GenerationBatch, GenerationError, GenerationLengths, NumericOverflowError, PREFILL_SEGMENTS, type BatchEvent, type GenerationRequest, type GenerationResult } from '../../model/generate.ts';
import { DecodingCache } from '../../model/mac.ts';
import { InvalidSamplingOptionError } from '../../model/sampling.ts';
import { MultimodalMACNetwork } from '../../model/multimodal.ts';
import type { VisionTransformerEncoder } from '../../model/vit.ts';
import { TINY, collect, ids, solidImage } from './helpers.ts';

const RED: [number, number, number] = [220, 30, 30];
/** TINY reads its prompt in pieces of PREFILL_SEGMENTS segments of 4 tokens. */
const PIECE = PREFILL_SEGMENTS * TINY.segmentLen!;

/** A prompt of `length` bytes with `slots` image placeholders at `at`. */
function promptWithImage(model: MultimodalMACNetwork, length: number, at: number, slots: number): number[] {
  const prompt = Array.from({ length }, (_, i) => (i * 37 + 11) % 250);
  prompt.fill(model.imageTokenId, at, at + slots);
  return prompt;
}

/** The last row of logits of reading the whole prompt in one step, as prefill reports it. */
function oneCallLogits(model: MultimodalMACNetwork, prompt: number[], image: tf.Tensor3D, at: number): Float32Array {
  const cache = model.text.createCache(1);
  const values = tf.tidy(() => {
    const embeddings = model.embed(ids([prompt]), { images: image.expandDims(0).expandDims(0) as tf.Tensor5D, imagePositions: [[at]] });
    const logits = model.text.step(embeddings, cache);
    return logits.slice([0, prompt.length - 1, 0], [1, 1, -1]).dataSync() as Float32Array;
  });
  cache.dispose();
  const out = Float32Array.from(values);
  out[model.imageTokenId] = -Infinity;
  return out;
}

function maxDifference(a: Float32Array, b: Float32Array): number {
  let max = 0;
  for (let i = 0; i < a.length; i++) if (Number.isFinite(a[i]!)) max = Math.max(max, Math.abs(a[i]! - b[i]!));
  return max;
}

describe('prefill reads a long prompt in pieces of whole segments', () => {
  const cases: [string, MultimodalMACOptions, number][] = [
    ['an image inside a piece', {}, 21],
    // Four placeholders from 14 to 17: the image's features straddle the first and second pieces.
    // An image never crosses a piece: pieces are whole segments, and no image straddles a segment boundary.
    ['an image of four tokens ending a piece', { numImageTokens: 4 }, PIECE - 4],
    ['convolved memory in batches of two chunks', { neuralMemorySegmentLen: 3, neuralMemoryBatchSize: 6, neuralMemoryKwargs: { convKernel: 3 } }, 40],
  ];
  for (const [name, options, at] of cases) {
    test(`${name}: the logits of reading the prompt in one call (max abs difference < 1e-5)`, async () => {
      const model = new MultimodalMACNetwork({ ...TINY, ...options });
      const image = solidImage(16, RED);
      const prompt = promptWithImage(model, 4 * PIECE + 6, at, model.config.numImageTokens);
      const expected = oneCallLogits(model, prompt, image, at);
      const baseline = tf.memory().numTensors;
      const progress: number[] = [];
      let logits: Float32Array | undefined;
      await collect(model.generate(prompt, {
        images: [image],
        imagePositions: [at],
        maxLength: 1,
        onPrefillProgress: (read, total) => progress.push(read, total),
        onSample: (_, first) => (logits ??= first),
      }));
      expect(tf.memory().numTensors).toBe(baseline);
      expect(maxDifference(logits!, expected)).toBeLessThan(1e-5);
      expect(progress).toEqual([PIECE, prompt.length, 2 * PIECE, prompt.length, 3 * PIECE, prompt.length, 4 * PIECE, prompt.length, prompt.length, prompt.length]);
      image.dispose();
      model.dispose();
    });
  }

  test('an abort while the prompt is read ends generation at once and frees every tensor', async () => {
    const model = new MultimodalMACNetwork(TINY);
    const image = solidImage(16, RED);
    const prompt = promptWithImage(model, 20 * PIECE, 5, 1);
    const baseline = tf.memory().numTensors;
    const controller = new AbortController();
    const read: number[] = [];
    const stream = model.generate(prompt, {
      images: [image],
      imagePositions: [5],
      signal: controller.signal,
      onPrefillProgress: (tokens) => {
        read.push(tokens);
        if (tokens === 2 * PIECE) controller.abort();
      },
    });
    const first = await stream.next();
    expect(first).toEqual({ done: true, value: { finishReason: 'aborted', tokens: 0 } });
    // The piece during which the abort came was the last one read.
    expect(read).toEqual([PIECE, 2 * PIECE]);
    expect(tf.memory().numTensors).toBe(baseline);
    image.dispose();
    model.dispose();
  });
});

describe('generation', () => {
  const model = new MultimodalMACNetwork(TINY);
  const prompt = model.tokenizer.encode('abc');

  test('maxLength bounds the new tokens; the same seed gives the same text', async () => {
    const a = await collect(model.generate(prompt, { maxLength: 9, seed: 3 }));
    const b = await collect(model.generate(prompt, { maxLength: 9, seed: 3 }));
    expect(a.tokens.length).toBeLessThanOrEqual(9);
    expect(a).toEqual(b);
    // 32 bits: a larger seed would give a smaller one's text.
    for (const seed of [2 ** 32, -1, 1.5]) await expect(collect(model.generate(prompt, { maxLength: 9, seed }))).rejects.toThrow('seed must be a whole number in [0, 2^32)');
  });

  /**
   * TINY, its logits pushed 1000 up at token `first` while the cache holds fewer than `switchAt`
   * tokens and at `then` from there on: a model that ends its text, or never does, where a test says.
   */
  function steered(first: number, switchAt: number, then: number): MultimodalMACNetwork {
    const steeredModel = new MultimodalMACNetwork(TINY);
    const step = steeredModel.text.step.bind(steeredModel.text);
    steeredModel.text.step = (embeddings, cache) => {
      const favoured = cache.length < switchAt ? first : then;
      // Outside a tidy: the step keeps new tensors in the cache.
      const logits = step(embeddings, cache);
      const pushed = tf.tidy(() => logits.add(tf.oneHot([favoured], 256).reshape([1, 1, 256]).mul(1000)) as tf.Tensor3D);
      logits.dispose();
      return pushed;
    };
    return steeredModel;
  }

  /** The tokens a generation stream yields, and the result it ends with. */
  async function run(stream: AsyncGenerator<{ tokenId: number; text: string }, GenerationResult>) {
    const tokens: number[] = [];
    let next = await stream.next();
    for (; !next.done; next = await stream.next()) tokens.push(next.value.tokenId);
    return { tokens, result: next.value };
  }

  const X = 'x'.charCodeAt(0);

  test('generation stops at EOS, does not yield it, and counts only the tokens before it', async () => {
    // The prompt's 3 tokens, then 'x' sampled from the prompt's logits and from 2 steps: EOS from the third step.
    const ending = steered(X, prompt.length + 2, model.eosTokenId);
    const { tokens, result } = await run(ending.generate(prompt, { maxLength: 20, temperature: 0 }));
    expect(tokens).toEqual([X, X, X]);
    expect(result).toEqual({ finishReason: 'eos', tokens: 3 });
    const atOnce = await run(steered(model.eosTokenId, 0, model.eosTokenId).generate(prompt, { maxLength: 20, temperature: 1, seed: 1 }));
    expect(atOnce).toEqual({ tokens: [], result: { finishReason: 'eos', tokens: 0 } });
    ending.dispose();
  });

  test('generation stops after maxLength new tokens when no EOS comes, the prompt not counted', async () => {
    const endless = steered(X, 0, X);
    const baseline = tf.memory().numTensors;
    const { tokens, result } = await run(endless.generate(prompt, { maxLength: 7, temperature: 0 }));
    expect(tokens).toEqual(Array<number>(7).fill(X));
    expect(result).toEqual({ finishReason: 'length', tokens: 7 });
    expect(tf.memory().numTensors).toBe(baseline);
    const text = await collect(endless.generate(prompt, { maxLength: 1, temperature: 0 }));
    expect(text).toEqual({ tokens: [X], text: 'x' });
    endless.dispose();
  });

  test('a stop string ends the text before it', async () => {
    const free = await collect(model.generate(prompt, { maxLength: 30, temperature: 0 }));
    expect(free.text.length).toBeGreaterThanOrEqual(5); // long enough to hold the stop string below
    const stop = free.text.slice(3, 5);
    const stopped = await collect(model.generate(prompt, { maxLength: 30, temperature: 0, stop }));
    expect(stopped.text).toBe(free.text.slice(0, free.text.indexOf(stop)));
  });

  test('a logit bias steers every token, a frequency penalty wears it down, and a bias must name a token of the vocabulary', async () => {
    const biased = await collect(model.generate(prompt, { maxLength: 30, temperature: 0, logitBias: { [X]: 100 } }));
    expect(biased.tokens).toEqual(Array<number>(30).fill(X));
    // +10 outweighs the model's own preferences; after k x's a penalty of 2 a time leaves 10 - 2k of it.
    const worn = await collect(model.generate(prompt, { maxLength: 30, temperature: 0, logitBias: { [X]: 10 }, frequencyPenalty: 2 }));
    expect(worn.tokens.slice(0, 4)).toEqual([X, X, X, X]);
    expect(worn.tokens.filter((id) => id === X).length).toBeLessThanOrEqual(7);
    await expect(collect(model.generate(prompt, { logitBias: { 256: 1 } }))).rejects.toThrow('logitBias');
  });

  test('bad requests are refused before any work', async () => {
    await expect(collect(model.generate(prompt, { maxLength: 0 }))).rejects.toThrow('maxLength');
    await expect(collect(model.generate(prompt, { temperature: -1 }))).rejects.toThrow('temperature');
    await expect(collect(model.generate([300]))).rejects.toThrow('prompt tokens');
    await expect(collect(model.generate(prompt, { images: [solidImage(16, RED)] }))).rejects.toThrow('imagePositions');
  });

  test('generate frees every tensor, also when aborted', async () => {
    const image = solidImage(16, RED);
    const baseline = tf.memory().numTensors;
    await collect(model.generate([...prompt, model.imageTokenId], { images: [image], imagePositions: [3], maxLength: 20 }));
    expect(tf.memory().numTensors).toBe(baseline);
    const controller = new AbortController();
    let seen = 0;
    const stream = model.generate(prompt, { maxLength: 50, temperature: 1, seed: 1, signal: controller.signal });
    let result = await stream.next();
    while (!result.done) {
      if (++seen === 3) controller.abort();
      result = await stream.next();
    }
    expect(result.value.finishReason).toBe('aborted');
    expect(seen).toBe(3);
    expect(tf.memory().numTensors).toBe(baseline);
    image.dispose();
  });

  test('a memory that overflows ends generation with NumericOverflowError, not with bytes sampled from NaN', async () => {
    // A step size this large makes every store overshoot, so the weights grow by orders of magnitude per
    // chunk: without the residual norm that bounds what the memory returns and the surprise clip, nothing stops them.
    const unstable = new MultimodalMACNetwork({ ...TINY, neuralMemoryKwargs: { maxLr: 1e5, memModelNormAddResidual: false, maxGradNorm: 0 } });
    const long = unstable.tokenizer.encode('ab'.repeat(200));
    const baseline = tf.memory().numTensors;
    const error = await collect(unstable.generate(long, { maxLength: 5 })).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(NumericOverflowError);
    // Found at the end of the piece of the prompt where it happened, not after reading all 400 tokens.
    const read = Number(/the model's state overflowed after (\d+) tokens/.exec((error as Error).message)?.[1]);
    expect(read).toBeLessThan(400);
    expect(read % (PREFILL_SEGMENTS * TINY.segmentLen!)).toBe(0);
    expect(tf.memory().numTensors).toBe(baseline);
    // A short prompt stores too few chunks to overflow.
    const short = await collect(unstable.generate(unstable.tokenizer.encode('ab'), { maxLength: 5, temperature: 0 }));
    expect(short.tokens.length).toBeLessThanOrEqual(5);
    expect(short.tokens.every((id) => Number.isInteger(id) && id >= 0 && id < 256 && id !== unstable.imageTokenId)).toBe(true);
    unstable.dispose();
  });
});

type Outcome = { tokens: number[]; text: string; logits: Float32Array[]; end: GenerationResult | Error | undefined };

/** The requests, each wrapped so that its outcome gathers the logits it sampled from; and the outcomes. */
function recording(batch: GenerationRequest[]): { requests: GenerationRequest[]; outcomes: Outcome[] } {
  const outcomes = batch.map((): Outcome => ({ tokens: [], text: '', logits: [], end: undefined }));
  const wrapped = batch.map(({ prompt, options }, i) => ({ prompt, options: { ...options, onSample: (tokenId: number, logits: Float32Array) => {
    outcomes[i]!.logits.push(logits);
    options?.onSample?.(tokenId, logits);
  } } }));
  return { requests: wrapped, outcomes };
}

function record(outcomes: Outcome[], event: BatchEvent): void {
  const outcome = outcomes[event.request]!;
  expect(outcome.end).toBeUndefined();
  if (event.type === 'token') {
    outcome.tokens.push(event.token.tokenId);
    outcome.text += event.token.text;
  } else {
    outcome.end = event.type === 'finished' ? event.result : event.error;
  }
}

/** Each request's tokens, result (or error) and the logits it sampled from, as a batch streams them. */
async function runBatch(model: MultimodalMACNetwork, batch: GenerationRequest[]): Promise<Outcome[]> {
  const { requests: wrapped, outcomes } = recording(batch);
  for await (const event of model.generateBatch(wrapped)) record(outcomes, event);
  return outcomes;
}

/** Each outcome has the tokens, end and logits (max abs difference < 1e-5) that its request gets alone. */
async function expectEachAsAlone(model: MultimodalMACNetwork, batch: GenerationRequest[], outcomes: Outcome[]): Promise<void> {
  for (const [i, request] of batch.entries()) {
    const [alone] = await runBatch(model, [request]);
    expect(outcomes[i]!.tokens).toEqual(alone!.tokens);
    expect(outcomes[i]!.text).toBe(alone!.text);
    expect(outcomes[i]!.end).toEqual(alone!.end);
    outcomes[i]!.logits.forEach((logits, step) => expect(maxDifference(logits, alone!.logits[step]!)).toBeLessThan(1e-5));
  }
}

test('a model disposed while it generates ends the generation at its next step with that said, and every tensor of it is freed', async () => {
  const baseline = tf.memory().numTensors;
  const model = new MultimodalMACNetwork(TINY);
  const tokens: number[] = [];
  const consume = async () => {
    for await (const token of model.generate(model.tokenizer.encode('the sky i'), { maxLength: 20, seed: 1, logitBias: { [model.eosTokenId]: -100 } })) {
      tokens.push(token.tokenId);
      if (tokens.length === 1) model.dispose();
    }
  };
  await expect(consume()).rejects.toThrow('this model was disposed');
  // A step's tokens may come out together (an unfinished character waits for the next byte); no later step runs.
  expect(tokens.length).toBeLessThan(4);
  expect(tf.memory().numTensors).toBe(baseline);
});

describe('a batch of generations', () => {
  const model = new MultimodalMACNetwork(TINY);
  const image = solidImage(16, RED);
  const blue = solidImage(16, [30, 30, 220]);
  const text = (s: string) => model.tokenizer.encode(s);
  // Prompts of 9 tokens: one with an image at 2, one with two images, one of text alone.
  const requests: GenerationRequest[] = [
    { prompt: [...text('ab'), model.imageTokenId, ...text('cdefgh')], options: { images: [image], imagePositions: [2], maxLength: 12, seed: 1 } },
    { prompt: [model.imageTokenId, ...text('xyz'), model.imageTokenId, ...text('wvut')], options: { images: [blue, image], imagePositions: [0, 4], maxLength: 5, temperature: 0 } },
    { prompt: text('the sky i'), options: { maxLength: 20, seed: 2, temperature: 0.8, topK: 40, stop: 'q' } },
  ];

  const run = (batch: GenerationRequest[]) => runBatch(model, batch);
  const expectAsAlone = (batch: GenerationRequest[], outcomes: Outcome[]) => expectEachAsAlone(model, batch, outcomes);

  test('a request added with an image of another size, or one already disposed, fails alone; the rows running go on as alone', async () => {
    const baseline = tf.memory().numTensors;
    const disposed = solidImage(16, RED);
    disposed.dispose();
    const long: GenerationRequest = { prompt: text('the sky i'), options: { maxLength: 12, seed: 2, temperature: 1, logitBias: { [model.eosTokenId]: -100 } } };
    const withImage = (image: tf.Tensor3D): GenerationRequest => ({ prompt: [...text('ab'), model.imageTokenId, ...text('cdefgh')], options: { images: [image], imagePositions: [2], maxLength: 4 } });
    const large = solidImage(32, RED);
    let samples = 0;
    const batch = new GenerationBatch(model);
    const { requests: all, outcomes } = recording([
      { ...long, options: { ...long.options, onSample: () => ++samples === 2 && batch.add([withImage(large), withImage(disposed)]) } },
    ]);
    batch.add(all);
    const failures: string[] = [];
    for await (const event of batch.run()) {
      if (event.request === 0) record(outcomes, event);
      else if (event.type === 'failed') failures.push(event.error.message);
    }
    expect(failures).toEqual([
      'images must be [3, 16, 16] each, or [N, 3, 16, 16]; got [3, 32, 32]',
      'an image of the request was disposed before it was read',
    ]);
    await expectAsAlone([long], outcomes);
    large.dispose();
    expect(tf.memory().numTensors).toBe(baseline);
  });

  test('a model disposed at another prompt\'s event of the step ends the run saying so, before the next prompt is read', async () => {
    const baseline = tf.memory().numTensors;
    const spare = new MultimodalMACNetwork({ ...TINY, visionDepth: 3 });
    const image = solidImage(16, RED);
    const batch = new GenerationBatch(spare);
    // The first writes a token at once; the second, of another length, is read after it in the same step.
    batch.add([
      { prompt: spare.tokenizer.encode('hello'), options: { logitBias: { 97: 100 }, maxLength: 3 } },
      { prompt: [...spare.tokenizer.encode('ab'), spare.imageTokenId, ...spare.tokenizer.encode('cdefgh')], options: { images: [image], imagePositions: [2], maxLength: 3 } },
    ]);
    const consume = async () => {
      for await (const _ of batch.run()) spare.dispose();
    };
    await expect(consume()).rejects.toThrow('this model was disposed');
    image.dispose();
    expect(tf.memory().numTensors).toBe(baseline);
  });

  test('first come, first served: a prompt of two rows that finds no room is not overtaken by the single rows that come after it', async () => {
    const batch = new GenerationBatch(model, { maxRows: 2 });
    const banned = { [model.eosTokenId]: -100 };
    // What sampled first, in order: the pair, and the singles added after it.
    const firsts: string[] = [];
    const first = (name: string) => () => !firsts.includes(name) && firsts.push(name);
    let singles = 0;
    const single = (): GenerationRequest => {
      const name = `single ${++singles}`;
      // Of two lengths in turn, so that two that come together are read apart and join apart.
      return { prompt: text(singles % 2 === 0 ? 'hi' : 'hey'), options: { maxLength: 10, seed: singles, logitBias: banned, onSample: first(name) } };
    };
    const pair = [1, 2].map((seed): GenerationRequest => ({ prompt: text('the sea'), options: { maxLength: 3, seed, logitBias: banned, onSample: first('pair') } }));
    let added = false;
    batch.add([{ prompt: text('hello'), options: { maxLength: 40, seed: 3, logitBias: banned, onSample: () => added || ((added = true), batch.add([...pair, single()])) } }]);
    for await (const event of batch.run()) {
      // A single that ends gives its place to a new one, 20 in all: a steady stream.
      if (event.type === 'finished' && event.request >= 3 && singles < 20) batch.add([single()]);
    }
    expect(firsts[0]).toBe('pair');
    expect(singles).toBe(20);
  });

  test('gives each request what it gets alone: its tokens, its end, its logits (max abs difference < 1e-5)', async () => {
    const baseline = tf.memory().numTensors;
    const together = await run(requests);
    await expectAsAlone(requests, together);
    // The rows end at different steps: the batch went on without those that ended.
    expect(together.map((outcome) => outcome.tokens.length)).toEqual([12, 5, expect.any(Number)]);
    expect(tf.memory().numTensors).toBe(baseline);
  });

  test('an invalid or aborted request ends alone; the others go on as they would alone', async () => {
    const aborted = new AbortController();
    let sampled = 0;
    const batch: GenerationRequest[] = [
      { prompt: requests[0]!.prompt, options: { ...requests[0]!.options, signal: aborted.signal, onSample: () => ++sampled === 3 && aborted.abort() } },
      { prompt: requests[1]!.prompt, options: { ...requests[1]!.options, temperature: -1 } },
      requests[2]!,
    ];
    const baseline = tf.memory().numTensors;
    const outcomes = await run(batch);
    expect(outcomes[0]!.end).toEqual({ finishReason: 'aborted', tokens: 3 });
    expect(outcomes[1]!.end).toBeInstanceOf(InvalidSamplingOptionError);
    const [alone] = await run([requests[2]!]);
    expect(outcomes[2]!.tokens).toEqual(alone!.tokens);
    expect(outcomes[2]!.end).toEqual(alone!.end);
    expect(tf.memory().numTensors).toBe(baseline);
  });

  test('every distinct image of a batch is encoded once, in one call: choices that share an image share its encoding', async () => {
    const encode = spyOn(model, 'encodeImagesInStages');
    try {
      const shared: GenerationRequest[] = [0, 1, 2].map((seed) => ({ prompt: requests[1]!.prompt, options: { ...requests[1]!.options, seed, temperature: 1 } }));
      const outcomes = await run([...shared, requests[0]!]);
      expect(encode).toHaveBeenCalledTimes(1);
      // blue and red for the three choices, red again for the last request: two images.
      expect(encode.mock.calls[0]![0].shape[0]).toBe(2);
      for (const [i, request] of [...shared, requests[0]!].entries()) {
        const [alone] = await run([request]);
        expect(outcomes[i]!.tokens).toEqual(alone!.tokens);
      }
    } finally {
      encode.mockRestore();
    }
  });

  test('prompts of different lengths are read apart and then decode together, each as it would alone', async () => {
    const mixed: GenerationRequest[] = [requests[2]!, { prompt: text('a much longer prompt than the others, of several pieces: 1234567890'), options: { maxLength: 9, seed: 5 } }, { prompt: text('ab'), options: { maxLength: 7, seed: 6 } }];
    const baseline = tf.memory().numTensors;
    await expectAsAlone(mixed, await run(mixed));
    expect(tf.memory().numTensors).toBe(baseline);
  });

  test('a join that fails ends the run with its error and frees the cache of the prompt that was joining too', async () => {
    const mixed: GenerationRequest[] = [requests[2]!, { prompt: text('ab'), options: { maxLength: 7, seed: 6 } }];
    const baseline = tf.memory().numTensors;
    const join = spyOn(DecodingCache.prototype, 'join').mockImplementation(() => {
      throw new Error('no join');
    });
    try {
      await expect(run(mixed)).rejects.toThrow('no join');
    } finally {
      join.mockRestore();
    }
    expect(tf.memory().numTensors).toBe(baseline);
  });

  test('requests of one prompt length that arrive while they wait for their step are read together, their images encoded in one call', async () => {
    const batch = new GenerationBatch(model);
    const red = { prompt: requests[0]!.prompt, options: { ...requests[0]!.options, maxLength: 4 } };
    const blueToo = { prompt: requests[0]!.prompt, options: { ...requests[0]!.options, images: [blue], maxLength: 4, seed: 9 } };
    // After its third sample the long one has read 11 tokens: a 9-token prompt waits for 13 (TINY's period: 4), two steps.
    let samples = 0;
    const arrivals = () => {
      if (++samples === 3) batch.add([all[1]!]);
      if (samples === 4) batch.add([all[2]!]);
    };
    const long: GenerationRequest = { prompt: text('the sky i'), options: { maxLength: 12, seed: 2, temperature: 1, logitBias: { [model.eosTokenId]: -100 } } };
    const { requests: all, outcomes } = recording([{ ...long, options: { ...long.options, onSample: arrivals } }, red, blueToo]);
    const encode = spyOn(model, 'encodeImagesInStages');
    try {
      batch.add([all[0]!]);
      for await (const event of batch.run()) record(outcomes, event);
      expect(encode).toHaveBeenCalledTimes(1);
      expect(encode.mock.calls[0]![0].shape[0]).toBe(2);
    } finally {
      encode.mockRestore();
    }
    await expectAsAlone([long, red, blueToo], outcomes);
  });

  test('a prompt that would join after the rows decoding are likely to end waits for their end, and the batch takes no more joins meanwhile', async () => {
    const batch = new GenerationBatch(model);
    // After its fifth sample the long one has read 13 tokens and has one to go. A 7-token prompt
    // would join at 15, two steps on; a 5-token prompt could join at once, but the batch has closed.
    const later = { prompt: text('abcdefg'), options: { maxLength: 5, seed: 4 } };
    const atOnce = { prompt: text('hello'), options: { maxLength: 5, seed: 5 } };
    let samples = 0;
    const long: GenerationRequest = { prompt: text('the sky i'), options: { maxLength: 6, seed: 2, temperature: 1, logitBias: { [model.eosTokenId]: -100 } } };
    // What happened, in order: the long one's end, and each other's first sample.
    const order: string[] = [];
    const firstSample = (name: string) => () => !order.includes(name) && order.push(name);
    const { requests: all, outcomes } = recording([
      { ...long, options: { ...long.options, onSample: () => ++samples === 5 && batch.add([all[1]!, all[2]!]) } },
      { ...later, options: { ...later.options, onSample: firstSample('later') } },
      { ...atOnce, options: { ...atOnce.options, onSample: firstSample('at once') } },
    ]);
    batch.add([all[0]!]);
    for await (const event of batch.run()) {
      record(outcomes, event);
      if (event.request === 0 && event.type === 'finished') order.push('long ended');
    }
    expect(order[0]).toBe('long ended');
    await expectAsAlone([long, later, atOnce], outcomes);
  });

  test('once generations are seen to end within JOIN_AFTER_PERIODS periods of the cache, the batch takes no joins: later prompts start together when it ends', async () => {
    // What the batch said of joins, and the short one's end, in order.
    const told: string[] = [];
    const batch = new GenerationBatch(model, { onJoins: (open) => told.push(open ? 'joins open' : 'joins closed') });
    const banned = { [model.eosTokenId]: -100 };
    const long: GenerationRequest = { prompt: text('the sky i'), options: { maxLength: 20, seed: 2, temperature: 1, logitBias: banned } };
    // Ends after 2 tokens: TINY's period is 4, so generations are seen to last less than 8 periods.
    const short: GenerationRequest = { prompt: text('the sea i'), options: { maxLength: 2, seed: 3, logitBias: banned } };
    const later: GenerationRequest = { prompt: text('hello'), options: { maxLength: 5, seed: 5 } };
    const order: string[] = [];
    let samples = 0;
    const { requests: all, outcomes } = recording([
      { ...long, options: { ...long.options, onSample: () => ++samples === 5 && batch.add([all[2]!]) } },
      short,
      { ...later, options: { ...later.options, onSample: () => !order.includes('later') && order.push('later') } },
    ]);
    batch.add(all.slice(0, 2));
    for await (const event of batch.run()) {
      record(outcomes, event);
      if (event.request === 0 && event.type === 'finished') order.push('long ended');
      if (event.request === 1 && event.type === 'finished') told.push('short ended');
    }
    expect(order).toEqual(['long ended', 'later']);
    // Told as the short one ended (a mean of 2 tokens, under JOIN_AFTER_PERIODS periods of 4), before
    // its end went out: a request sent on seeing that end finds the batch taking no joins.
    expect(told).toEqual(['joins closed', 'short ended']);
    await expectAsAlone([long, short, later], outcomes);
  });

  test('a batch given the lengths that earlier batches saw takes no joins from its start where generations end soon', async () => {
    const lengths = new GenerationLengths();
    lengths.note(2);
    const joins: boolean[] = [];
    const batch = new GenerationBatch(model, { lengths, onJoins: (open) => joins.push(open) });
    const long: GenerationRequest = { prompt: text('the sky i'), options: { maxLength: 8, seed: 2, logitBias: { [model.eosTokenId]: -100 } } };
    const order: string[] = [];
    let samples = 0;
    const { requests: all, outcomes } = recording([
      { ...long, options: { ...long.options, onSample: () => ++samples === 2 && batch.add([all[1]!]) } },
      { prompt: text('hello'), options: { maxLength: 3, seed: 5, onSample: () => !order.includes('later') && order.push('later') } },
    ]);
    batch.add([all[0]!]);
    for await (const event of batch.run()) {
      record(outcomes, event);
      if (event.request === 0 && event.type === 'finished') order.push('long ended');
    }
    expect(order).toEqual(['long ended', 'later']);
    expect(lengths.mean).toBeCloseTo((2 + 8 + 3) / 3);
    // Every run says whether joins pay, once at least: the lengths may have changed since the last.
    expect(joins).toEqual([false]);
    const told: boolean[] = [];
    lengths.note(1000);
    const again = new GenerationBatch(model, { lengths, onJoins: (open) => told.push(open) });
    again.add([{ prompt: text('ab'), options: { maxLength: 5, logitBias: { [model.eosTokenId]: -100 } } }]);
    for await (const _ of again.run()) void _;
    expect(told).toEqual([true]);
  });

  test('requests added while others run join them within a period of the cache, each as it would alone', async () => {
    const banned = { [model.eosTokenId]: -100 };
    const long: GenerationRequest = { prompt: text('the sky i'), options: { maxLength: 40, seed: 2, temperature: 1, logitBias: banned } };
    const gone = new AbortController();
    gone.abort();
    const joining: GenerationRequest[] = [requests[0]!, { prompt: text('hello'), options: { maxLength: 6, seed: 3 } }, { prompt: text('never read'), options: { signal: gone.signal } }];
    const { requests: all, outcomes } = recording([long, ...joining]);
    const baseline = tf.memory().numTensors;
    const batch = new GenerationBatch(model);
    expect(batch.add([all[0]!])).toEqual([0]);
    // The long request's samples when the others were added, and when the first of them sampled its first token.
    let addedAt = -1;
    let joinedAt = -1;
    for await (const event of batch.run()) {
      record(outcomes, event);
      const samples = outcomes[0]!.logits.length;
      if (addedAt < 0 && samples >= 3) {
        expect(batch.add(all.slice(1))).toEqual([1, 2, 3]);
        addedAt = samples;
      }
      if (joinedAt < 0 && outcomes[1]!.logits.length > 0) joinedAt = samples;
    }
    // They waited for their prompts and a step at which they can join (TINY's period: 4 tokens), not for the long one's end.
    expect(joinedAt - addedAt).toBeGreaterThanOrEqual(0);
    expect(joinedAt - addedAt).toBeLessThan(4);
    expect(outcomes.map((o) => o.end)).toEqual([{ finishReason: 'length', tokens: 40 }, expect.anything(), expect.anything(), { finishReason: 'aborted', tokens: 0 }]);
    expect(() => batch.add([long])).toThrow(GenerationError);
    expect(tf.memory().numTensors).toBe(baseline);
    await expectAsAlone([long, ...joining.slice(0, 2)], outcomes);
  });
});

describe('a prompt that waits to join has its images encoded over the steps it waits', () => {
  // Six stages of the vision encoder, against TINY's period of 4 steps.
  const model = new MultimodalMACNetwork({ ...TINY, visionDepth: 6 });
  const text = (s: string) => model.tokenizer.encode(s);
  const red = solidImage(16, RED);
  const blue = solidImage(16, [30, 30, 220]);
  const long: GenerationRequest = { prompt: text('the sky i'), options: { maxLength: 10, seed: 2, temperature: 1, logitBias: { [model.eosTokenId]: -100 } } };
  const captioned = (image: tf.Tensor3D, seed: number): GenerationRequest =>
    ({ prompt: [...text('ab'), model.imageTokenId, ...text('cdefgh')], options: { images: [image], imagePositions: [2], maxLength: 4, seed } });

  /**
   * Runs `long`, adding `arrivals[k]` after its k-th sample (and telling `onStep` k), and counts the
   * vision blocks (one a stage) that ran before each of its samples from the second on.
   */
  async function runWithArrivals(arrivals: Record<number, GenerationRequest>, onStep?: (sample: number) => void): Promise<{ outcomes: Outcome[]; stagesPerStep: number[] }> {
    const blocks = (model.vision as VisionTransformerEncoder).blocks.map((block) => spyOn(block, 'forward'));
    const counts: number[] = [];
    const batch = new GenerationBatch(model);
    const later = Object.entries(arrivals).map(([at, request]) => [Number(at), request] as const);
    const { requests, outcomes } = recording([long, ...later.map(([, request]) => request)]);
    const onSample = requests[0]!.options!.onSample!;
    requests[0]!.options!.onSample = (tokenId, logits) => {
      onSample(tokenId, logits);
      counts.push(blocks.reduce((sum, block) => sum + block.mock.calls.length, 0));
      later.forEach(([at], i) => at === counts.length && batch.add([requests[i + 1]!]));
      onStep?.(counts.length);
    };
    try {
      batch.add([requests[0]!]);
      for await (const event of batch.run()) record(outcomes, event);
    } finally {
      for (const block of blocks) block.mockRestore();
    }
    return { outcomes, stagesPerStep: counts.slice(1).map((count, i) => count - counts[i]!) };
  }

  test('its encode runs evenly over the steps before the one it joins at, rather than stalling one step for all of it; it gets what it gets alone', async () => {
    const baseline = tf.memory().numTensors;
    // After its second sample the long one has read 10 tokens: a 9-token prompt joins at 13, three steps on.
    const { outcomes, stagesPerStep } = await runWithArrivals({ 2: captioned(red, 1) });
    expect(stagesPerStep).toEqual([0, 2, 2, 2, 0, 0, 0, 0, 0]);
    expect(tf.memory().numTensors).toBe(baseline);
    await expectEachAsAlone(model, [long, captioned(red, 1)], outcomes);
  });

  test('a prompt that arrives once the encode has begun is encoded apart, and both join at the same step', async () => {
    const encode = spyOn(model, 'encodeImagesInStages');
    try {
      const { outcomes, stagesPerStep } = await runWithArrivals({ 2: captioned(red, 1), 3: captioned(blue, 3) });
      expect(encode).toHaveBeenCalledTimes(2);
      // The second arrives two steps before the joining step: its six stages go three a step into those two.
      expect(stagesPerStep).toEqual([0, 2, 2 + 3, 2 + 3, 0, 0, 0, 0, 0]);
      await expectEachAsAlone(model, [long, captioned(red, 1), captioned(blue, 3)], outcomes);
    } finally {
      encode.mockRestore();
    }
  });

  test('a request aborted while its images are half encoded ends at the next step and frees the encode; the rows decoding go on', async () => {
    const aborted = new AbortController();
    const request = captioned(red, 1);
    const baseline = tf.memory().numTensors;
    const { outcomes, stagesPerStep } = await runWithArrivals({ 2: { ...request, options: { ...request.options, signal: aborted.signal } } }, (sample) => sample === 4 && aborted.abort());
    expect(stagesPerStep).toEqual([0, 2, 2, 0, 0, 0, 0, 0, 0]);
    expect(outcomes[1]!.end).toEqual({ finishReason: 'aborted', tokens: 0 });
    expect(tf.memory().numTensors).toBe(baseline);
    await expectEachAsAlone(model, [long], outcomes.slice(0, 1));
  });
});

describe('generate checks its options as the constructor does', () => {
  const model = new MultimodalMACNetwork(TINY);
  const prompt = model.tokenizer.encode('abc');

  test('an unknown option, such as Python\'s max_length or the original\'s filter_thres, is refused by name', async () => {
    const misspelled = { max_length: 3, filterThres: 0.9 } as GenerationRequest['options'];
    const error = await collect(model.generate(prompt, misspelled)).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(GenerationError);
    expect(String(error)).toContain("unknown options 'max_length', 'filterThres'");
  });

  test('every option a batch request may carry is known, also when it is undefined', async () => {
    const image = solidImage(16, RED);
    const options = {
      temperature: 0, topK: undefined, topP: 1, minP: 0, presencePenalty: 0, frequencyPenalty: 0, logitBias: {},
      images: [image], imagePositions: [3], maxLength: 2, seed: 1, stop: [], signal: new AbortController().signal,
      onPrefillProgress: () => undefined, onSample: undefined,
    };
    expect((await collect(model.generate([...prompt, model.imageTokenId], options))).tokens.length).toBeGreaterThan(0);
    image.dispose();
  });

  test('a prompt that holds the image placeholder where no image is given is refused', async () => {
    await expect(collect(model.generate([...prompt, model.imageTokenId]))).rejects.toThrow(
      'prompt token 3 is the image placeholder 255, but no image fills it');
    const image = solidImage(16, RED);
    const twoPlaceholders = [model.imageTokenId, ...prompt, model.imageTokenId];
    await expect(collect(model.generate(twoPlaceholders, { images: [image], imagePositions: [4] }))).rejects.toThrow('prompt token 0 is the image placeholder');
    image.dispose();
  });
});
