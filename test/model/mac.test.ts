import { describe, expect, spyOn, test } from 'bun:test';
import * as tf from '@tensorflow/tfjs-core';
import type { MultimodalMACOptions } from '../../model/config.ts';
import { MACBlock, SEGMENTS_PER_PASS } from '../../model/mac.ts';
import { MultimodalMACNetwork } from '../../model/multimodal.ts';
import { TINY, ids, maxAbsDifference, solidImage } from './helpers.ts';

const SEQUENCE = Array.from({ length: 23 }, (_, i) => (i * 37 + 11) % 250);

/** Logits of a full forward next to those of cached decoding over the same tokens, fed in the given pieces. */
function fullAndCached(options: MultimodalMACOptions, pieces: number[]) {
  const model = new MultimodalMACNetwork({ ...TINY, ...options });
  const full = model.forward(ids([SEQUENCE]));
  const cache = model.text.createCache(1);
  const steps: tf.Tensor[] = [];
  let at = 0;
  for (const size of pieces) {
    const embeddings = model.text.embed(ids([SEQUENCE.slice(at, at + size)]));
    steps.push(model.text.step(embeddings, cache));
    embeddings.dispose();
    at += size;
  }
  const cached = tf.concat(steps, 1);
  const difference = maxAbsDifference(full, cached);
  tf.dispose([full, cached, ...steps]);
  cache.dispose();
  model.dispose();
  return difference;
}

describe('cached decoding gives the logits of a full forward', () => {
  const oneByOne = Array<number>(SEQUENCE.length).fill(1);
  const prefillThenSteps = [7, ...Array<number>(SEQUENCE.length - 7).fill(1)];
  // Segments of 4: 2 rows, then 13 that finish that segment and read 2 whole ones and 3 rows at once.
  const acrossSegments = [2, 13, 1, 7];
  const cases: [string, MultimodalMACOptions][] = [
    ['block attention', {}],
    ['sliding-window attention', { slidingWindowAttn: true }],
    ['memory gating the attention output', { neuralMemGateAttnOutput: true }],
    ['memory chunks not aligned with segments', { neuralMemorySegmentLen: 3 }],
    ['memory batches of two chunks', { neuralMemorySegmentLen: 2, neuralMemoryBatchSize: 4 }],
    ['swiglu memory, no long-term tokens', { neuralMemoryModel: 'swiglu', numLongtermMemTokens: 0 }],
    ['linear memory, no persistent tokens, sliding', { neuralMemoryModel: 'linear', numPersistMemTokens: 0, slidingWindowAttn: true }],
    ['memory with convolved queries, keys and values', { neuralMemoryKwargs: { convKernel: 4 } }],
    ['convolved memory in batches of two chunks', { neuralMemorySegmentLen: 2, neuralMemoryBatchSize: 4, neuralMemoryKwargs: { convKernel: 3 } }],
    ['convolution past the long-term memory tokens', { neuralMemConvSkipsMemTokens: true, neuralMemoryKwargs: { convKernel: 4 } }],
    ['convolution past memory tokens, chunks not aligned with segments', { neuralMemConvSkipsMemTokens: true, neuralMemorySegmentLen: 5, neuralMemoryKwargs: { convKernel: 3 } }],
    ['weight residual between memory layers, in batches', { neuralMemWeightResidual: true, neuralMemorySegmentLen: 3, neuralMemoryBatchSize: 6 }],
    ['spectral-norm surprises, no residual norm', { neuralMemoryKwargs: { spectralNormSurprises: true, memModelNormAddResidual: false } }],
    ['attention value residual, sliding', { acceptValueResidual: true, slidingWindowAttn: true }],
    ['attention value residual, memory gating the output', { acceptValueResidual: true, neuralMemGateAttnOutput: true }],
  ];
  for (const [name, options] of cases) {
    test(`${name}: one token at a time, prefill + steps, and pieces across segments (max abs difference < 1e-4)`, () => {
      expect(fullAndCached(options, oneByOne)).toBeLessThan(1e-4);
      expect(fullAndCached(options, prefillThenSteps)).toBeLessThan(1e-4);
      expect(fullAndCached(options, [SEQUENCE.length])).toBeLessThan(1e-4);
      expect(fullAndCached(options, acrossSegments)).toBeLessThan(1e-4);
    });
  }
});

