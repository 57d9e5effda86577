import { describe, expect, test } from 'bun:test';
import * as tf from '@tensorflow/tfjs-core';
import { resolveConfig, ConfigError } from '../../model/config.ts';
import { Random } from '../../model/random.ts';
import { StridedConv, VisionTransformerEncoder } from '../../model/vit.ts';

describe('the convolutional stem', () => {
  test('a StridedConv is a 3x3, stride 2, padding 1 convolution followed by GELU', () => {
    const conv = new StridedConv(new Random(1), 3, 5);
    const x = tf.randomNormal([2, 8, 6, 3], 0, 1, 'float32', 4) as tf.Tensor4D;
    const ours = conv.forward(x);
    const filter = conv.kernel.weight.reshape([3, 3, 3, 5]) as tf.Tensor4D;
    const linear = tf.conv2d(x, filter, 2, [[0, 0], [1, 1], [1, 1], [0, 0]]).add(conv.kernel.bias!);
    const reference = linear.mul(tf.scalar(0.5)).mul(linear.mul(tf.scalar(Math.sqrt(2 / Math.PI))).mul(linear.square().mul(0.044715).add(1)).tanh().add(1));
    expect(ours.shape).toEqual([2, 4, 3, 5]);
    expect(tf.max(tf.abs(ours.sub(reference))).dataSync()[0]).toBeLessThan(1e-5);
    tf.dispose([x, ours, filter, linear, reference]);
  });

  test('gives the patch grid of tokens and trains: every stem weight gets a gradient', () => {
    const config = resolveConfig({ imageSize: 32, patchSize: 8, visionDim: 32, visionDepth: 1, visionHeads: 2, visionMlpDim: 64, visionStem: 'conv' });
    const encoder = new VisionTransformerEncoder(new Random(2), config);
    const images = tf.randomUniform([2, 3, 32, 32], -1, 1, 'float32', 5) as tf.Tensor4D;
    tf.dispose(tf.variableGrads(() => encoder.encode(images).sum() as tf.Scalar)); // first-use constants
    const before = tf.memory().numTensors;
    const patches = encoder.encode(images, { patches: true });
    expect(patches.shape).toEqual([2, 16, 32]);
    const stem = encoder.namedParameters().filter(([name]) => name.startsWith('patchEmbedding.'));
    expect(stem.map(([name]) => name)).toEqual([
      'patchEmbedding.convolutions.0.kernel.weight', 'patchEmbedding.convolutions.0.kernel.bias',
      'patchEmbedding.convolutions.1.kernel.weight', 'patchEmbedding.convolutions.1.kernel.bias',
      'patchEmbedding.convolutions.2.kernel.weight', 'patchEmbedding.convolutions.2.kernel.bias',
      'patchEmbedding.projection.weight', 'patchEmbedding.projection.bias',
    ]);
    const { value, grads } = tf.variableGrads(() => encoder.encode(images).square().mean() as tf.Scalar, stem.map(([, v]) => v));
    for (const [, variable] of stem) expect(tf.tidy(() => tf.sum(tf.abs(grads[variable.name]!)).dataSync()[0])).toBeGreaterThan(0);
    tf.dispose([patches, value, ...Object.values(grads)]);
    expect(tf.memory().numTensors).toBe(before);
    images.dispose();
  });

  test('needs a power-of-two patch size; the default stays the linear patch projection', () => {
    expect(() => resolveConfig({ imageSize: 36, patchSize: 12, visionStem: 'conv' })).toThrow(ConfigError);
    expect(() => resolveConfig({ visionStem: 'pixels' as 'conv' })).toThrow("'patch' or 'conv'");
    const names = new VisionTransformerEncoder(new Random(3), resolveConfig({ imageSize: 32, patchSize: 8, visionDim: 32, visionDepth: 1, visionHeads: 2, visionMlpDim: 64 }))
      .namedParameters().map(([name]) => name);
    // The names checkpoints written before the option existed use.
    expect(names).toContain('patchEmbedding.weight');
    expect(names).toContain('patchEmbedding.bias');
  });
});
