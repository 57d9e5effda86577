import { describe, expect, test } from 'bun:test';
import * as tf from '@tensorflow/tfjs-core';
import { ImagePositionError, MultimodalMACNetwork, type LossInputs, imagePlaceholderProblem, poolPatchGrid } from '../../model/multimodal.ts';
import { AdamW } from '../../model/optim.ts';
import { TINY, collect, ids, maxAbsDifference, solidImage } from './helpers.ts';

const RED: [number, number, number] = [220, 40, 40];
const BLUE: [number, number, number] = [40, 80, 220];

describe('construction', () => {
  // Each option and its checks: config.test.ts.
  test('the same seed builds the same model', () => {
    const a = new MultimodalMACNetwork(TINY);
    const b = new MultimodalMACNetwork(TINY);
    const x = ids([[1, 2, 3, 4, 5]]);
    expect(maxAbsDifference(a.forward(x), b.forward(x))).toBe(0);
    a.dispose();
    b.dispose();
  });
});

describe('the image is used', () => {
  const model = new MultimodalMACNetwork(TINY);
  const prompt = [...model.tokenizer.encode('This is '), model.imageTokenId];
  const red = solidImage(16, RED);
  const blue = solidImage(16, BLUE);

  test('two images give different logits', () => {
    const logitsOf = (image: tf.Tensor3D) =>
      model.forward(ids([prompt]), { images: image.expandDims(0).expandDims(0) as tf.Tensor5D, imagePositions: [[prompt.length - 1]] });
    expect(maxAbsDifference(logitsOf(red), logitsOf(blue))).toBeGreaterThan(1e-3);
  });

  test('two images give different greedy generations', async () => {
    const run = (image: tf.Tensor3D) =>
      collect(model.generate(prompt, { images: [image], imagePositions: [prompt.length - 1], maxLength: 12, temperature: 0 }));
    expect((await run(red)).tokens).not.toEqual((await run(blue)).tokens);
  });

  test('numImageTokens > 1 fills that many placeholders with pooled patch features', () => {
    const wide = new MultimodalMACNetwork({ ...TINY, numImageTokens: 2 });
    const features = wide.encodeImages(tf.stack([red, blue]) as tf.Tensor4D);
    expect(features.shape).toEqual([2, 2, 32]);
    const tokens = [1, 2, wide.imageTokenId, wide.imageTokenId, 3];
    const logits = wide.forward(ids([tokens]), { images: tf.stack([red]).expandDims(0) as tf.Tensor5D, imagePositions: [[2]] });
    expect(logits.shape).toEqual([1, 5, 256]);
    expect(() => wide.forward(ids([tokens]), { images: tf.stack([red]).expandDims(0) as tf.Tensor5D, imagePositions: [[4]] })).toThrow('does not leave room');
    wide.dispose();
  });

  test('poolPatchGrid pools the patch grid over regions in reading order: 4 -> 2 x 2, 2 -> left and right halves', () => {
    // A 4 x 4 grid whose single feature is the patch's index.
    const patches = tf.range(0, 16).reshape([1, 16, 1]) as tf.Tensor3D;
    expect(Array.from(poolPatchGrid(patches, 4, 'mean').dataSync())).toEqual([2.5, 4.5, 10.5, 12.5]);
    expect(Array.from(poolPatchGrid(patches, 2, 'mean').dataSync())).toEqual([6.5, 8.5]);
    expect(Array.from(poolPatchGrid(patches, 4, 'max').dataSync())).toEqual([5, 7, 13, 15]);
    expect(Array.from(poolPatchGrid(patches, 2, 'max').dataSync())).toEqual([13, 15]);
    expect(() => poolPatchGrid(tf.zeros([1, 12, 1]) as tf.Tensor3D, 4, 'mean')).toThrow('square grid');
  });

  test('poolPatchGrid pools uneven cells (a 5 x 5 grid in 2 x 2: 3 and 2 patches a side), and an even grid with the gradient of its regions', () => {
    const uneven = tf.range(0, 25).reshape([1, 25, 1]) as tf.Tensor3D;
    expect(Array.from(poolPatchGrid(uneven, 4, 'max').dataSync())).toEqual([12, 14, 22, 24]);
    expect(Array.from(poolPatchGrid(uneven, 4, 'mean').dataSync())).toEqual([6, 8.5, 18.5, 21]);
    // An even grid is pooled by one op; its gradient is that of each region's max or mean.
    const features = tf.randomNormal([2, 16, 3], 0, 1, 'float32', 7) as tf.Tensor3D;
    const weights = tf.randomNormal([2, 4, 3], 0, 1, 'float32', 8);
    for (const pool of ['max', 'mean'] as const) {
      const byRegion = (x: tf.Tensor) => {
        const grid = x.reshape([2, 4, 4, 3]);
        const cells = [[0, 0], [0, 2], [2, 0], [2, 2]].map(([top, left]) => grid.slice([0, top!, left!, 0], [-1, 2, 2, -1]));
        return tf.stack(cells.map((cell) => (pool === 'max' ? cell.max([1, 2]) : cell.mean([1, 2]))), 1);
      };
      const pooled = (x: tf.Tensor) => poolPatchGrid(x as tf.Tensor3D, 4, pool);
      expect(maxAbsDifference(pooled(features), byRegion(features))).toBeLessThan(1e-6);
      const gradient = (f: (x: tf.Tensor) => tf.Tensor) => tf.grad((x: tf.Tensor) => f(x).mul(weights).sum())(features);
      expect(maxAbsDifference(gradient(pooled), gradient(byRegion))).toBeLessThan(1e-6);
    }
  });

  test('withImageSlots widens one placeholder per image to numImageTokens, and generate needs them', async () => {
    const wide = new MultimodalMACNetwork({ ...TINY, numImageTokens: 2 });
    const img = wide.imageTokenId;
    expect(wide.withImageSlots([1, img, 2, img], [3, 1])).toEqual({ tokens: [1, img, img, 2, img, img], imagePositions: [4, 1] });
    expect(model.withImageSlots([1, img], [1])).toEqual({ tokens: [1, img], imagePositions: [1] });
    // A negative position is no image: it stays as it is, and widens nothing.
    expect(wide.withImageSlots([72, img, 73, 74], [1, -1])).toEqual({ tokens: [72, img, img, 73, 74], imagePositions: [1, -1] });
    expect(wide.withImageSlots([72, 73], [-1, -1])).toEqual({ tokens: [72, 73], imagePositions: [-1, -1] });
    const { tokens, imagePositions } = wide.withImageSlots([...prompt.slice(0, -1), img], [prompt.length - 1]);
    const generated = await collect(wide.generate(tokens, { images: [red], imagePositions, maxLength: 4, temperature: 0 }));
    expect(generated.tokens.length).toBeLessThanOrEqual(4);
    expect(generated.tokens).not.toContain(img);
    await expect(collect(wide.generate(prompt, { images: [red], imagePositions: [prompt.length - 1] }))).rejects.toThrow('placeholder(s)');
    wide.dispose();
  });

  test('forward and loss refuse image positions that overlap, straddle a segment boundary, or run past the row', () => {
    const wide = new MultimodalMACNetwork({ ...TINY, numImageTokens: 2 }); // segments of 4 tokens
    const img = wide.imageTokenId;
    const two = tf.stack([red, red]).expandDims(0) as tf.Tensor5D;
    const forward = (tokens: number[], positions: number[]) => () => tf.dispose(wide.loss(ids([tokens]), { images: two, imagePositions: [positions] }));
    expect(forward([1, 2, 3, 4, img, img, img, img], [4, 6])).not.toThrow();
    expect(forward([1, 2, 3, 4, img, img, img, 8], [4, 5])).toThrow('overlaps another image at token 5');
    expect(forward([1, 2, 3, img, img, 6, img, img], [3, 6])).toThrow('split by the segment boundary at 4');
    expect(forward([1, 2, 3, 4, 5, 6, img, img], [0, 7])).toThrow('does not leave room for 2 placeholder(s) in 8 tokens');
    expect(forward([1, 2, 3, img, img, 6, img, img], [3, 6])).toThrow(ImagePositionError);
    two.dispose();
    wide.dispose();
  });

  test('where the tokens are numbers, each image\'s positions must also hold the placeholder (generate)', async () => {
    const wide = new MultimodalMACNetwork({ ...TINY, numImageTokens: 2 });
    const img = wide.imageTokenId;
    expect(imagePlaceholderProblem([1, img, img, 4, 5, 6, img, img], [0, 6], 2, 4, img)).toBe(`image 0 at position 0: token 0 is 1, not the image placeholder ${img}`);
    expect(imagePlaceholderProblem([1, 2, 3, 4, img, img, img, img], [4, 6], 2, 4, img)).toBeNull();
    await expect(collect(wide.generate([1, img, img, 4, 5, 6, img, img], { images: [red, red], imagePositions: [0, 6] }))).rejects.toThrow('not the image placeholder');
    wide.dispose();
  });

  test('withImageSlots moves an image that a segment boundary would split to the next segment, after spaces', () => {
    const wide = new MultimodalMACNetwork({ ...TINY, numImageTokens: 2 }); // segments of 4 tokens
    const img = wide.imageTokenId;
    const { tokens, imagePositions } = wide.withImageSlots([1, 2, 3, img, 5, 6, img], [3, 6]);
    expect(tokens).toEqual([1, 2, 3, 32, img, img, 5, 6, img, img]);
    expect(imagePositions).toEqual([4, 8]);
    expect(() => new MultimodalMACNetwork({ ...TINY, numImageTokens: 4, segmentLen: 3 })).toThrow("option 'numImageTokens' must be at most segmentLen (3)");
    wide.dispose();
  });

  test('withImageSlots starts an image no later than maxImageOffset in its segment', () => {
    const early = new MultimodalMACNetwork({ ...TINY, numImageTokens: 2, segmentLen: 8, maxImageOffset: 1 });
    const img = early.imageTokenId;
    // Offset 1 may stay; offset 3 (position 11) moves to 16, behind 5 spaces.
    expect(early.withImageSlots([1, img], [1])).toEqual({ tokens: [1, img, img], imagePositions: [1] });
    const { tokens, imagePositions } = early.withImageSlots([...Array<number>(11).fill(7), img, 9], [11]);
    expect(imagePositions).toEqual([16]);
    expect(tokens.slice(11)).toEqual([32, 32, 32, 32, 32, img, img, 9]);
    expect(() => new MultimodalMACNetwork({ ...TINY, numImageTokens: 2, segmentLen: 8, maxImageOffset: 7 })).toThrow("option 'maxImageOffset' must be in [0, segmentLen - numImageTokens] (6)");
    early.dispose();
  });
});