test('a long step reads its segments SEGMENTS_PER_PASS at a time, so that the memory states a pass holds are bounded', () => {
  const model = new MultimodalMACNetwork(TINY);
  const { segmentLen, numLongtermMemTokens, depth } = model.config;
  const cache = model.text.createCache(1);
  const embeddings = model.text.embed(ids([Array.from({ length: 10 * segmentLen }, (_, i) => i)]));
  const blockStep = spyOn(MACBlock.prototype, 'step');
  try {
    model.text.step(embeddings, cache).dispose();
    const rows = blockStep.mock.calls.map(([x]) => x.shape[1]);
    const pass = SEGMENTS_PER_PASS * (segmentLen + numLongtermMemTokens);
    expect(rows).toEqual([...Array(depth).fill(pass), ...Array(depth).fill(pass), ...Array(depth).fill(2 * (segmentLen + numLongtermMemTokens))]);
  } finally {
    blockStep.mockRestore();
  }
  tf.dispose(embeddings);
  cache.dispose();
  model.dispose();
});

describe('information crosses segments only through the neural memory', () => {
  // segmentLen 4: tokens 0-3 are segment 1, tokens 8-11 are segment 3.
  function segment3Change(options: MultimodalMACOptions): number {
    const model = new MultimodalMACNetwork({ ...TINY, ...options });
    const changed = [...SEQUENCE];
    changed[1] = (changed[1]! + 1) % 250;
    const a = model.forward(ids([SEQUENCE])).slice([0, 8, 0], [1, 4, -1]);
    const b = model.forward(ids([changed])).slice([0, 8, 0], [1, 4, -1]);
    const difference = maxAbsDifference(a, b);
    model.dispose();
    return difference;
  }

  test('with memory, a token in segment 1 changes the logits of segment 3', () => {
    expect(segment3Change({})).toBeGreaterThan(1e-4);
  });

  test('without memory (neuralMemoryLayers: []), segment 3 is exactly unchanged', () => {
    expect(segment3Change({ neuralMemoryLayers: [] })).toBe(0);
  });
});

test('a loss after the first segment reaches every trainable variable', () => {
  const model = new MultimodalMACNetwork({ ...TINY, neuralMemGateAttnOutput: false, neuralMemWeightResidual: true, acceptValueResidual: true });
  const tokens = [...SEQUENCE.slice(0, 5), model.imageTokenId, ...SEQUENCE.slice(6, 16)];
  const images = tf.stack([solidImage(16, [200, 40, 40])]).expandDims(0) as tf.Tensor5D;
  // Targets only after the first segment: the first segment's tokens are padding... of the loss.
  const { grads } = tf.variableGrads(() => tf.tidy(() => {
    const logits = model.forward(ids([tokens]), { images, imagePositions: [[5]] });
    return tf.logSoftmax(logits.slice([0, 8, 0], [1, 7, -1])).mean().neg() as tf.Scalar;
  }));
  const names = new Map(model.namedParameters().map(([name, v]) => [v.name, name]));
  const silent = model.namedParameters().filter(([, v]) => {
    const g = grads[v.name];
    return !g || g.abs().max().dataSync()[0] === 0;
  }).map(([name]) => name);
  expect(silent).toEqual([]);
  expect(Object.keys(grads).length).toBe(names.size);
  for (const part of ['memory.toQKV', 'memory.toStepSize', 'memory.toMomentum',
    'memory.toForget', 'memory.initialWeights', 'memory.toWeightResidualMix', 'attention.toValueMix', 'persistentMemory', 'longtermMemory', 'vision.', 'imageProjection.']) {
    expect([...names.values()].some((n) => n.includes(part))).toBe(true);
  }
  tf.dispose([images, Object.values(grads)]);
  model.dispose();
});

test('forward and a training step leave no tensor behind', () => {
  const model = new MultimodalMACNetwork(TINY);
  const input = ids([SEQUENCE]);
  const baseline = tf.memory().numTensors;
  model.forward(input).dispose();
  expect(tf.memory().numTensors).toBe(baseline);
  const { value, grads } = tf.variableGrads(() => model.loss(input, { training: true }));
  tf.dispose([value, Object.values(grads)]);
  expect(tf.memory().numTensors).toBe(baseline);
  input.dispose();
  model.dispose();
});

test('cached decoding with convolved memory leaves no tensor behind once the cache is disposed', () => {
  const model = new MultimodalMACNetwork({ ...TINY, neuralMemoryKwargs: { convKernel: 4 } });
  const baseline = tf.memory().numTensors;
  const cache = model.text.createCache(1);
  for (const token of SEQUENCE) {
    const input = ids([[token]]);
    const embeddings = model.text.embed(input);
    tf.dispose([model.text.step(embeddings, cache), embeddings, input]);
  }
  cache.dispose();
  expect(tf.memory().numTensors).toBe(baseline);
  model.dispose();
});

