import { describe, expect, test } from 'bun:test';
import * as tf from '@tensorflow/tfjs-core';
import { resolveConfig } from '../../model/config.ts';
import { Random } from '../../model/random.ts';
import { VisionTransformerEncoder } from '../../model/vit.ts';
import { TINY } from './helpers.ts';

describe('VisionTransformerEncoder', () => {
  test('patches from the pixels: a class feature [B, D], or patch features [B, N, D]', () => {
    const encoder = new VisionTransformerEncoder(new Random(1), resolveConfig(TINY));
    tf.tidy(() => {
      const images = tf.randomNormal([3, 3, 16, 16]) as tf.Tensor4D;
      expect(encoder.encode(images).shape).toEqual([3, 32]);
      expect(encoder.encode(images, { patches: true }).shape).toEqual([3, 4, 32]);
      expect(() => encoder.encode(tf.zeros([1, 3, 8, 8]) as tf.Tensor4D)).toThrow('images must be [B, 3, 16, 16], got [1, 3, 8, 8]');
    });
    encoder.dispose();
  });

  test('with visionStem, a patch token adds the convolutions\' features to its pixels\' embedding, from zero at first', () => {
    // 16 px: the first convolution halves the map to 8 x 8, the second keeps it; each 8-px patch is a 4 x 4 max-pool.
    const options = { ...TINY, visionStem: [4, 6] };
    const encoder = new VisionTransformerEncoder(new Random(1), resolveConfig(options));
    const pixelsOnly = new VisionTransformerEncoder(new Random(1), resolveConfig(TINY));
    expect(encoder.namedParameters().filter(([name]) => name.startsWith('stem')).map(([name, v]) => [name, v.shape])).toEqual([
      ['stem.0.weight', [3, 3, 3, 4]], ['stem.0.bias', [4]], ['stem.1.weight', [3, 3, 4, 6]], ['stem.1.bias', [6]],
      ['stemEmbedding.weight', [6, 32]], ['stemEmbedding.bias', [32]],
    ]);
    const images = tf.randomNormal([2, 3, 16, 16], 0, 1, 'float32', 5) as tf.Tensor4D;
    const before = tf.memory().numTensors;
    const lossOf = () => (encoder.encode(images, { patches: true, training: true }) as tf.Tensor).square().sum() as tf.Scalar;
    const gradientSizes = (variables: tf.Variable[]) => {
      const { value, grads } = tf.variableGrads(lossOf, variables);
      const sizes = variables.map((v) => tf.tidy(() => grads[v.name]!.abs().sum().dataSync()[0]!));
      tf.dispose([value, ...Object.values(grads)]);
      return sizes;
    };
    const stem = encoder.stem.flatMap((conv) => [conv.weight, conv.bias]);
    const embedding = encoder.stemEmbedding!.weight;

    // At initialisation the stem adds nothing: the encoder is the pixels-only one it extends.
    const features = encoder.encode(images, { patches: true });
    const reference = pixelsOnly.encode(images, { patches: true });
    expect(tf.tidy(() => features.sub(reference).abs().max().dataSync()[0]!)).toBe(0);
    // The gradient reaches the embedding of the stem, and through it, once that is non-zero, the convolutions.
    expect(gradientSizes([embedding])[0]).toBeGreaterThan(0);
    const trained = tf.randomNormal(embedding.shape, 0, 0.02, 'float32', 6);
    embedding.assign(trained);
    trained.dispose();
    for (const size of gradientSizes(stem)) expect(size).toBeGreaterThan(0);
    tf.dispose([features, reference]);
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose(images);
    encoder.dispose();
    pixelsOnly.dispose();
  });

  test('encodeInStages gives what encode gives, a block at each next(), and frees what it holds when stopped between blocks', () => {
    const encoder = new VisionTransformerEncoder(new Random(1), resolveConfig({ ...TINY, visionDepth: 3, visionStem: [4, 6] }));
    const images = tf.randomNormal([2, 3, 16, 16], 0, 1, 'float32', 5) as tf.Tensor4D;
    const baseline = tf.memory().numTensors;
    for (const patches of [false, true]) {
      const expected = encoder.encode(images, { patches });
      const stages = encoder.encodeInStages(images, { patches });
      const steps: IteratorResult<void, tf.Tensor>[] = [];
      for (let i = 0; i < encoder.stages; i++) steps.push(stages.next());
      expect(encoder.stages).toBe(3);
      expect(steps.map((step) => step.done)).toEqual([false, false, true]);
      const features = steps[2]!.value as tf.Tensor;
      expect(features.shape).toEqual(expected.shape);
      expect(Array.from(features.dataSync())).toEqual(Array.from(expected.dataSync()));
      tf.dispose([expected, features]);
    }
    expect(tf.memory().numTensors).toBe(baseline);

    const stopped = encoder.encodeInStages(images);
    stopped.next();
    expect(tf.memory().numTensors).toBeGreaterThan(baseline);
    stopped.return(images);
    expect(tf.memory().numTensors).toBe(baseline);
    images.dispose();
    encoder.dispose();
  });

  test('a stem that would halve the map past the patch size is refused by name', () => {
    // patchSize 8 allows three halvings, so four convolutions at most (the last keeps the map).
    expect(() => resolveConfig({ ...TINY, visionStem: [4, 4, 4, 4] })).not.toThrow();
    expect(() => resolveConfig({ ...TINY, visionStem: [4, 4, 4, 4, 4] })).toThrow("option 'visionStem' must be at most 4 convolutions");
    expect(() => resolveConfig({ ...TINY, visionStem: [4, 0] })).toThrow("option 'visionStem' must be a list of channel counts");
  });
});
