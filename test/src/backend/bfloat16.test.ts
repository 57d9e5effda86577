/**
 * Products in bfloat16 (src/backend/bfloat16.ts, MAC_MATMUL_PRECISION=bfloat16): the rounding of
 * float32 to bfloat16 (oneDNN's reorder, the SIMD module's loop), x W + b's product from the rounded
 * operands, and when a machine cannot run them. How the setting is read and refused at startup: select.test.ts.
 */
import { describe, expect, test } from 'bun:test';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';
import * as tf from '@tensorflow/tfjs-core';
import { ptr } from 'bun:ffi';
import { bfloat16Product, bfloat16Unavailable, parseMatmulPrecision, type Rounding } from '../../../src/backend/bfloat16.ts';
import { openOneDnnPrimitives } from '../../../src/backend/onednn-primitives.ts';
import { availableBlas } from '../../../src/backend/blas.ts';
import { selectBackend } from '../../../src/backend/select.ts';
import { loadSimdKernels } from '../../../src/backend/wasm-simd.ts';
import { sines } from './helpers.ts';

const info = await selectBackend();
const oneDnn = availableBlas().find((blas) => blas.name === 'oneDNN');
const simd = info.name === 'wasm' && info.simd ? await loadSimdKernels(tf.backend() as BackendWasm) : undefined;
const primitives = oneDnn ? openOneDnnPrimitives(oneDnn.library) : undefined;
// Each rounding this machine has, the one the backend prefers first (src/backend/select.ts), and
// whether it takes float32's subnormals as zero, as AVX512-BF16's conversion and AMX's products do.
const roundings: [string, Rounding, boolean][] = [];
if (primitives && 'toBfloat16' in primitives) roundings.push(["oneDNN's reorder", (values, out) => primitives.toBfloat16(ptr(values), ptr(out), values.length), true]);
if (simd) roundings.push(['the SIMD module', (values, out) => simd.toBfloat16(values.byteOffset, out.byteOffset, values.length), false]);
const unavailable = oneDnn ? bfloat16Unavailable(oneDnn, roundings[0]?.[1]) : 'no oneDNN on this system';
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

const infoOf = (t: tf.Tensor): tf.TensorInfo => ({ dataId: t.dataId, shape: t.shape, dtype: t.dtype });

/** The values rounded by `round`, from a tensor into a scratch tensor's bytes, as the product rounds them. */
function roundedBy(round: Rounding, values: number[]): number[] {
  const backend = tf.backend() as BackendWasm;
  const [x, scratch] = [tf.tensor1d(values), tf.zeros([Math.ceil(values.length / 2)])];
  try {
    const floats = backend.typedArrayFromHeap(infoOf(scratch)) as Float32Array;
    const bits = new Uint16Array(floats.buffer, floats.byteOffset, values.length);
    round(backend.typedArrayFromHeap(infoOf(x)) as Float32Array, bits);
    return [...bits];
  } finally {
    tf.dispose([x, scratch]);
  }
}

test('MAC_MATMUL_PRECISION is float32 unless it asks for bfloat16, and nothing else', () => {
  expect(parseMatmulPrecision(undefined)).toBe('float32');
  expect(parseMatmulPrecision(' BFloat16 ')).toBe('bfloat16');
  expect(() => parseMatmulPrecision('fp16')).toThrow("MAC_MATMUL_PRECISION must be one of float32, bfloat16; got 'fp16'");
});

test('bfloat16 needs oneDNN, a rounding and a CPU with bfloat16 instructions, and says which is missing', () => {
  const withFlags = (flags: string) => `processor\t: 0\nflags\t\t: fpu sse avx512f ${flags}\n`;
  const fakeOneDnn = { name: 'oneDNN' as const, library: 'libdnnl.so.2', sgemm: () => {}, gemmBfloat16: () => {}, setThreads: () => {} };
  const rounding: Rounding = () => {};
  expect(bfloat16Unavailable({ reason: 'MAC_BLAS=off' }, rounding, withFlags('amx_bf16'))).toBe('it needs oneDNN, and no native BLAS runs (MAC_BLAS=off)');
  expect(bfloat16Unavailable({ ...fakeOneDnn, name: 'OpenBLAS', library: 'libopenblas.so.0', gemmBfloat16: undefined }, rounding, withFlags('amx_bf16')))
    .toBe('it needs oneDNN, and the products run on OpenBLAS (libopenblas.so.0)');
  expect(bfloat16Unavailable(fakeOneDnn, undefined, withFlags('amx_bf16'))).toContain('it needs a rounding to bfloat16');
  expect(bfloat16Unavailable(fakeOneDnn, rounding, withFlags('avx512_vnni'))).toBe('this CPU has no bfloat16 instructions (amx_bf16 or avx512_bf16 in /proc/cpuinfo)');
  expect(bfloat16Unavailable(fakeOneDnn, rounding, withFlags('amx_bf16 amx_tile'))).toBeUndefined();
  expect(bfloat16Unavailable(fakeOneDnn, rounding, withFlags('avx512_bf16'))).toBeUndefined();
});