describe('keepRows lets a batch go on without the rows that ended', () => {
  const ROWS = [0, 1, 2].map((r) => SEQUENCE.map((id) => (id + 29 * r) % 250));
  // Rows 0 and 2 start their memory afresh at different segments; row 1 never does.
  const RESETS = [[2], [], [3]];
  const cases: [string, MultimodalMACOptions][] = [
    ['block attention', {}],
    ['memory chunks not aligned with segments (rows pending in the cache)', { neuralMemorySegmentLen: 3 }],
    ['convolution past memory tokens, in batches of three chunks', { neuralMemConvSkipsMemTokens: true, neuralMemorySegmentLen: 2, neuralMemoryBatchSize: 6, neuralMemoryKwargs: { convKernel: 3 } }],
    ['weight residual, attention value residual, sliding', { neuralMemWeightResidual: true, acceptValueResidual: true, slidingWindowAttn: true }],
  ];
  for (const [name, options] of cases) {
    test(`${name}: the kept rows' logits are those of the whole batch (max abs difference < 1e-5), and the rest is freed`, () => {
      const model = new MultimodalMACNetwork({ ...TINY, neuralMemResetAtImages: true, ...options });
      const baseline = tf.memory().numTensors;
      const whole = model.text.createCache(3, RESETS);
      const kept = model.text.createCache(3, RESETS);
      // Outside a tidy: the step keeps new tensors in the cache.
      const step = (cache: typeof whole, rows: number[], from: number, to: number) => {
        const embeddings = tf.tidy(() => model.text.embed(ids(rows.map((r) => ROWS[r]!.slice(from, to)))));
        const logits = model.text.step(embeddings, cache);
        embeddings.dispose();
        return logits;
      };
      tf.dispose([step(whole, [0, 1, 2], 0, 7), step(kept, [0, 1, 2], 0, 7)]);
      kept.keepRows([2, 0]);
      let difference = 0;
      for (let at = 7; at < SEQUENCE.length; at++) {
        const all = step(whole, [0, 1, 2], at, at + 1);
        const some = step(kept, [2, 0], at, at + 1);
        difference = Math.max(difference, tf.tidy(() => maxAbsDifference(tf.gather(all, [2, 0]), some)));
        tf.dispose([all, some]);
      }
      expect(kept.freshChunks?.length).toBe(2);
      whole.dispose();
      kept.dispose();
      expect(difference).toBeLessThan(1e-5);
      expect(tf.memory().numTensors).toBe(baseline);
      model.dispose();
    });
  }
});

