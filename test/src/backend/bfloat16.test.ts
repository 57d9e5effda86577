/**
 * Products in bfloat16 (src/backend/bfloat16.ts, MAC_MATMUL_PRECISION=bfloat16) on oneDNN's
 * primitives: the rounding of float32 to bfloat16 (a reorder), x W + b's and x W's product from the
 * rounded operands on a weight packed once, and when a machine cannot run them. How the setting is
 * read and refused at startup: select.test.ts.
 */
import { describe, expect, test } from 'bun:test';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';
import * as tf from '@tensorflow/tfjs-core';
import { ptr } from 'bun:ffi';
import { FEED_FORWARD_KERNEL, feedForward, gelu } from '../../../model/layers.ts';
import { bfloat16Product, bfloat16Unavailable, packedWeights, parseMatmulPrecision, registerBfloat16FeedForward } from '../../../src/backend/bfloat16.ts';
import { openOneDnnPrimitives, type OneDnnPrimitives } from '../../../src/backend/onednn-primitives.ts';
import { availableBlas } from '../../../src/backend/blas.ts';
import { selectBackend } from '../../../src/backend/select.ts';
import { sines } from './helpers.ts';

await selectBackend();
const oneDnn = availableBlas().find((blas) => blas.name === 'oneDNN');
const opened = oneDnn ? openOneDnnPrimitives(oneDnn.library) : { reason: 'no oneDNN on this system' };
const primitives = 'gelu' in opened ? opened : undefined;
const unavailable = oneDnn ? bfloat16Unavailable(oneDnn, opened) : 'no oneDNN on this system';
if (unavailable) console.log(`bfloat16 products are not tested here: ${unavailable}`);

/** A float32's bits rounded to bfloat16's 16, to the nearest, ties to even: the rounding by its definition. */
function bfloat16Bits(value: number): number {
  const bits = new Uint32Array(new Float32Array([value]).buffer)[0]!;
  if (Number.isNaN(value)) return 0x7fc0;
  const [upper, lower] = [bits >>> 16, bits & 0xffff];
  const up = lower > 0x8000 || (lower === 0x8000 && (upper & 1) === 1);
  return (upper + (up ? 1 : 0)) & 0xffff;
}

/** The values rounded to bfloat16, as float32 again. */
function bfloat16Values(values: ArrayLike<number>): Float32Array {
  return new Float32Array(new Uint32Array(Array.from(values, (value) => bfloat16Bits(value) << 16)).buffer);
}

/** The largest difference from `expected` over its largest magnitude. */
function relativeError(actual: ArrayLike<number>, expected: number[]): number {
  const scale = Math.max(...expected.map(Math.abs));
  return Math.max(...expected.map((value, i) => Math.abs(value - actual[i]!))) / scale;
}

/**
 * The share of the rows (each `rowLength` values) in which some value is further than `tolerance` of
 * the largest magnitude from `expected`.
 */
function rowsOff(actual: ArrayLike<number>, expected: number[], rowLength: number, tolerance = 1e-5): number {
  const scale = Math.max(...expected.map(Math.abs));
  const rows = expected.length / rowLength;
  let off = 0;
  for (let row = 0; row < rows; row++) {
    for (let i = row * rowLength; i < (row + 1) * rowLength; i++) {
      if (Math.abs(expected[i]! - actual[i]!) > tolerance * scale) {
        off++;
        break;
      }
    }
  }
  return off / rows;
}

const infoOf = (t: tf.Tensor): tf.TensorInfo => ({ dataId: t.dataId, shape: t.shape, dtype: t.dtype });

/** The values rounded by oneDNN's reorder. */
function rounded(values: number[]): number[] {
  const [floats, bits] = [Float32Array.from(values), new Uint16Array(values.length)];
  primitives!.toBfloat16(ptr(floats), ptr(bits), values.length);
  return [...bits];
}

test('MAC_MATMUL_PRECISION is float32 unless it asks for bfloat16, and nothing else', () => {
  expect(parseMatmulPrecision(undefined)).toBe('float32');
  expect(parseMatmulPrecision(' BFloat16 ')).toBe('bfloat16');
  expect(() => parseMatmulPrecision('fp16')).toThrow("MAC_MATMUL_PRECISION must be one of float32, bfloat16; got 'fp16'");
});