describe('neuralMemResetAtImages: the memory starts afresh at an image', () => {
  // Segments of 4 tokens: the image at 9 is in segment 2, which starts at token 8.
  const img = 255;
  const text = Array.from({ length: 16 }, (_, i) => (i * 37 + 11) % 250);
  const late = [...text.slice(0, 9), img, ...text.slice(10)];
  const early = [...text.slice(0, 2), img, ...text.slice(3)];
  const images = tf.stack([solidImage(16, RED)]).expandDims(0) as tf.Tensor5D;
  const twoImages = tf.concat([images, images]) as tf.Tensor5D;
  const changedBefore = (tokens: number[]) => tokens.map((t, i) => (i === 1 ? (t + 1) % 250 : t));

  /** Logits from the image's segment on, for two rows that differ only in token 1, before it. */
  function changeAfterImage(reset: boolean): number {
    const model = new MultimodalMACNetwork({ ...TINY, neuralMemResetAtImages: reset });
    const logits = model.forward(ids([late, changedBefore(late)]), { images: twoImages, imagePositions: [[9], [9]] });
    const [a, b] = tf.split(logits.slice([0, 8, 0], [-1, -1, -1]), 2);
    const difference = maxAbsDifference(a!, b!);
    tf.dispose([logits, a!, b!]);
    model.dispose();
    return difference;
  }

  test('what follows the image no longer depends on the text before its segment', () => {
    expect(changeAfterImage(false)).toBeGreaterThan(1e-4);
    expect(changeAfterImage(true)).toBe(0);
  });

  test('an image in the first segment changes nothing, row by row within a batch', () => {
    const plain = new MultimodalMACNetwork(TINY);
    const resetting = new MultimodalMACNetwork({ ...TINY, neuralMemResetAtImages: true });
    const batch = ids([early, late]);
    const inputs = { images: twoImages, imagePositions: [[2], [9]] };
    const [plainEarly, plainLate] = tf.split(plain.forward(batch, inputs), 2);
    const [resetEarly, resetLate] = tf.split(resetting.forward(batch, inputs), 2);
    expect(maxAbsDifference(plainEarly!, resetEarly!)).toBe(0);
    // Before the image's segment too; from it on the memory differs.
    expect(maxAbsDifference(plainLate!.slice([0, 0, 0], [1, 8, -1]), resetLate!.slice([0, 0, 0], [1, 8, -1]))).toBe(0);
    expect(maxAbsDifference(plainLate!, resetLate!)).toBeGreaterThan(1e-4);
    tf.dispose([plainEarly!, plainLate!, resetEarly!, resetLate!, batch]);
    plain.dispose();
    resetting.dispose();
  });

  test('cached decoding, in pieces or a token at a time, gives the full forward\'s logits and leaves no tensor behind', () => {
    const model = new MultimodalMACNetwork({ ...TINY, neuralMemResetAtImages: true });
    const input = ids([late]);
    const inputs = { images, imagePositions: [[9]] };
    const full = model.forward(input, inputs);
    const baseline = tf.memory().numTensors;
    for (const pieces of [[7, 1, 1, 1, 6], Array<number>(16).fill(1)]) {
      const embeddings = model.embed(input, inputs);
      const cache = model.text.createCache(1, model.memoryResets([[9]]));
      let at = 0;
      const steps = pieces.map((size) => {
        const piece = embeddings.slice([0, at, 0], [1, size, -1]);
        at += size;
        const logits = model.text.step(piece, cache);
        piece.dispose();
        return logits;
      });
      const cached = tf.concat(steps, 1);
      expect(maxAbsDifference(full, cached)).toBeLessThan(1e-4);
      tf.dispose([embeddings, cached, ...steps]);
      cache.dispose();
      expect(tf.memory().numTensors).toBe(baseline);
    }
    tf.dispose([full, input]);
    model.dispose();
  });

  test('a training step with resets reaches the memory\'s initial weights and leaves no tensor behind', () => {
    const model = new MultimodalMACNetwork({ ...TINY, neuralMemResetAtImages: true });
    const batch = ids([early, late]);
    const baseline = tf.memory().numTensors;
    const { value, grads } = tf.variableGrads(() => model.loss(batch, { images: twoImages, imagePositions: [[2], [9]] }));
    const initial = model.namedParameters().filter(([name]) => name.includes('memory.initialWeights'));
    expect(initial.length).toBeGreaterThan(0);
    for (const [, v] of initial) expect(tf.tidy(() => grads[v.name]!.abs().max().dataSync()[0])).toBeGreaterThan(0);
    tf.dispose([value, Object.values(grads)]);
    expect(tf.memory().numTensors).toBe(baseline);
    batch.dispose();
    model.dispose();
  });
});

