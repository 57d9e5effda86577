import { describe, expect, test } from 'bun:test';
import * as tf from '@tensorflow/tfjs-core';
import { MemoryMLP, ResidualNorm, type MemoryNetwork } from '../../model/memory-networks.ts';
import { NeuralMemory, orthogonalize, projectedPart } from '../../model/neural-memory.ts';
import { CausalConv, type TokenLayout } from '../../model/layers.ts';
import { normalInit } from '../../model/module.ts';
import { Random } from '../../model/random.ts';
import { maxAbsDifference } from './helpers.ts';

function memory(network: MemoryNetwork, chunkSize = 4, batchSize = chunkSize, convKernel = 0, memoryTokens?: TokenLayout): NeuralMemory {
  return new NeuralMemory(new Random(3), {
    dim: 16,
    chunkSize,
    batchSize,
    network,
    weightResidual: false,
    memoryTokens,
    options: {
      depth: 2, expansionFactor: 4, heads: 2, dimHead: 8, momentum: true, maxLr: 0.5, qkNorm: true, maxGradNorm: 0, convKernel,
      memModelNormAddResidual: false, spectralNormSurprises: false, initDecayBias: -4, minStepSize: 0,
    },
  });
}

/** Rows from the sequence's start, for a memory without convolutions. */
const NO_CONVOLUTION = { recent: null, recentText: null, position: 0 };

/** The rows a memory without convolutions stores for inputs x. */
function rowsOf(mem: NeuralMemory, x: tf.Tensor) {
  return mem.project(x, NO_CONVOLUTION).rows;
}

/** The 4 rows of `rows` from `start`. */
function sliceRows(rows: ReturnType<typeof rowsOf>, start: number) {
  const slice = (t: tf.Tensor) => t.slice([0, start, 0], [-1, 4, -1]);
  return { inputs: slice(rows.inputs), projected: slice(rows.projected) };
}

/** sum_i theta_i mean_d (M_W(k_i) - v_i)^2 over one chunk x [1, 4, 16], written out from the paper. */
function innerLoss(mem: NeuralMemory, x: tf.Tensor) {
  const heads = (t: tf.Tensor, normalize: boolean) => {
    const h = t.reshape([1, 4, 2, 8]).transpose([0, 2, 1, 3]);
    return normalize ? h.div(h.square().sum(-1, true).add(1e-6).sqrt()) : h;
  };
  return (...w: tf.Tensor[]) => {
    const { projected } = mem.project(x, NO_CONVOLUTION).rows;
    const keys = heads(projectedPart(projected, 'keys'), true);
    const values = heads(projectedPart(projected, 'values'), false);
    const theta = mem.toStepSize.forward(x).sigmoid().mul(0.5).transpose([0, 2, 1]).expandDims(-1);
    return mem.settings.network.forward(w, keys).sub(values).square().mean(-1, true).mul(theta).sum();
  };
}

describe('the surprise is the exact gradient of the inner loss', () => {
  // Each memory network's closed-form backward against tf.grad: memory-networks.test.ts.
  test('NeuralMemory.surprise is that gradient for the projected keys and values', () => {
    const mem = memory(new MemoryMLP(2, 4));
    const x = normalInit(new Random(5), [1, 4, 16], 1);
    const state = mem.initialState(1);
    const explicit = mem.surprise(rowsOf(mem, x), state.weights);
    const expected = tf.grads(innerLoss(mem, x))(state.weights);
    expected.forEach((g, i) => expect(maxAbsDifference(g, explicit[i]!) / g.abs().max().dataSync()[0]!).toBeLessThan(1e-4));
    tf.dispose([x, state.weights, state.momentum, explicit, expected]);
    mem.dispose();
  });
});