test("bfloat16 needs oneDNN, its primitives and a CPU with bfloat16 instructions, and says which is missing", () => {
  const withFlags = (flags: string) => `processor\t: 0\nflags\t\t: fpu sse avx512f ${flags}\n`;
  const fakeOneDnn = { name: 'oneDNN' as const, library: 'libdnnl.so.2', sgemm: () => {}, setThreads: () => {} };
  // Only whether the primitives started matters here.
  const started = {} as OneDnnPrimitives;
  expect(bfloat16Unavailable({ reason: 'MAC_BLAS=off' }, started, withFlags('amx_bf16'))).toBe('it needs oneDNN, and no native BLAS runs (MAC_BLAS=off)');
  expect(bfloat16Unavailable({ ...fakeOneDnn, name: 'OpenBLAS', library: 'libopenblas.so.0' }, started, withFlags('amx_bf16')))
    .toBe('it needs oneDNN, and the products run on OpenBLAS (libopenblas.so.0)');
  expect(bfloat16Unavailable(fakeOneDnn, openOneDnnPrimitives('/nonexistent/libdnnl.so.3'), withFlags('amx_bf16')))
    .toStartWith("it needs oneDNN 2's matmul primitive: oneDNN 2's primitives cannot start from /nonexistent/libdnnl.so.3");
  expect(bfloat16Unavailable(fakeOneDnn, started, withFlags('avx512_vnni'))).toBe('this CPU has no bfloat16 instructions (amx_bf16 or avx512_bf16 in /proc/cpuinfo)');
  expect(bfloat16Unavailable(fakeOneDnn, started, withFlags('amx_bf16 amx_tile'))).toBeUndefined();
  expect(bfloat16Unavailable(fakeOneDnn, started, withFlags('avx512_bf16'))).toBeUndefined();
});

describe.if(primitives !== undefined)("rounding to bfloat16 by oneDNN's reorder", () => {
  test('rounds to the nearest, ties to even, eight at a time and in the tail', () => {
    const values = [
      1, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -8 + 2 ** -20, -2.5, 0, -0, 3.4028234663852886e38,
      Infinity, -Infinity, Math.PI, -Math.E, 65504, 1 / 3, 1.5e-38,
    ];
    const bits = rounded(values);
    expect(bits).toEqual(values.map(bfloat16Bits));
    // A tie goes to the even neighbour, either way; the largest float32 rounds up to infinity.
    expect(bits.slice(0, 4)).toEqual([0x3f80, 0x3f80, 0x3f82, 0x3f81]);
    expect(bits[7]).toBe(0x7f80);
  });

  test("takes float32's subnormals as zero, keeping their sign, as AMX's products take them", () => {
    expect(rounded([1e-40, -1e-40, 1.1e-38])).toEqual([0, 0x8000, 0]);
  });

  test('NaN stays NaN, the negative NaN whose rounding would carry out of its bits too', () => {
    const negativeNaN = new Float32Array(new Uint32Array([0xffffffff]).buffer)[0]!;
    expect(rounded([NaN, negativeNaN, ...Array(7).fill(negativeNaN)])).toEqual(Array(9).fill(0x7fc0));
  });

  test('a long array matches the rounding by its definition everywhere', () => {
    const values = Array.from({ length: 1003 }, (_, i) => Math.sin(i * 1.7) * 10 ** ((i % 13) - 6));
    expect(rounded(values)).toEqual(values.map(bfloat16Bits));
  });
});