describe('join lets rows whose prompts were read apart decode together', () => {
  const ROWS = [0, 1, 2].map((r) => SEQUENCE.map((id) => (id + 29 * r) % 250));
  // Row 0 starts its memory afresh at segment 3, still ahead of it at the join; row 2 at segment 2,
  // behind it, and at segment 4, ahead of it: counted from its own start, not from the batch's.
  const RESETS = [[3], [], [2, 4]];
  const cases: [string, MultimodalMACOptions][] = [
    ['block attention', {}],
    ['memory chunks not aligned with segments (rows pending in the cache)', { neuralMemorySegmentLen: 3 }],
    ['convolution past memory tokens, in batches of three chunks', { neuralMemConvSkipsMemTokens: true, neuralMemorySegmentLen: 2, neuralMemoryBatchSize: 6, neuralMemoryKwargs: { convKernel: 3 } }],
    ['a memory batch of two segments (a period of two segments), no resets', { neuralMemoryBatchSize: 12, neuralMemResetAtImages: false }],
    ['weight residual, attention value residual, gates, no long-term memory tokens', { neuralMemWeightResidual: true, acceptValueResidual: true, neuralMemGateAttnOutput: true, numLongtermMemTokens: 0 }],
  ];
  const step = (model: MultimodalMACNetwork, cache: ReturnType<MultimodalMACNetwork['text']['createCache']>, rows: [number, number, number][]) => {
    // Outside a tidy: the step keeps new tensors in the cache. Each row: [sequence, from, to].
    const embeddings = tf.tidy(() => model.text.embed(ids(rows.map(([r, from, to]) => ROWS[r]!.slice(from, to)))));
    const logits = model.text.step(embeddings, cache);
    embeddings.dispose();
    return logits;
  };
  for (const [name, options] of cases) {
    test(`${name}: each row's logits are those it has alone (max abs difference < 1e-5), and nothing is left behind`, () => {
      const model = new MultimodalMACNetwork({ ...TINY, neuralMemResetAtImages: true, ...options });
      const baseline = tf.memory().numTensors;
      // Resets start a memory batch, which here is a segment.
      const resets = model.config.neuralMemResetAtImages ? RESETS : undefined;
      const batch = model.text.createCache(2, resets?.slice(0, 2));
      const arriving = model.text.createCache(1, resets?.slice(2));
      const alone = [0, 1, 2].map((r) => model.text.createCache(1, resets && [resets[r]!]));
      // Rows 0 and 1 have read 5 tokens, row 2 has read 13: a whole period more, in either case.
      const period = options.neuralMemoryBatchSize === 12 ? 8 : 4;
      tf.dispose([step(model, batch, [[0, 0, 5], [1, 0, 5]]), step(model, arriving, [[2, 0, 13]])]);
      tf.dispose([0, 1].map((r) => step(model, alone[r]!, [[r, 0, 5]])).concat(step(model, alone[2]!, [[2, 0, 13]])));
      expect(batch.stepsUntilJoin(13 - period / 2)).toBe(period / 2);
      expect(batch.stepsUntilJoin(15)).toBe(2);
      expect(batch.stepsUntilJoin(13)).toBe(0);
      batch.join(arriving);
      let difference = 0;
      for (let at = 0; at < 8; at++) {
        const together = step(model, batch, [[0, 5 + at, 6 + at], [1, 5 + at, 6 + at], [2, 13 + at, 14 + at]]);
        const each = [step(model, alone[0]!, [[0, 5 + at, 6 + at]]), step(model, alone[1]!, [[1, 5 + at, 6 + at]]), step(model, alone[2]!, [[2, 13 + at, 14 + at]])];
        difference = Math.max(difference, tf.tidy(() => maxAbsDifference(tf.concat(each, 0), together)));
        tf.dispose([together, ...each]);
      }
      expect(batch.rows).toBe(3);
      batch.keepRows([2]);
      // Row 2 has read two segments more than the batch: its segments 2 and 4 are the batch's 0 and 2.
      const chunksPerSegment = (model.config.segmentLen + model.config.numLongtermMemTokens) / model.config.neuralMemorySegmentLen;
      expect(batch.freshChunks).toEqual(resets && [[0, 2 * chunksPerSegment]]);
      for (const cache of [batch, arriving, ...alone]) cache.dispose();
      expect(difference).toBeLessThan(1e-5);
      expect(tf.memory().numTensors).toBe(baseline);
      model.dispose();
    });
  }

  test('with sliding windows, whose rotary positions do not repeat, rows join only at the same length', () => {
    const model = new MultimodalMACNetwork({ ...TINY, slidingWindowAttn: true });
    const baseline = tf.memory().numTensors;
    const batch = model.text.createCache(1);
    const arriving = model.text.createCache(1);
    const alone = model.text.createCache(1);
    tf.dispose([step(model, batch, [[0, 0, 9]]), step(model, arriving, [[2, 0, 13]]), step(model, alone, [[2, 0, 9]])]);
    expect(batch.stepsUntilJoin(8)).toBe(Infinity);
    expect(batch.stepsUntilJoin(13)).toBe(4);
    expect(() => batch.join(arriving)).toThrow('cannot join');
    arriving.dispose();
    const same = model.text.createCache(1);
    tf.dispose(step(model, same, [[2, 0, 9]]));
    batch.join(same);
    const together = step(model, batch, [[0, 9, 10], [2, 9, 10]]);
    const each = step(model, alone, [[2, 9, 10]]);
    expect(tf.tidy(() => maxAbsDifference(together.slice([1, 0, 0], [1, -1, -1]), each))).toBeLessThan(1e-5);
    tf.dispose([together, each]);
    [batch, same, alone].forEach((cache) => cache.dispose());
    expect(tf.memory().numTensors).toBe(baseline);
    model.dispose();
  });

  test('with sliding windows, rows read in one piece join rows read token by token, which keep fewer rows before their window', () => {
    const model = new MultimodalMACNetwork({ ...TINY, slidingWindowAttn: true });
    const baseline = tf.memory().numTensors;
    const [batch, arriving, alone] = [model.text.createCache(1), model.text.createCache(1), model.text.createCache(1)];
    for (let at = 0; at < 13; at++) tf.dispose(step(model, batch, [[0, at, at + 1]]));
    tf.dispose([step(model, arriving, [[2, 0, 13]]), step(model, alone, [[2, 0, 13]])]);
    batch.join(arriving);
    let difference = 0;
    for (let at = 13; at < 20; at++) {
      const together = step(model, batch, [[0, at, at + 1], [2, at, at + 1]]);
      const each = step(model, alone, [[2, at, at + 1]]);
      difference = Math.max(difference, tf.tidy(() => maxAbsDifference(together.slice([1, 0, 0], [1, -1, -1]), each)));
      tf.dispose([together, each]);
    }
    expect(difference).toBeLessThan(1e-5);
    [batch, arriving, alone].forEach((cache) => cache.dispose());
    expect(tf.memory().numTensors).toBe(baseline);
    model.dispose();
  });
});