describe('reading and storing', () => {
  test('one store is S1 = eta S0 - g and W1 = (1 - alpha) W0 + S1, per head', () => {
    const mem = memory(new MemoryMLP(2, 4));
    const random = new Random(12);
    const x = normalInit(random, [1, 4, 16], 1);
    const { weights } = mem.initialState(1);
    const momentum = weights.map((w) => normalInit(random, w.shape, 0.1));
    const stored = mem.store(rowsOf(mem, x), weights, momentum);
    const g = tf.grads(innerLoss(mem, x))(weights);
    const gate = (linear: typeof mem.toMomentum) => linear.forward(x.mean(1)).sigmoid().reshape([1, 2, 1, 1]); // [B, H, 1, 1]
    const eta = gate(mem.toMomentum);
    const alpha = gate(mem.toForget);
    weights.forEach((w0, i) => {
      const s1 = eta.mul(momentum[i]!).sub(g[i]!);
      expect(maxAbsDifference(stored.momentum[i]!, s1)).toBeLessThan(1e-5);
      expect(maxAbsDifference(stored.weights[i]!, tf.scalar(1).sub(alpha).mul(w0).add(s1))).toBeLessThan(1e-5);
    });
    mem.dispose();
  });

  test('a step under minStepSize is no write at all; a larger one is measured from it', () => {
    const plain = memory(new MemoryMLP(2, 4));
    const { settings } = plain;
    plain.dispose();
    const mem = new NeuralMemory(new Random(3), { ...settings, options: { ...settings.options, minStepSize: 0.5, momentum: false } });
    const x = normalInit(new Random(12), [1, 8, 16], 1) as tf.Tensor3D;
    const { weight, bias } = mem.toStepSize;
    weight.assign(tf.zerosLike(weight));
    mem.toForget.bias!.assign(tf.fill([2], -40)); // no forgetting to speak of
    // sigmoid(-1) = 0.27 of maxLr is under the floor: two chunks read and stored, the weights as they were.
    bias!.assign(tf.fill([2], -1));
    const quiet = mem.forward(x, mem.initialState(1));
    quiet.state.weights.forEach((w, i) => expect(maxAbsDifference(w, mem.initialState(1).weights[i]!)).toBe(0));
    expect(mem.updateRate(quiet).dataSync()[0]!).toBeCloseTo(0, 6);
    // sigmoid(1) = 0.73: (0.73 - 0.5) / (1 - 0.5) of maxLr.
    bias!.assign(tf.fill([2], 1));
    const { rows } = mem.project(mem.norm.forward(x), NO_CONVOLUTION);
    const expected = (1 / (1 + Math.exp(-1)) - 0.5) / 0.5;
    for (const share of mem.stepShares(rows.inputs).dataSync()) expect(share).toBeCloseTo(expected, 5);
    mem.dispose();
  });

  for (const convKernel of [0, 3]) {
    test(`reading piece by piece equals reading the whole sequence (pending chunks are buffered), convKernel ${convKernel}`, () => {
      const mem = memory(new MemoryMLP(2, 4), 3, 6, convKernel);
      const x = normalInit(new Random(8), [2, 14, 16], 1) as tf.Tensor3D;
      const whole = mem.forward(x, mem.initialState(2)).retrieved;
      let state = mem.initialState(2);
      const parts: tf.Tensor[] = [];
      for (const [start, size] of [[0, 1], [1, 4], [5, 1], [6, 7], [13, 1]] as const) {
        const out = mem.forward(x.slice([0, start, 0], [-1, size, -1]), state);
        parts.push(out.retrieved);
        state = out.state;
      }
      expect(maxAbsDifference(whole, tf.concat(parts, 1))).toBeLessThan(1e-5);
      // 14 = 2 * 6 + 2 rows waiting for their batch
      expect(state.pending.reduce((rows, p) => rows + p.inputs.shape[1]!, 0)).toBe(2);
      mem.dispose();
    });
  }

  test("a read's rows are cut into chunks in one split: their gradients join in one concat, not a zero-padded copy of every row a chunk", async () => {
    const mem = memory(new MemoryMLP(2, 4), 3, 6);
    const x = normalInit(new Random(8), [1, 14, 16], 1) as tf.Tensor3D;
    const { kernels } = await tf.profile(() => tf.grad((input: tf.Tensor) => mem.forward(input as tf.Tensor3D, mem.initialState(1)).retrieved.sum())(x));
    const allRows = kernels.filter((kernel) => kernel.name === tf.PadV2 && kernel.outputShapes[0]![1] === 14);
    expect(allRows.map((kernel) => kernel.outputShapes)).toEqual([]);
    mem.dispose();
  });

  test('with a convolution of K rows, a key holds the K - 1 rows before its own and no earlier one', () => {
    const mem = memory(new MemoryMLP(1, 1), 4, 4, 3);
    const x = normalInit(new Random(13), [1, 8, 16], 1);
    const keysAfter = (changedRow: number) => {
      const changed = x.add(tf.oneHot([changedRow], 8).reshape([1, 8, 1]).mul(2));
      return projectedPart(mem.project(mem.norm.forward(changed), mem.initialState(1).convolution).rows.projected, 'keys');
    };
    const keys = projectedPart(mem.project(mem.norm.forward(x), mem.initialState(1).convolution).rows.projected, 'keys');
    const rowChange = (other: tf.Tensor, row: number) => maxAbsDifference(keys.slice([0, row, 0], [1, 1, -1]), other.slice([0, row, 0], [1, 1, -1]));
    const changed3 = keysAfter(3);
    expect(rowChange(changed3, 2)).toBe(0);
    for (const row of [3, 4, 5]) expect(rowChange(changed3, row)).toBeGreaterThan(1e-3);
    expect(rowChange(changed3, 6)).toBe(0);
    mem.dispose();
  });

  test('with the memory tokens laid out, a text row convolves the text rows before it, past the memory tokens between', () => {
    // Rows 0-1 and 5-6 are memory tokens, 2-4 and 7-9 text.
    const layout = { every: 5, count: 2 };
    const skipping = memory(new MemoryMLP(1, 1), 5, 5, 3, layout);
    const plain = memory(new MemoryMLP(1, 1), 5, 5, 3);
    const x = skipping.norm.forward(normalInit(new Random(14), [1, 10, 16], 1));
    const rows = (t: tf.Tensor, indices: number[]) => tf.gather(t, indices, 1);
    const text = [2, 3, 4, 7, 8, 9];
    const tokens = [0, 1, 5, 6];
    const keys = projectedPart(skipping.project(x, skipping.initialState(1).convolution).rows.projected, 'keys');
    const textAlone = projectedPart(plain.project(rows(x, text), plain.initialState(1).convolution).rows.projected, 'keys');
    const everyRow = projectedPart(plain.project(x, plain.initialState(1).convolution).rows.projected, 'keys');
    expect(maxAbsDifference(rows(keys, text), textAlone)).toBeLessThan(1e-6);
    expect(maxAbsDifference(rows(keys, tokens), rows(everyRow, tokens))).toBeLessThan(1e-6);
    // The key of row 7, the first text row after the boundary, differs from the one that convolves memory tokens.
    expect(maxAbsDifference(rows(keys, [7]), rows(everyRow, [7]))).toBeGreaterThan(1e-3);
    // Read in pieces that start inside a period, the rows convolve exactly as read whole.
    const first = skipping.project(x.slice([0, 0, 0], [-1, 6, -1]), skipping.initialState(1).convolution);
    const second = skipping.project(x.slice([0, 6, 0], [-1, 4, -1]), first.convolution);
    expect(maxAbsDifference(tf.concat([projectedPart(first.rows.projected, 'keys'), projectedPart(second.rows.projected, 'keys')], 1), keys)).toBeLessThan(1e-6);
    skipping.dispose();
    plain.dispose();
  });

  test('CausalConv is sum_j w_j x_{t-j} per channel', () => {
    const conv = new CausalConv(new Random(4), 3, 2);
    const x = tf.tensor3d([[[1, 2], [3, 4], [5, 6], [7, 8]]]); // 2 rows before + 2 output rows
    const w = conv.weight.arraySync() as number[][];
    const rows = x.arraySync()[0]!;
    const expected = [2, 3].map((t) => [0, 1].map((c) => [0, 1, 2].reduce((sum, j) => sum + w[j]![c]! * rows[t - j]![c]!, 0)));
    expect(maxAbsDifference(conv.forward(x), tf.tensor3d([expected]))).toBeLessThan(1e-6);
    conv.dispose();
  });

  test('a chunk reads the weights from before it: the first chunk reads the initial memory', () => {
    const mem = memory(new MemoryMLP(2, 4), 4);
    const x = normalInit(new Random(9), [1, 8, 16], 1) as tf.Tensor3D;
    const out = mem.forward(x, mem.initialState(1));
    const firstChunk = mem.retrieve(rowsOf(mem, mem.norm.forward(x.slice([0, 0, 0], [-1, 4, -1]))).projected, mem.initialState(1).weights);
    expect(maxAbsDifference(out.retrieved.slice([0, 0, 0], [-1, 4, -1]), firstChunk)).toBe(0);
    const laterWithInitial = mem.retrieve(rowsOf(mem, mem.norm.forward(x.slice([0, 4, 0], [-1, 4, -1]))).projected, mem.initialState(1).weights);
    expect(maxAbsDifference(out.retrieved.slice([0, 4, 0], [-1, 4, -1]), laterWithInitial)).toBeGreaterThan(1e-4);
    mem.dispose();
  });

  test('in a batch of two chunks, the second reads what the first stored, and its surprise is taken at the batch start', () => {
    const mem = memory(new MemoryMLP(2, 4), 4, 8);
    const x = normalInit(new Random(14), [1, 8, 16], 1) as tf.Tensor3D;
    const out = mem.forward(x, mem.initialState(1));
    const initial = mem.initialState(1);
    const rows = rowsOf(mem, mem.norm.forward(x));
    const first = sliceRows(rows, 0);
    const second = sliceRows(rows, 4);
    const afterFirst = mem.store(first, initial.weights, initial.momentum);
    const secondRead = mem.retrieve(second.projected, afterFirst.weights);
    expect(maxAbsDifference(out.retrieved.slice([0, 4, 0], [-1, 4, -1]), secondRead)).toBeLessThan(1e-6);
    const atBatchStart = mem.store(second, afterFirst.weights, afterFirst.momentum, { surpriseAt: initial.weights });
    const atCurrent = mem.store(second, afterFirst.weights, afterFirst.momentum);
    out.state.weights.forEach((w, i) => {
      expect(maxAbsDifference(w, atBatchStart.weights[i]!)).toBeLessThan(1e-6);
      expect(maxAbsDifference(w, atCurrent.weights[i]!)).toBeGreaterThan(1e-6);
    });
    // The batch is complete: the next one takes its surprises at the weights it starts from.
    expect(out.state.chunksInBatch).toBe(0);
    out.state.batchStart.forEach((w, i) => expect(w).toBe(out.state.weights[i]!));
    mem.dispose();
  });

  test('spectral norm: an update is replaced by a matrix whose singular values are all near 1', () => {
    const update = normalInit(new Random(15), [2, 3, 8, 32], 0.01);
    const orthogonal = orthogonalize(update);
    // U U^T of an 8 x 32 matrix with singular values s is diag-like with s^2 on the diagonal.
    const gram = tf.matMul(orthogonal, orthogonal, false, true);
    const singularSquares = tf.linalg.bandPart(gram, 0, 0).sum(-1).dataSync();
    for (const s2 of singularSquares) expect(Math.sqrt(s2)).toBeGreaterThan(0.6);
    for (const s2 of singularSquares) expect(Math.sqrt(s2)).toBeLessThan(1.3);
    const offDiagonal = gram.sub(tf.linalg.bandPart(gram, 0, 0)).abs().max().dataSync()[0]!;
    expect(offDiagonal).toBeLessThan(0.35);
    const tall = orthogonalize(update.transpose([0, 1, 3, 2]));
    expect(maxAbsDifference(tall, orthogonal.transpose([0, 1, 3, 2]))).toBeLessThan(1e-5);
    const gain = normalInit(new Random(16), [2, 3, 1, 8], 1);
    expect(orthogonalize(gain)).toBe(gain);
    tf.dispose([update, orthogonal, gram, tall, gain]);
  });

  test('storing the same chunk again lowers its inner loss (the memory memorizes)', () => {
    const mem = memory(new MemoryMLP(2, 4), 4);
    const x = mem.norm.forward(normalInit(new Random(10), [1, 4, 16], 1));
    const innerLoss = (weights: tf.Tensor[]) => {
      const heads = (t: tf.Tensor) => t.reshape([1, 4, 2, 8]).transpose([0, 2, 1, 3]);
      const { projected } = mem.project(x, NO_CONVOLUTION).rows;
      const k = heads(projectedPart(projected, 'keys'));
      const keys = k.div(k.square().sum(-1, true).add(1e-6).sqrt());
      return mem.settings.network.forward(weights, keys).sub(heads(projectedPart(projected, 'values'))).square().sum().dataSync()[0]!;
    };
    let state = mem.initialState(1);
    const before = innerLoss(state.weights);
    for (let i = 0; i < 5; i++) state = { ...state, ...mem.store(rowsOf(mem, x), state.weights, state.momentum) };
    expect(innerLoss(state.weights)).toBeLessThan(before * 0.9);
    mem.dispose();
  });
});