describe.if(unavailable === undefined)('x W + b and x W with their product in bfloat16', () => {
  const backend = tf.backend() as BackendWasm;
  const product = unavailable === undefined ? bfloat16Product(primitives!, packedWeights(primitives!)) : undefined;

  /**
   * x W + b through the bfloat16 product, as the kernel runs it, into an output that holds NaN
   * before: x W without a bias; the bias a row for every row, or one a row.
   */
  function inBfloat16(x: tf.Tensor2D, weight: tf.Tensor2D, bias?: tf.Tensor1D | tf.Tensor2D): Float32Array {
    const out = tf.fill([x.shape[0], weight.shape[1]], NaN);
    product!(backend, infoOf(x), infoOf(weight), bias && infoOf(bias), infoOf(out));
    const values = out.dataSync() as Float32Array;
    out.dispose();
    return values;
  }

  /** x W + b, or x W, from the operands rounded to bfloat16, summed in float64. */
  function byDefinition(x: tf.Tensor2D, weight: tf.Tensor2D, bias?: tf.Tensor1D | tf.Tensor2D): number[] {
    const [xs, ws] = [bfloat16Values(x.dataSync()), bfloat16Values(weight.dataSync())];
    const bs = bias?.dataSync();
    const [[rows, inDim], outDim] = [x.shape, weight.shape[1]];
    return Array.from({ length: rows * outDim }, (_, i) => {
      const [row, col] = [Math.floor(i / outDim), i % outDim];
      let sum = bs?.[bias!.rank === 1 ? col : i] ?? 0;
      for (let k = 0; k < inDim; k++) sum += xs[row * inDim + k]! * ws[k * outDim + col]!;
      return sum;
    });
  }

  test.each([[5, 37, 19], [1, 384, 1152], [2, 64, 256], [197, 768, 64], [5, 3100, 37]])(
    'of %p x %p rows by %p columns is the product of the rounded operands, summed in float32, and not the float32 product',
    (rows, inDim, outDim) => {
      const before = tf.memory().numTensors;
      const [x, weight, bias] = [sines([rows, inDim], 2, 0.37), sines([inDim, outDim], 0.1, 0.71), sines([outDim], 1, 1.3)] as [tf.Tensor2D, tf.Tensor2D, tf.Tensor1D];
      for (const withBias of [bias, undefined]) {
        const values = inBfloat16(x, weight, withBias);
        expect(relativeError(values, byDefinition(x, weight, withBias))).toBeLessThan(1e-5);
        const float32 = tf.tidy(() => (withBias ? x.matMul(weight).add(withBias) : x.matMul(weight)).dataSync());
        expect(relativeError(values, [...float32])).toBeGreaterThan(1e-4);
        // These sines' products nearly cancel without the bias, so only x W + b is measured against
        // its size; over 3,100 terms rounding's errors add up to some 3%.
        if (withBias) expect(relativeError(values, [...float32])).toBeLessThan(5e-2);
      }
      tf.dispose([x, weight, bias]);
      expect(tf.memory().numTensors).toBe(before);
    },
  );

  test('a bias of one a row, the residual stream, adds to its own row', () => {
    const [x, weight, rowBias] = [sines([7, 48], 1, 0.2), sines([48, 24], 0.1, 0.6), sines([7, 24], 3, 0.9)] as tf.Tensor2D[];
    expect(relativeError(inBfloat16(x!, weight!, rowBias), byDefinition(x!, weight!, rowBias))).toBeLessThan(1e-5);
    tf.dispose([x!, weight!, rowBias!]);
  });

  test('one packed weight serves every count of rows, each product with its own primitive', () => {
    const weight = sines([96, 40], 0.1, 0.3) as tf.Tensor2D;
    for (const rows of [1, 300, 3, 256, 1]) {
      const x = sines([rows, 96], 1, 0.1 * rows) as tf.Tensor2D;
      expect(relativeError(inBfloat16(x, weight), byDefinition(x, weight))).toBeLessThan(1e-5);
      x.dispose();
    }
    weight.dispose();
  });

  test('packs a weight once per value: a new tensor, or a variable assigned anew, is multiplied with its own values', () => {
    const x = sines([3, 16], 1, 0.3) as tf.Tensor2D;
    const bias = tf.zeros([8]) as tf.Tensor1D;
    const weight = tf.variable(sines([16, 8], 1, 0.5)) as tf.Variable<tf.Rank.R2>;
    const first = inBfloat16(x, weight, bias);
    expect(inBfloat16(x, weight, bias)).toEqual(first);
    weight.assign(sines([16, 8], 1, 0.9) as tf.Tensor2D);
    const second = inBfloat16(x, weight, bias);
    expect(relativeError(second, byDefinition(x, weight, bias))).toBeLessThan(1e-5);
    expect(relativeError(second, [...first])).toBeGreaterThan(0.1);
    const other = sines([16, 8], 1, 1.7) as tf.Tensor2D;
    expect(relativeError(inBfloat16(x, other, bias), byDefinition(x, other, bias))).toBeLessThan(1e-5);
    tf.dispose([x, bias, weight, other]);
  });
});