test('a tiny model overfits a handful of image/caption pairs (loss < 0.1)', async () => {
  const model = new MultimodalMACNetwork({ ...TINY, depth: 1, segmentLen: 8 });
  const colours: [number, number, number][] = [RED, BLUE, [40, 170, 60], [240, 210, 40]];
  const captions = ['red.', 'blue.', 'green.', 'yellow.'];
  const length = 1 + Math.max(...captions.map((c) => c.length)) + 1;
  const rows = captions.map((c) => {
    const row = [model.imageTokenId, ...model.tokenizer.encode(c), model.eosTokenId];
    return [...row, ...Array<number>(length - row.length).fill(model.eosTokenId)];
  });
  const batch = ids(rows);
  const images = tf.stack(colours.map((c) => solidImage(16, c))).expandDims(1) as tf.Tensor5D;
  const inputs = { images, imagePositions: rows.map(() => [0]), lengths: captions.map((c) => c.length + 2) };
  const optimizer = new AdamW(model.namedParameters(), { lr: 1e-2, weightDecay: 0 });
  let loss = Infinity;
  for (let step = 0; step < 300 && loss > 0.05; step++) {
    const { value, grads } = tf.variableGrads(() => model.loss(batch, inputs));
    loss = value.dataSync()[0]!;
    // tf.variableGrads keys gradients by the engine's variable names; the optimizer by parameter name.
    optimizer.step(Object.fromEntries(model.namedParameters().map(([name, v]) => [name, grads[v.name]!])), 1e-2);
    tf.dispose([value, Object.values(grads)]);
  }
  expect(loss).toBeLessThan(0.1);
  const prompt = [model.imageTokenId];
  for (const [i, colour] of colours.entries()) {
    const image = solidImage(16, colour);
    const { text } = await collect(model.generate(prompt, { images: [image], imagePositions: [0], maxLength: 10, temperature: 0 }));
    expect(text).toBe(captions[i]!);
    image.dispose();
  }
  optimizer.dispose();
  model.dispose();
}, 60_000);