describe('the outer gradient through the memory store matches central differences', () => {
  // The outer training differentiates through every store: the step size theta, the momentum and
  // forget gates and the initial weights reach the loss only through what later chunks read.
  test('gates, step size and initial weights (float32, relative error < 2e-2)', () => {
    const mem = new NeuralMemory(new Random(17), {
      dim: 16, chunkSize: 4, batchSize: 8, network: new ResidualNorm(new MemoryMLP(2, 2)), weightResidual: false,
      options: {
        depth: 2, expansionFactor: 2, heads: 2, dimHead: 8, momentum: true, maxLr: 2, qkNorm: true, maxGradNorm: 0, convKernel: 0,
        memModelNormAddResidual: true, spectralNormSurprises: false, initDecayBias: -1, minStepSize: 0,
      },
    });
    const random = new Random(18);
    const x = normalInit(random, [1, 16, 16], 1) as tf.Tensor3D;
    const readout = normalInit(random, [1, 16, 16], 1);
    const loss = () => tf.tidy(() => mem.forward(x, mem.initialState(1)).retrieved.mul(readout).sum() as tf.Scalar);
    const checked = [mem.toStepSize.weight, mem.toStepSize.bias!, mem.toMomentum.bias!, mem.toForget.weight, mem.toForget.bias!, mem.initialWeights[0]!, mem.initialWeights[2]!];
    const { grads } = tf.variableGrads(loss, checked);
    for (const variable of checked) {
      const values = Array.from(variable.dataSync() as Float32Array);
      const analytic = Array.from(grads[variable.name]!.dataSync() as Float32Array);
      // The coordinate with the largest gradient, where float32 differences are meaningful.
      const i = analytic.reduce((best, g, j) => (Math.abs(g) > Math.abs(analytic[best]!) ? j : best), 0);
      const at = (delta: number) => {
        const moved = values.slice();
        moved[i] = values[i]! + delta;
        variable.assign(tf.tensor(moved, variable.shape));
        return loss().dataSync()[0]!;
      };
      const h = 1e-2;
      const numeric = (at(h) - at(-h)) / (2 * h);
      variable.assign(tf.tensor(values, variable.shape));
      expect(Math.abs(numeric - analytic[i]!) / Math.abs(analytic[i]!)).toBeLessThan(2e-2);
      expect(Math.abs(analytic[i]!)).toBeGreaterThan(1e-3);
    }
    tf.dispose([x, readout, Object.values(grads)]);
    mem.dispose();
  });
});