describe.if(unavailable === undefined)('self-attention in bfloat16 on oneDNN', () => {
  /**
   * One image's attention by its definition in float64, from queries, keys and values rounded to
   * bfloat16, and the attention weights rounded to it before they mix the values.
   */
  function byDefinition(qkv: Float32Array, length: number, width: number, heads: number, round: boolean): number[] {
    const values = round ? bfloat16Values(qkv) : qkv;
    const headWidth = width / heads;
    const out = new Array<number>(length * width).fill(0);
    const at = (row: number, part: number, head: number, i: number) => values[row * 3 * width + part * width + head * headWidth + i]!;
    for (let head = 0; head < heads; head++) {
      for (let row = 0; row < length; row++) {
        const scores = Array.from({ length }, (_, key) => {
          let sum = 0;
          for (let i = 0; i < headWidth; i++) sum += at(row, 0, head, i) * at(key, 1, head, i);
          return sum / Math.sqrt(headWidth);
        });
        const top = Math.max(...scores);
        const total = scores.reduce((sum, score) => sum + Math.exp(score - top), 0);
        const exact = scores.map((score) => Math.exp(score - top) / total);
        const weights = round ? bfloat16Values(exact) : exact;
        for (let i = 0; i < headWidth; i++) {
          let sum = 0;
          for (let key = 0; key < length; key++) sum += weights[key]! * at(key, 2, head, i);
          out[row * width + head * headWidth + i] = sum;
        }
      }
    }
    return out;
  }

  test.each([[1, 5, 24, 2], [3, 67, 192, 4]])('of %p images of %p rows of width %p with %p heads is that of the rounded operands, and not the float32 one', (images, length, width, heads) => {
    const qkv = Float32Array.from({ length: images * length * 3 * width }, (_, i) => 2 * Math.sin(0.37 * i + 0.5));
    const out = new Float32Array(images * length * width);
    primitives!.selfAttention(ptr(qkv), images, length, width, heads, ptr(out), 'bfloat16');
    const scale = Math.max(...out.map(Math.abs));
    const expected = (round: boolean) => Array.from({ length: images }, (_, image) => byDefinition(qkv.subarray(image * length * 3 * width, (image + 1) * length * 3 * width), length, width, heads, round)).flat();
    const error = (round: boolean) => Math.max(...expected(round).map((value, i) => Math.abs(value - out[i]!))) / scale;
    // An attention weight whose softmax lies within float32's error of halfway between two bfloat16s
    // may round the other way, a unit of its last place: of the 804 rows of heads here, 2 on an AMD
    // EPYC's AVX-512 kernels, none on an Intel Xeon's AMX ones. Float32's weights are off in every row.
    expect(rowsOff(out, expected(true), width / heads)).toBeLessThan(0.05);
    expect(error(true)).toBeLessThan(2 ** -8);
    expect(rowsOff(out, expected(false), width / heads)).toBeGreaterThan(0.9);
  });
});

describe.if(unavailable === undefined)('a feed-forward in bfloat16 on oneDNN', () => {
  /** Runs `body` with the feed-forward's bfloat16 kernel registered, as a bfloat16 start registers it. */
  function withKernel<T>(body: () => T): T {
    registerBfloat16FeedForward(primitives!, packedWeights(primitives!));
    try {
      return body();
    } finally {
      tf.unregisterKernel(FEED_FORWARD_KERNEL, 'wasm');
    }
  }

  /** GELU(x W1 + b1) W2 + b2 by its definition in float64, GELU's tanh form; in bfloat16, x, the weights and the hidden rows rounded first. */
  function byDefinition(inputs: tf.Tensor2D[], biases: tf.Tensor1D[], round: boolean): number[] {
    const [x, up, down] = inputs.map((t) => (round ? bfloat16Values(t.dataSync()) : t.dataSync())) as Float32Array[];
    const [upBias, downBias] = biases.map((t) => t.dataSync());
    const [[rows, inDim], [hiddenDim, outDim]] = [inputs[0]!.shape, inputs[2]!.shape];
    const gelu = (v: number) => 0.5 * v * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (v + 0.044715 * v ** 3)));
    const hidden = Array.from({ length: rows * hiddenDim }, (_, i) => {
      const [row, col] = [Math.floor(i / hiddenDim), i % hiddenDim];
      let sum = upBias![col]!;
      for (let k = 0; k < inDim; k++) sum += x![row * inDim + k]! * up![k * hiddenDim + col]!;
      return gelu(sum);
    });
    const rounded = round ? bfloat16Values(hidden) : hidden;
    return Array.from({ length: rows * outDim }, (_, i) => {
      const [row, col] = [Math.floor(i / outDim), i % outDim];
      let sum = downBias![col]!;
      for (let k = 0; k < hiddenDim; k++) sum += rounded[row * hiddenDim + k]! * down![k * outDim + col]!;
      return sum;
    });
  }

  test.each([[5, 24, 96, 24], [197, 64, 256, 64], [1, 8, 3, 5], [3, 16, 3100, 8]])(
    'of %p rows, %p -> %p -> %p, is one kernel with the rounded operands\' values, and not float32\'s',
    async (rows, inDim, hiddenDim, outDim) => {
      const before = tf.memory().numTensors;
      const [x, up, down] = [sines([rows, inDim], 2, 0.37), sines([inDim, hiddenDim], 0.3, 0.71), sines([hiddenDim, outDim], 0.3, 0.53)] as tf.Tensor2D[];
      const [upBias, downBias] = [sines([hiddenDim], 0.5, 1.3), sines([outDim], 0.5, 0.9)] as tf.Tensor1D[];
      const { result, kernels } = await withKernel(() => tf.profile(() => feedForward(x!, up!, upBias!, down!, downBias!)));
      expect(kernels.map((kernel) => kernel.name)).toEqual([FEED_FORWARD_KERNEL]);
      const values = (result as tf.Tensor).dataSync();
      // A hidden value whose GELU lies within its float32 error of halfway between two bfloat16s may
      // round the other way: of 50,432 here, a few, 8e-5 off on an Intel Xeon's AMX kernels; 3 rows of
      // 197, 6e-4 off, on an AMD EPYC's AVX-512 ones. Float32's values are off in every row.
      const [rounded, float32] = [true, false].map((round) => byDefinition([x!, up!, down!], [upBias!, downBias!], round)) as [number[], number[]];
      expect(rowsOff(values, rounded, outDim)).toBeLessThan(0.05);
      expect(relativeError(values, rounded)).toBeLessThan(2e-3);
      expect(rowsOff(values, float32, outDim)).toBeGreaterThan(0.9);
      tf.dispose([x!, up!, down!, upBias!, downBias!, result as tf.Tensor]);
      expect(tf.memory().numTensors).toBe(before);
    },
  );

  test('of no width it is its biases through GELU and the second product, as its ops give', () => {
    const [x, up, upBias] = [tf.zeros([3, 0]), tf.zeros([0, 4]), tf.tensor1d([1, -2, 3, 0.5])];
    const [down, downBias] = [sines([4, 2], 1, 0.3), tf.tensor1d([0.25, -1])];
    const values = withKernel(() => feedForward(x, up, upBias, down, downBias).dataSync());
    const expected = tf.tidy(() => gelu(upBias).reshape([1, 4]).matMul(down).add(downBias).tile([3, 1]).dataSync());
    expect(relativeError(values, [...expected])).toBeLessThan(1e-2);
    tf.dispose([x, up, upBias, down, downBias]);
  });
});