describe('loss', () => {
  test('a training step launches the same kernels for a batch of 8 as for a batch of 2 (on a GPU, each launch costs the same)', async () => {
    const model = new MultimodalMACNetwork({ ...TINY, numImageTokens: 2 });
    const img = model.imageTokenId;
    const kernels = async (rows: number) => {
      const batch = ids(Array.from({ length: rows }, (_, b) => [1 + b, img, img, 3, 4, 5, 6, 7, 8, 9]));
      const images = tf.stack(Array.from({ length: rows }, () => solidImage(16, RED))).expandDims(1) as tf.Tensor5D;
      const inputs = { images, imagePositions: Array.from({ length: rows }, () => [1]), training: true };
      const profile = await tf.profile(() => {
        const { value, grads } = tf.variableGrads(() => model.loss(batch, inputs));
        tf.dispose([value, Object.values(grads)]);
      });
      tf.dispose([batch, images]);
      return profile.kernels.length;
    };
    expect(await kernels(8)).toBe(await kernels(2));
    model.dispose();
  });
  test('is the mean cross-entropy over the targets that are neither image slots nor padding', () => {
    const model = new MultimodalMACNetwork({ ...TINY, numImageTokens: 2 }); // segments of 4 tokens
    const img = model.imageTokenId;
    const eos = model.eosTokenId;
    // Row 0: an image in its second segment (its slots are targets of the tokens before), then padding.
    // Row 1: an image first, no padding. Row 2: an image first, padding from token 3.
    const rows = [[1, 2, 3, 4, img, img, 5, eos, eos, eos], [img, img, 6, 7, 8, 9, 10, 11, 12, eos], [img, img, 13, eos, eos, eos, eos, eos, eos, eos]];
    const lengths = [8, 10, 4];
    const images = tf.stack([solidImage(16, RED), solidImage(16, BLUE), solidImage(16, RED)]).expandDims(1) as tf.Tensor5D;
    const inputs = { images, imagePositions: [[4], [0], [0]], lengths };
    const batch = ids(rows);
    // The definition, written out: -log p(next token) averaged over the positions that count.
    const logProbs = tf.tidy(() => tf.logSoftmax(model.forward(batch, inputs)).arraySync() as number[][][]);
    let sum = 0;
    let count = 0;
    rows.forEach((row, b) => row.slice(1).forEach((target, t) => {
      if (target === img || t + 1 >= lengths[b]!) return;
      sum -= logProbs[b]![t]![target]!;
      count++;
    }));
    expect(count).toBe(5 + 8 + 2);
    const baseline = tf.memory().numTensors;
    const loss = model.loss(batch, inputs);
    expect(loss.dataSync()[0]!).toBeCloseTo(sum / count, 5);
    loss.dispose();
    // Without lengths every target but the image slots counts, padding included.
    const unpadded = model.loss(batch, { images, imagePositions: inputs.imagePositions });
    expect(unpadded.dataSync()[0]!).not.toBeCloseTo(sum / count, 3);
    unpadded.dispose();
    expect(tf.memory().numTensors).toBe(baseline);
    tf.dispose([images, batch]);
    model.dispose();
  });
  test('leaves out the context that a row reads before its image (contextLengths)', () => {
    const model = new MultimodalMACNetwork({ ...TINY, numImageTokens: 2 });
    const img = model.imageTokenId;
    const eos = model.eosTokenId;
    const rows = [[1, 2, 3, 4, img, img, 5, 6, eos, eos], [img, img, 7, 8, 9, eos, eos, eos, eos, eos]];
    const images = tf.stack([solidImage(16, RED), solidImage(16, BLUE)]).expandDims(1) as tf.Tensor5D;
    const inputs = { images, imagePositions: [[4], [0]], lengths: [9, 6], contextLengths: [4, 0] };
    const batch = ids(rows);
    const logProbs = tf.tidy(() => tf.logSoftmax(model.forward(batch, inputs)).arraySync() as number[][][]);
    // Row 0 learns 5, 6, EOS (positions 6-8), not 2, 3, 4: the prompt before its image is context.
    const picked = [[0, 5, 5], [0, 6, 6], [0, 7, eos], [1, 1, 7], [1, 2, 8], [1, 3, 9], [1, 4, eos]];
    const expected = -picked.reduce((sum, [b, t, target]) => sum + logProbs[b!]![t!]![target!]!, 0) / picked.length;
    const baseline = tf.memory().numTensors;
    const loss = model.loss(batch, inputs);
    expect(loss.dataSync()[0]!).toBeCloseTo(expected, 5);
    loss.dispose();
    expect(() => model.loss(batch, { ...inputs, contextLengths: [4] })).toThrow('contextLengths holds 1 rows, the batch 2');
    expect(tf.memory().numTensors).toBe(baseline);
    tf.dispose([images, batch]);
    model.dispose();
  });
  test('adds memoryUpdateCost times the memory update rate: the mean step size as a fraction of maxLr, plus the mean forgetting', () => {
    const model = new MultimodalMACNetwork(TINY); // a memory in both layers
    const batch = ids([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]]); // chunks of 6 rows: 2 complete, in each layer
    // With their weights at zero every row of both layers steps sigmoid(bias) of the largest step,
    // and every chunk forgets sigmoid(bias) of the weights.
    const steps = [-3, 1];
    const forgets = [-5, -2];
    model.text.layers.forEach((layer, i) => {
      for (const [linear, value] of [[layer.memory!.toStepSize, steps[i]!], [layer.memory!.toForget, forgets[i]!]] as const) {
        linear.weight.assign(tf.zerosLike(linear.weight));
        linear.bias!.assign(tf.fill(linear.bias!.shape, value));
      }
    });
    const sigmoid = (x: number) => 1 / (1 + Math.exp(-x));
    const updateRate = [0, 1].reduce((sum, i) => sum + sigmoid(steps[i]!) + sigmoid(forgets[i]!), 0) / 2;
    const baseline = tf.memory().numTensors;
    const losses = [0, 0.5, 2].map((memoryUpdateCost) => tf.tidy(() => model.loss(batch, { memoryUpdateCost }).dataSync()[0]!));
    expect(losses[1]! - losses[0]!).toBeCloseTo(0.5 * updateRate, 5);
    expect(losses[2]! - losses[0]!).toBeCloseTo(2 * updateRate, 5);
    expect(tf.memory().numTensors).toBe(baseline);
    // Attention alone writes nothing and pays nothing.
    const attentionOnly = new MultimodalMACNetwork({ ...TINY, neuralMemoryLayers: [] });
    const [plain, priced] = [0, 2].map((memoryUpdateCost) => tf.tidy(() => attentionOnly.loss(batch, { memoryUpdateCost }).dataSync()[0]!));
    expect(priced).toBe(plain!);
    batch.dispose();
    model.dispose();
    attentionOnly.dispose();
  });
});

