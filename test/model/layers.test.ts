import { describe, expect, test } from 'bun:test';
import * as tf from '@tensorflow/tfjs-core';
import {
  CAUSAL_CONV_KERNEL, Conv2d, FEED_FORWARD_KERNEL, GELU_DERIVATIVE_KERNEL, GELU_SECOND_DERIVATIVE_KERNEL, L2_NORM_KERNEL, LAYER_NORM_KERNEL, NORMALIZED_AFFINE_GELU_KERNEL,
  NORMALIZED_PRODUCT_KERNEL, RMS_NORM_KERNEL, broadcast, gelu, geluDerivative, causalConvolution, geluSecondDerivative, l2Normalize, layerNorm,
  feedForward, normalizedAffineGelu, normalizedProduct, rmsNorm,
} from '../../model/layers.ts';
import { Random } from '../../model/random.ts';
import { maxAbsDifference } from './helpers.ts';

/**
 * The convolution written as the sum that defines it, with zero padding of one pixel before and
 * whatever after: out[b, y, x, o] = bias[o] + sum over i, j, c of x[b, s*y + i - 1, s*x + j - 1, c] * w[i, j, c, o].
 */
function directConvolution(x: number[][][][], w: number[][][][], bias: number[], stride: number): number[][][][] {
  const [height, width] = [x[0]!.length, x[0]![0]!.length];
  const at = (b: number, y: number, xx: number, c: number) => (y < 0 || xx < 0 || y >= height || xx >= width ? 0 : x[b]![y]![xx]![c]!);
  return x.map((_, b) => Array.from({ length: Math.ceil(height / stride) }, (_, y) => Array.from({ length: Math.ceil(width / stride) }, (_, xx) =>
    bias.map((bo, o) => {
      let sum = bo;
      for (let i = 0; i < 3; i++) for (let j = 0; j < 3; j++) for (let c = 0; c < w[0]![0]!.length; c++) sum += at(b, stride * y + i - 1, stride * xx + j - 1, c) * w[i]![j]![c]![o]!;
      return sum;
    }))));
}

describe('Conv2d', () => {
  for (const stride of [1, 2]) {
    test(`stride ${stride}: the output and the gradients of input, filter and bias match the direct sum`, () => {
      const conv = new Conv2d(new Random(3), 3, 4, stride);
      const x = tf.randomNormal([2, 7, 6, 3], 0, 1, 'float32', 1) as tf.Tensor4D;
      // A loss whose gradient with respect to the output is a fixed random tensor r.
      const r = tf.randomNormal([2, Math.ceil(7 / stride), Math.ceil(6 / stride), 4], 0, 1, 'float32', 2);
      const lossOf = (out: tf.Tensor) => out.mul(r).sum() as tf.Scalar;

      const out = conv.forward(x);
      const expected = directConvolution(x.arraySync(), conv.weight.arraySync() as number[][][][], conv.bias.arraySync() as number[], stride);
      expect(out.shape).toEqual([2, Math.ceil(7 / stride), Math.ceil(6 / stride), 4]);
      expect(tf.tidy(() => out.sub(tf.tensor(expected)).abs().max().dataSync()[0]!)).toBeLessThan(1e-4);

      // The loss is linear in input and filter, so a central difference is exact up to rounding.
      const { grads } = tf.variableGrads(() => lossOf(conv.forward(x)), [conv.weight, conv.bias]);
      const dx = tf.grad((input: tf.Tensor) => lossOf(conv.forward(input as tf.Tensor4D)))(x);
      const h = 1e-2;
      const numeric = (tensor: tf.Tensor, index: number, evaluate: (t: tf.Tensor) => number) => {
        const values = tensor.dataSync().slice();
        const at = (delta: number) => {
          values[index] = tensor.dataSync()[index]! + delta;
          const shifted = tf.tensor(values, tensor.shape);
          const loss = evaluate(shifted);
          shifted.dispose();
          return loss;
        };
        return (at(h) - at(-h)) / (2 * h);
      };
      for (const index of [0, 17, 41, 70]) {
        const viaInput = numeric(x, index, (t) => tf.tidy(() => lossOf(conv.forward(t as tf.Tensor4D)).dataSync()[0]!));
        expect(dx.dataSync()[index]!).toBeCloseTo(viaInput, 1);
      }
      const weight = conv.weight.clone();
      for (const index of [0, 13, 50, 107]) {
        const viaWeight = numeric(weight, index, (t) => { conv.weight.assign(t); return tf.tidy(() => lossOf(conv.forward(x)).dataSync()[0]!); });
        expect(grads[conv.weight.name]!.dataSync()[index]!).toBeCloseTo(viaWeight, 1);
      }
      conv.weight.assign(weight);
      // d loss / d bias[o] is the sum of r over everything but o.
      const rSums = tf.tidy(() => r.sum([0, 1, 2]).dataSync());
      grads[conv.bias.name]!.dataSync().forEach((g, o) => expect(g).toBeCloseTo(rSums[o]!, 3));
      tf.dispose([x, r, out, dx, weight, ...Object.values(grads)]);
      conv.dispose();
    });
  }
});