describe.if(unavailable === undefined)("the bfloat16 products on oneDNN's own kernels", () => {
  test("x W + b with a bias row or one a row, x W and a feed-forward of a text model's and a ViT's rows run on AMX or AVX-512 kernels, none on oneDNN's reference code", async () => {
    // oneDNN names the implementation of each primitive it runs where DNNL_VERBOSE=1 (on stdout).
    const script = `
      import * as tf from ${JSON.stringify(Bun.resolveSync('@tensorflow/tfjs-core', import.meta.dir))};
      import * as layers from ${JSON.stringify(Bun.resolveSync('../../../model/layers.ts', import.meta.dir))};
      import { selectBackend } from ${JSON.stringify(Bun.resolveSync('../../../src/backend/select.ts', import.meta.dir))};
      await selectBackend();
      for (const rows of [1, 5, 72, 197]) {
        const [x, w, b, residual] = [tf.ones([rows, 64]), tf.ones([64, 32]), tf.ones([32]), tf.ones([rows, 32])];
        const [down, downBias] = [tf.ones([32, 64]), tf.ones([64])];
        tf.dispose([layers.affine(x, w, b), layers.affine(x, w, residual), layers.product(x, w), layers.feedForward(x, w, b, down, downBias)]);
        // A ViT-B/16 feed-forward's second product: 3,072 rows of weight.
        const [wide, wideWeight] = [tf.ones([rows, 3072]), tf.ones([3072, 32])];
        tf.dispose([layers.affine(wide, wideWeight, b)]);
      }`;
    const child = Bun.spawn([process.execPath, '-e', script], { env: { ...process.env, MAC_BACKEND: 'wasm', MAC_MATMUL_PRECISION: 'bfloat16', DNNL_VERBOSE: '1' }, stdout: 'pipe', stderr: 'pipe' });
    const [stdout, stderr] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text()]);
    expect(await child.exited).toBe(0);
    const matmuls = stdout.split('\n').filter((line) => line.startsWith('onednn_verbose,exec,cpu,matmul,'));
    // Six products a count of rows (x W + b's two kinds, x W's, the feed-forward's two, the wide one).
    expect(matmuls.length).toBeGreaterThanOrEqual(4 * 6);
    expect(matmuls.filter((line) => line.split(',')[4]!.startsWith('ref'))).toEqual([]);
    expect(stderr).not.toContain('error');
  });
});