describe('misuse is refused with a message that says what went wrong', () => {
  test('ids with no token at all', () => {
    const model = new MultimodalMACNetwork(TINY);
    expect(() => model.forward(tf.zeros([1, 0], 'int32') as tf.Tensor2D)).toThrow('ids must hold at least one token a row, got [1, 0]');
    model.dispose();
  });

  test('ids that are not int32 are refused; an id out of range makes its row\'s logits, and the loss, NaN, never a quiet zero embedding', () => {
    const model = new MultimodalMACNetwork(TINY);
    expect(() => model.forward(tf.tensor2d([[65.9, 66]]))).toThrow('token ids must be int32, got float32');
    const baseline = tf.memory().numTensors;
    for (const bad of [256, -1, 100_000]) {
      const finiteRows = tf.tidy(() => Array.from(tf.isFinite(model.forward(ids([[72, 105, bad, 33], [72, 105, 106, 33]]))).all([1, 2]).dataSync()));
      expect(finiteRows).toEqual([0, 1]);
      // A target out of range too, even as the row's last token, which no logit reads.
      for (const row of [[72, bad, 33], [72, 105, bad]]) expect(tf.tidy(() => model.loss(ids([row])).dataSync()[0])).toBeNaN();
    }
    expect(tf.memory().numTensors).toBe(baseline);
    model.dispose();
  });

  test('a disposed model, whatever is asked of it', async () => {
    const model = new MultimodalMACNetwork(TINY);
    model.dispose();
    const disposed = 'this model was disposed';
    expect(() => model.forward(ids([[1, 2, 3]]))).toThrow(disposed);
    expect(() => model.encodeImages(tf.zeros([1, 3, 16, 16]) as tf.Tensor4D)).toThrow(disposed);
    await expect(collect(model.generate([1, 2, 3]))).rejects.toThrow(disposed);
  });

  test('an option that is not a number says so', () => {
    expect(() => new MultimodalMACNetwork({ ...TINY, textDim: NaN })).toThrow("option 'textDim' must be a whole number >= 1, got NaN (not a finite number)");
  });
});