describe.each(roundings)('rounding to bfloat16 by %s', (_, round, flushesSubnormals) => {
  test('rounds to the nearest, ties to even, eight at a time and in the tail', () => {
    const values = [
      1, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -8 + 2 ** -20, -2.5, 0, -0, 3.4028234663852886e38,
      Infinity, -Infinity, Math.PI, -Math.E, 65504, 1 / 3, 1.5e-38,
    ];
    const bits = roundedBy(round, values);
    expect(bits).toEqual(values.map(bfloat16Bits));
    // A tie goes to the even neighbour, either way; the largest float32 rounds up to infinity.
    expect(bits.slice(0, 4)).toEqual([0x3f80, 0x3f80, 0x3f82, 0x3f81]);
    expect(bits[7]).toBe(0x7f80);
  });

  test(`takes float32's subnormals ${flushesSubnormals ? 'as zero, keeping their sign' : 'as they are'}`, () => {
    const subnormals = [1e-40, -1e-40, 1.1e-38];
    const expected = flushesSubnormals ? [0, 0x8000, 0] : subnormals.map(bfloat16Bits);
    expect(roundedBy(round, subnormals)).toEqual(expected);
  });

  test('NaN stays NaN, the negative NaN whose rounding would carry out of its bits too', () => {
    const negativeNaN = new Float32Array(new Uint32Array([0xffffffff]).buffer)[0]!;
    expect(roundedBy(round, [NaN, negativeNaN, ...Array(7).fill(negativeNaN)])).toEqual(Array(9).fill(0x7fc0));
  });

  test('a long array matches the rounding by its definition everywhere', () => {
    const values = Array.from({ length: 1003 }, (_, i) => Math.sin(i * 1.7) * 10 ** ((i % 13) - 6));
    expect(roundedBy(round, values)).toEqual(values.map(bfloat16Bits));
  });
});

describe.if(unavailable === undefined)('x W + b with its product in bfloat16', () => {
  const backend = tf.backend() as BackendWasm;
  const product = unavailable === undefined ? bfloat16Product(oneDnn!, roundings[0]![1]) : undefined;

  /** x W + b through the bfloat16 product, as the kernel runs it: the output starts as the bias. */
  function affineInBfloat16(x: tf.Tensor2D, weight: tf.Tensor2D, bias: tf.Tensor1D): Float32Array {
    const out = tf.tidy(() => tf.add(tf.zeros([x.shape[0], weight.shape[1]]), bias));
    product!(backend, infoOf(x), infoOf(weight), infoOf(out), true);
    const values = out.dataSync() as Float32Array;
    out.dispose();
    return values;
  }

  /** x W + b from the operands rounded to bfloat16, summed in float64. */
  function byDefinition(x: tf.Tensor2D, weight: tf.Tensor2D, bias: tf.Tensor1D): number[] {
    const [xs, ws, bs] = [bfloat16Values(x.dataSync()), bfloat16Values(weight.dataSync()), bias.dataSync()];
    const [[rows, inDim], outDim] = [x.shape, weight.shape[1]];
    return Array.from({ length: rows * outDim }, (_, i) => {
      const [row, col] = [Math.floor(i / outDim), i % outDim];
      let sum = bs[col]!;
      for (let k = 0; k < inDim; k++) sum += xs[row * inDim + k]! * ws[k * outDim + col]!;
      return sum;
    });
  }

  function relativeError(actual: ArrayLike<number>, expected: number[]): number {
    const scale = Math.max(...expected.map(Math.abs));
    return Math.max(...expected.map((value, i) => Math.abs(value - actual[i]!))) / scale;
  }

  test('is the product of the rounded operands, summed in float32, and not the float32 product', () => {
    const before = tf.memory().numTensors;
    for (const [rows, inDim, outDim] of [[5, 37, 19], [1, 384, 1152], [197, 768, 64]] as const) {
      const [x, weight, bias] = [sines([rows, inDim], 2, 0.37), sines([inDim, outDim], 0.1, 0.71), sines([outDim], 1, 1.3)] as [tf.Tensor2D, tf.Tensor2D, tf.Tensor1D];
      const values = affineInBfloat16(x, weight, bias);
      expect(relativeError(values, byDefinition(x, weight, bias))).toBeLessThan(1e-5);
      const float32 = tf.tidy(() => x.matMul(weight).add(bias).dataSync());
      expect(relativeError(values, [...float32])).toBeGreaterThan(1e-4);
      expect(relativeError(values, [...float32])).toBeLessThan(2e-2);
      tf.dispose([x, weight, bias]);
    }
    expect(tf.memory().numTensors).toBe(before);
  });

  test('rounds a weight once per value: a new tensor, or a variable assigned anew, is multiplied with its own values', () => {
    const x = sines([3, 16], 1, 0.3) as tf.Tensor2D;
    const bias = tf.zeros([8]) as tf.Tensor1D;
    const weight = tf.variable(sines([16, 8], 1, 0.5)) as tf.Variable<tf.Rank.R2>;
    const first = affineInBfloat16(x, weight, bias);
    expect(affineInBfloat16(x, weight, bias)).toEqual(first);
    weight.assign(sines([16, 8], 1, 0.9) as tf.Tensor2D);
    const second = affineInBfloat16(x, weight, bias);
    expect(relativeError(second, byDefinition(x, weight, bias))).toBeLessThan(1e-5);
    expect(relativeError(second, [...first])).toBeGreaterThan(0.1);
    const other = sines([16, 8], 1, 1.7) as tf.Tensor2D;
    expect(relativeError(affineInBfloat16(x, other, bias), byDefinition(x, other, bias))).toBeLessThan(1e-5);
    tf.dispose([x, bias, weight, other]);
  });
});
