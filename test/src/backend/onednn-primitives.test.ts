/**
 * oneDNN's primitives (src/backend/onednn-primitives.ts), where the system has oneDNN 2: GELU, the
 * tanh form's values at every length, in place too, past the cache of primitives; GELU's
 * derivative; the suite's kernels of both where oneDNN runs the products (oneDNN's from 16,384
 * floats, the SIMD module's below). (The products in bfloat16, and self-attention in it:
 * bfloat16.test.ts; self-attention in float32: wasm-attention.test.ts.)
 */
import { describe, expect, test } from 'bun:test';
import { ptr } from 'bun:ffi';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';
import * as tf from '@tensorflow/tfjs-core';
import { gelu, geluDerivative } from '../../../model/layers.ts';
import { availableBlas } from '../../../src/backend/blas.ts';
import { openOneDnnPrimitives, type OneDnnPrimitives } from '../../../src/backend/onednn-primitives.ts';
import { selectBackend } from '../../../src/backend/select.ts';
import { loadSimdKernels } from '../../../src/backend/wasm-simd.ts';

const info = await selectBackend();
const oneDnn = availableBlas().find((blas) => blas.name === 'oneDNN');
const opened = oneDnn ? openOneDnnPrimitives(oneDnn.library) : { reason: 'no oneDNN on this system' };
const native = 'gelu' in opened ? opened : undefined;
if ('reason' in opened) console.log(`oneDNN's primitives are not tested here: ${opened.reason}`);

const [C, CUBIC] = [Math.sqrt(2 / Math.PI), 0.044715];

/** GELU's tanh form in float64, as model/layers.ts defines it. */
function exactly(x: number): number {
  return 0.5 * x * (1 + Math.tanh(C * (x + CUBIC * x ** 3)));
}

/** Its derivative in float64: 0.5 (1 + t) + 0.5 x (1 - t^2) u', t = tanh u. */
function derivative(x: number): number {
  const t = Math.tanh(C * (x + CUBIC * x ** 3));
  return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * C * (1 + 3 * CUBIC * x * x);
}

/** The values at which a function's outputs are more than 1e-6 off `formula` (relative above 1). */
function far(values: Float32Array, outputs: Float32Array, formula = exactly): { x: number; value: number }[] {
  return [...outputs].flatMap((value, i) => {
    const expected = formula(values[i]!);
    return Math.abs(value - expected) < 1e-6 * Math.max(1, Math.abs(expected)) ? [] : [{ x: values[i]!, value }];
  });
}

const ramp = (length: number, scale: number) => Float32Array.from({ length }, (_, i) => scale * Math.sin(0.37 * i + 0.5));

test('a library without oneDNN 2\'s primitives is named with the reason', () => {
  expect(openOneDnnPrimitives('/nonexistent/libdnnl.so.2')).toEqual({ reason: expect.stringContaining("oneDNN 2's primitives cannot start from /nonexistent/libdnnl.so.2") });
});

describe.if(native !== undefined)('GELU on oneDNN', () => {
  const run = (values: Float32Array, primitives: OneDnnPrimitives, inPlace = false) => {
    const out = inPlace ? values.slice() : new Float32Array(values.length);
    primitives.gelu(ptr(inPlace ? out : values), ptr(out), values.length);
    return out;
  };

  test.each([
    ['a ViT layer', ramp(197 * 3072, 4)],
    ['seven values', ramp(7, 3)],
    ['one value', Float32Array.of(0.3)],
    ['the tails and zero', Float32Array.of(-30, -8, -4.5, -3.9, 0, 3.9, 4.5, 8, 30, 1e-20, -1e-20)],
  ])('gives the tanh form\'s values at %s (difference < 1e-6, relative above 1), in place too', (_, values) => {
    expect(far(values, run(values, native!))).toEqual([]);
    expect(far(values, run(values, native!, true))).toEqual([]);
  });

  test('keeps a NaN a NaN', () => {
    const out = run(Float32Array.of(Number.NaN, 1, Number.NaN), native!);
    expect([...out].map(Number.isNaN)).toEqual([true, false, true]);
  });

  test('stays right past the primitives it keeps (512), reusing and replacing them', () => {
    const lengths = [...Array.from({ length: 520 }, (_, i) => 100 + i), 100, 619, 105];
    const wrong = lengths.flatMap((length) => (far(ramp(length, 2), run(ramp(length, 2), native!)).length > 0 ? [length] : []));
    expect(wrong).toEqual([]);
  });

});

describe.if(native !== undefined)("GELU's derivative on oneDNN", () => {
  const run = (values: Float32Array) => {
    const out = new Float32Array(values.length);
    native!.geluDerivative(ptr(values), ptr(out), values.length);
    return out;
  };

  test.each([
    ['a ViT layer', ramp(197 * 3072, 4)],
    ['seven values', ramp(7, 3)],
    ['the tails and zero', Float32Array.of(-30, -8, -4.5, -3.9, 0, 3.9, 4.5, 8, 30, 1e-20, -1e-20)],
  ])("gives the tanh form's derivative at %s (difference < 1e-6, relative above 1)", (_, values) => {
    expect(far(values, run(values), derivative)).toEqual([]);
  });

  test('a shorter call after a longer one reads only its own values', () => {
    run(ramp(5000, 2));
    expect(far(ramp(3, 2), run(ramp(3, 2)), derivative)).toEqual([]);
  });

});

describe.if(native !== undefined && info.blas === oneDnn?.library && info.simd)("the suite backend's GELU kernels, where oneDNN runs the products", () => {
  const backend = tf.backend() as BackendWasm;
  /** The SIMD module's `name` over the values, from and into the heap. */
  async function bySimdModule(name: 'gelu' | 'geluDerivative', values: Float32Array): Promise<Float32Array> {
    const simd = await loadSimdKernels(backend);
    return tf.tidy(() => {
      const [input, output] = [tf.tensor(values), tf.zeros([values.length])];
      const at = (t: tf.Tensor) => backend.typedArrayFromHeap({ dataId: t.dataId, shape: t.shape, dtype: 'float32' }) as Float32Array;
      simd[name](at(input).byteOffset, at(output).byteOffset, values.length);
      return at(output).slice();
    });
  }

  test.each([
    ['GELU', gelu, 'gelu'],
    ["GELU's derivative", geluDerivative, 'geluDerivative'],
  ] as const)("%s runs on oneDNN from 16,384 floats and in the SIMD module below, leaving no tensor behind", async (_, op, name) => {
    for (const [length, onOneDnn] of [[16384, true], [16383, false], [1000, false]] as const) {
      const values = ramp(length, 4);
      const before = tf.memory().numTensors;
      const x = tf.tensor(values);
      const y = op(x);
      const kernelValues = (await y.data()) as Float32Array;
      tf.dispose([x, y]);
      expect(tf.memory().numTensors).toBe(before);
      const out = new Float32Array(length);
      native![name](ptr(values), ptr(out), length);
      const simdValues = await bySimdModule(name, values);
      // The two differ in their last bits, so each length shows which one ran.
      expect(simdValues).not.toEqual(out);
      expect(kernelValues).toEqual(onOneDnn ? out : simdValues);
    }
  });
});