describe('broadcast', () => {
  test('has the value and gradient of tf.broadcastTo', () => {
    const x = tf.tensor3d([1, 2, 3, 4, 5, 6], [1, 2, 3]);
    const shape = [4, 2, 3];
    const weights = tf.randomNormal(shape, 0, 1, 'float32', 3);
    const weighted = (f: (t: tf.Tensor) => tf.Tensor) => tf.grad((t: tf.Tensor) => f(t).mul(weights).sum())(x);
    const [ours, theirs] = [weighted((t) => broadcast(t, shape)), weighted((t) => tf.broadcastTo(t, shape))];
    const [value, expected] = [broadcast(x, shape), tf.broadcastTo(x, shape)];
    expect(maxAbsDifference(value, expected)).toBe(0);
    expect(maxAbsDifference(ours, theirs)).toBeLessThan(1e-5);
    expect(tf.tidy(() => ours.abs().max().dataSync()[0]!)).toBeGreaterThan(0.1);
    tf.dispose([x, weights, ours, theirs, value, expected]);
  });

  test('its gradient launches the same kernels for any number of copies, where tf.broadcastTo\'s launches two per copy', async () => {
    const x = tf.ones([1, 2, 3]);
    const kernels = async (op: (t: tf.Tensor, shape: number[]) => tf.Tensor, copies: number) => {
      const profile = await tf.profile(() => tf.dispose(tf.grad((t: tf.Tensor) => op(t, [copies, 2, 3]).sum())(x)));
      return profile.kernels.length;
    };
    expect(await kernels(broadcast, 64)).toBe(await kernels(broadcast, 2));
    expect(await kernels(tf.broadcastTo, 64) - await kernels(tf.broadcastTo, 2)).toBe(2 * 62);
    x.dispose();
  });
});

describe("GELU's derivatives", () => {
  const x = tf.linspace(-6, 6, 241);

  test('each is the gradient of the one before, as autodiff takes it through the ops written out', () => {
    expect(maxAbsDifference(tf.grad(gelu)(x), geluDerivative(x))).toBeLessThan(1e-5);
    expect(maxAbsDifference(tf.grad(geluDerivative)(x), geluSecondDerivative(x))).toBeLessThan(1e-5);
  });

  // A backend's one-launch kernels (webgpu) differentiate by these registered gradients.
  test('the gradients registered for the derivatives\' kernels are the next derivatives', () => {
    const dy = tf.linspace(0.5, 1.5, 241);
    const registered = (kernelName: string) => tf.getGradient(kernelName)!.gradFunc(dy, [x], {}) as { x: () => tf.Tensor };
    expect(maxAbsDifference(registered(GELU_DERIVATIVE_KERNEL).x(), dy.mul(tf.grad(geluDerivative)(x)))).toBeLessThan(1e-5);
    expect(maxAbsDifference(registered(GELU_SECOND_DERIVATIVE_KERNEL).x(), dy.mul(tf.grad(geluSecondDerivative)(x)))).toBeLessThan(1e-5);
  });
});

// A backend's one-launch kernels (webgpu) differentiate by these registered gradients; here they
// run written out, against autodiff of the norms written out.
test('the gradients registered for the LayerNorm, RMSNorm and L2 normalisation kernels are autodiff\'s of the ops', () => {
  const x = tf.randomNormal([5, 12], 0, 2, 'float32', 3);
  const gain = tf.randomNormal([12], 1, 0.1, 'float32', 4);
  const dy = tf.randomNormal([5, 12], 0, 1, 'float32', 5);
  const weighted = (y: tf.Tensor) => y.mul(dy).sum();
  const rms = tf.getGradient(RMS_NORM_KERNEL)!.gradFunc(dy, [x, gain], { eps: 1e-6 }) as { x: () => tf.Tensor; gain: () => tf.Tensor };
  const [dx, dGain] = tf.grads((a: tf.Tensor, g: tf.Tensor) => weighted(rmsNorm(a, g, 1e-6)))([x, gain]);
  expect(maxAbsDifference(rms.x(), dx!)).toBeLessThan(1e-5);
  expect(maxAbsDifference(rms.gain(), dGain!)).toBeLessThan(1e-5);
  const bias = tf.randomNormal([12], 0, 0.1, 'float32', 6);
  const layer = tf.getGradient(LAYER_NORM_KERNEL)!.gradFunc(dy, [x, gain], { eps: 1e-5 }) as { x: () => tf.Tensor; gain: () => tf.Tensor; bias: () => tf.Tensor };
  const layerGrads = tf.grads((a: tf.Tensor, g: tf.Tensor, b: tf.Tensor) => weighted(layerNorm(a, g, b, 1e-5)))([x, gain, bias]);
  [layer.x(), layer.gain(), layer.bias()].forEach((grad, i) => expect(maxAbsDifference(grad, layerGrads[i]!)).toBeLessThan(1e-5));
  const l2 = tf.getGradient(L2_NORM_KERNEL)!.gradFunc(dy, [x], { eps: 1e-6 }) as { x: () => tf.Tensor };
  expect(maxAbsDifference(l2.x(), tf.grad((a: tf.Tensor) => weighted(l2Normalize(a, 1e-6)))(x))).toBeLessThan(1e-5);
});

