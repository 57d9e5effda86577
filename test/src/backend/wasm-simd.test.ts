/**
 * GELU and its derivatives on WASM (src/backend/wasm-simd.ts): one kernel each, and their values
 * are the formulas' in float64 to float32's precision. (The ops written out, which other backends
 * run, are less precise where 1 - sigmoid(2u) is small: their gelu'' near |x| = 4 is 1e-3 off.)
 */
import { describe, expect, test } from 'bun:test';
import * as tf from '@tensorflow/tfjs-core';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';
import { loadSimdKernels } from '../../../src/backend/wasm-simd.ts';
import { GELU_DERIVATIVE_KERNEL, GELU_KERNEL, GELU_SECOND_DERIVATIVE_KERNEL, gelu, geluDerivative, geluSecondDerivative } from '../../../model/layers.ts';

const suiteBackend = tf.getBackend();
const simd = suiteBackend === 'wasm' && (await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT')) === true;

/** GELU, gelu' and gelu'' in float64, as model/layers.ts defines them. */
function exactly(x: number): number[] {
  const [c, k] = [Math.sqrt(2 / Math.PI), 0.044715];
  const t = Math.tanh(c * (x + k * x ** 3));
  const [du, ddu] = [c * (1 + 3 * k * x * x), 6 * c * k * x];
  const derivative = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du;
  return [0.5 * x * (1 + t), derivative, (1 - t * t) * (du + 0.5 * x * (ddu - 2 * t * du * du))];
}

/** GELU, its derivatives, and GELU's gradient through a weighted sum, at `values`, as numbers. */
async function gelus(values: number[]): Promise<Float32Array[]> {
  const x = tf.tensor(values);
  const weights = tf.tensor(values.map((_, i) => Math.cos(i)));
  const outputs = [gelu(x), geluDerivative(x), geluSecondDerivative(x), tf.grad((a: tf.Tensor) => gelu(a).mul(weights).sum())(x)];
  const read = await Promise.all(outputs.map(async (t) => (await t.data()) as Float32Array));
  tf.dispose([x, weights, ...outputs]);
  return read;
}

describe.if(simd)('GELU on WASM', () => {
  test('and its two derivatives are one kernel each', async () => {
    const { kernels } = await tf.profile(() => tf.tidy(() => {
      const x = tf.ones([3, 5]);
      return [gelu(x), geluDerivative(x), geluSecondDerivative(x)];
    }));
    expect(kernels.map((kernel) => kernel.name)).toEqual([GELU_KERNEL, GELU_DERIVATIVE_KERNEL, GELU_SECOND_DERIVATIVE_KERNEL]);
  });

  // Lengths that fill the four lanes and that leave one to three over; values past tanh's
  // saturation (|u| > 7.9 from |x| > 3.8), zero, and a NaN, which stays one.
  const ramp = (length: number, scale: number) => Array.from({ length }, (_, i) => scale * Math.sin(0.37 * i + 0.5));
  test.each([
    ['a ViT row', ramp(3072, 4)],
    ['seven values', ramp(7, 3)],
    ['one value', [0.3]],
    ['the tails and zero', [-30, -8, -4.5, -3.9, 0, 3.9, 4.5, 8, 30, 1e-20, -1e-20]],
    // Where exp(-2|u|) is below float32's range, and where x^2 and x^4 overflow it: 1, 0 and 0.
    ['the far tails', [1e8, -1e8, 1e10, -1e10, 1e12, -1e13, 1e15, -1e15, 1e18, -1e18, 1e20, -1e20]],
  ])('gives the values of the formulas at %s (difference < 1e-6, relative above 1)', async (_, values) => {
    const before = tf.memory().numTensors;
    const wasm = await gelus(values);
    expect(tf.memory().numTensors).toBe(before);
    const far = wasm.flatMap((outputs, k) => [...outputs].flatMap((value, i) => {
      const x = Math.fround(values[i]!);
      // The fourth output is the gradient of sum(gelu(x) cos(i)): gelu'(x) cos(i).
      const expected = k < 3 ? exactly(x)[k]! : exactly(x)[1]! * Math.fround(Math.cos(i));
      return Math.abs(value - expected) < 1e-6 * Math.max(1, Math.abs(expected)) ? [] : [{ output: k, x, value, expected }];
    }));
    expect(far).toEqual([]);
  });

  test('keeps a NaN a NaN', async () => {
    const values = await gelus([Number.NaN, 1, Number.NaN, 2, 3]);
    expect(values.map((outputs) => [Number.isNaN(outputs[0]!), Number.isNaN(outputs[2]!)])).toEqual(values.map(() => [true, true]));
  });
});

describe.if(suiteBackend === 'wasm')('The SIMD module', () => {
  test("will not start on a backend whose heap it cannot find, and says so (the backend then writes the ops out)", async () => {
    await expect(loadSimdKernels({ wasm: {} } as unknown as BackendWasm)).rejects.toThrow('the WASM backend exposes no WebAssembly.Memory');
  });
});