describe('refused inputs', () => {
  test('a training step refused for its inputs leaves no tensor behind, though tf.variableGrads keeps what it records', () => {
    const model = new MultimodalMACNetwork(TINY);
    const img = model.imageTokenId;
    const batch = ids([[img, 1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8]]);
    const images = tf.stack([solidImage(16, RED), solidImage(16, BLUE)]).expandDims(1) as tf.Tensor5D;
    const oneRow = images.slice(0, 1);
    const baseline = tf.memory().numTensors;
    const refused: [LossInputs, string][] = [
      [{ lengths: [8] }, 'lengths holds 1 rows, the batch 2'],
      [{ contextLengths: [0, 0, 0] }, 'contextLengths holds 3 rows, the batch 2'],
      [{ images, imagePositions: [[0], [8]] }, 'row 1'],
      [{ images: oneRow, imagePositions: [[0]] }, 'images must be [2, N, 3, 16, 16], one row of images per row of ids, got [1, 1, 3, 16, 16]'],
    ];
    for (const [inputs, message] of refused) {
      expect(() => tf.variableGrads(() => model.loss(batch, inputs))).toThrow(message);
      expect(tf.memory().numTensors).toBe(baseline);
    }
    tf.dispose([images, oneRow, batch]);
    model.dispose();
  });
});