test('the gradient registered for the causal convolution kernel is autodiff\'s of the ops', () => {
  const x = tf.randomNormal([2, 3 + 5, 6], 0, 1, 'float32', 7);
  const weight = tf.randomNormal([4, 6], 0, 1, 'float32', 8);
  const dy = tf.randomNormal([2, 5, 6], 0, 1, 'float32', 9);
  const registered = tf.getGradient(CAUSAL_CONV_KERNEL)!.gradFunc(dy, [x, weight], {}) as { x: () => tf.Tensor; weight: () => tf.Tensor };
  const [dx, dWeight] = tf.grads((a: tf.Tensor, w: tf.Tensor) => causalConvolution(a, w).mul(dy).sum())([x, weight]);
  expect(maxAbsDifference(registered.x(), dx!)).toBeLessThan(1e-5);
  expect(maxAbsDifference(registered.weight(), dWeight!)).toBeLessThan(1e-5);
});

test("the gradient registered for a feed-forward is autodiff's of its ops, for the input and all four parameters", () => {
  const x = tf.randomNormal([5, 6], 0, 2, 'float32', 15);
  const [upWeight, upBias] = [tf.randomNormal([6, 9], 0, 0.4, 'float32', 16), tf.randomNormal([9], 0, 0.1, 'float32', 17)];
  const [downWeight, downBias] = [tf.randomNormal([9, 4], 0, 0.4, 'float32', 18), tf.randomNormal([4], 0, 0.1, 'float32', 19)];
  const dy = tf.randomNormal([5, 4], 0, 1, 'float32', 20);
  const inputs = [x, upWeight, upBias, downWeight, downBias];
  const registered = tf.getGradient(FEED_FORWARD_KERNEL)!.gradFunc(dy, inputs.slice(0, 4), {}) as Record<string, () => tf.Tensor>;
  const grads = tf.grads((a: tf.Tensor, w1: tf.Tensor, b1: tf.Tensor, w2: tf.Tensor, b2: tf.Tensor) => feedForward(a, w1, b1, w2, b2).mul(dy).sum())(inputs);
  ['x', 'upWeight', 'upBias', 'downWeight', 'downBias'].forEach((name, i) => expect(maxAbsDifference(registered[name]!(), grads[i]!)).toBeLessThan(1e-5));
});

test("the gradients registered for a pre-norm and its product (with the bias and GELU, and without) are autodiff's of the ops", () => {
  const x = tf.randomNormal([5, 12], 0, 2, 'float32', 10);
  const gain = tf.randomNormal([12], 1, 0.1, 'float32', 11);
  const weight = tf.randomNormal([12, 7], 0, 0.3, 'float32', 12);
  const bias = tf.randomNormal([7], 0, 0.1, 'float32', 13);
  const dy = tf.randomNormal([5, 7], 0, 1, 'float32', 14);
  type Thunks = Record<string, () => tf.Tensor>;
  const withGelu = tf.getGradient(NORMALIZED_AFFINE_GELU_KERNEL)!.gradFunc(dy, [x, gain, weight, bias], { eps: 1e-6 }) as Thunks;
  const geluGrads = tf.grads((a: tf.Tensor, g: tf.Tensor, w: tf.Tensor, b: tf.Tensor) => normalizedAffineGelu(a, g, 1e-6, w, b).mul(dy).sum())([x, gain, weight, bias]);
  ['x', 'gain', 'weight', 'bias'].forEach((name, i) => expect(maxAbsDifference(withGelu[name]!(), geluGrads[i]!)).toBeLessThan(1e-5));
  const plain = tf.getGradient(NORMALIZED_PRODUCT_KERNEL)!.gradFunc(dy, [x, gain, weight], { eps: 1e-6 }) as Thunks;
  const plainGrads = tf.grads((a: tf.Tensor, g: tf.Tensor, w: tf.Tensor) => normalizedProduct(a, g, 1e-6, w).mul(dy).sum())([x, gain, weight]);
  ['x', 'gain', 'weight'].forEach((name, i) => expect(maxAbsDifference(plain[name]!(), plainGrads[i]!)).toBeLessThan(1e-5));
});
