import { expect } from 'bun:test';
import * as tf from '@tensorflow/tfjs-core';
import { clipFactor, forgetStep, momentumStep } from '../../../model/memory-update.ts';

/** Whether an optional package (a GPU tier's) is installed here: its tests run only where it is. */
export function isInstalled(name: string): boolean {
  try {
    Bun.resolveSync(name, import.meta.dir);
    return true;
  } catch {
    return false;
  }
}

/** A tensor of scale * sin(step * i + 0.5): varied values, the same on every backend. */
export function sines(shape: number[], scale: number, step: number): tf.Tensor {
  return tf.tensor(Array.from({ length: tf.util.sizeFromShape(shape) }, (_, i) => scale * Math.sin(step * i + 0.5)), shape);
}

/**
 * Runs `compute` on the suite's backend, which must leave no tensor behind, then on the cpu
 * backend's ops, and gives each output's largest difference from the cpu's over the cpu's largest
 * magnitude (at least 1e-3); Infinity where the lengths differ.
 */
export async function differencesFromCpu(compute: () => Promise<Float32Array[]>): Promise<number[]> {
  const suiteBackend = tf.getBackend();
  const before = tf.memory().numTensors;
  const outputs = await compute();
  expect(tf.memory().numTensors).toBe(before);
  await tf.setBackend('cpu');
  const cpu = await compute().finally(() => tf.setBackend(suiteBackend));
  return outputs.map((values, k) => {
    const expected = cpu[k]!;
    if (values.length !== expected.length) return Infinity;
    const scale = expected.reduce((max, value) => Math.max(max, Math.abs(value)), 1e-3);
    return values.reduce((max, value, i) => Math.max(max, Math.abs(value - expected[i]!)), 0) / scale;
  });
}

/**
 * Runs `body` with the suite backend's kernels `names` taken away, so that the ops they replace run
 * written out (kernelOr), then gives them back. A name the backend has no kernel for is left alone.
 */
export async function withoutKernels<T>(names: string[], body: () => T | Promise<T>): Promise<T> {
  const kernels = names.flatMap((name) => tf.getKernel(name, tf.getBackend()) ?? []);
  for (const { kernelName, backendName } of kernels) tf.unregisterKernel(kernelName, backendName);
  try {
    return await body();
  } finally {
    for (const kernel of kernels) tf.registerKernel(kernel);
  }
}

/** The kernels that a clip factor, two momentum steps (with every option, with none) and a forgetting step launch. */
export async function memoryUpdateKernels(): Promise<string[]> {
  const { kernels } = await tf.profile(() =>
    tf.tidy(() => {
      const [g, factor] = [tf.ones([1, 2, 4, 3]), tf.ones([1, 2, 1, 1])];
      return [clipFactor([g, g], 1), momentumStep(g, { clip: factor, eta: factor, momentum: g }), momentumStep(g, {}), forgetStep(g, factor, g)];
    }),
  );
  return kernels.map((kernel) => kernel.name);
}

/**
 * A store's update of every weight of a memory of 2 x 3 heads (model/memory-update.ts: two matrices,
 * one wider than a GPU workgroup's threads, and a gain), with and without each option, and the
 * gradients of a weighted sum of it for every input, read as numbers. One head's surprise is all
 * zeros; `maxNorm` 0.05 clips every other head, 100 none (a factor of 1, no gradient).
 */
export async function memoryUpdateOutputs(maxNorm: number): Promise<Float32Array[]> {
  const outputs = tf.tidy(() => {
    const [batch, heads] = [2, 3];
    // Heads of 210, 210 and 5 floats: not whole multiples of a SIMD kernel's four lanes.
    const shapes = [[batch, heads, 3, 70], [batch, heads, 70, 3], [batch, heads, 1, 5]];
    const surprises = shapes.map((shape, i) => sines(shape, 0.05, 0.3 + i).mul(tf.tensor([1, 1, 1, 1, 1, 0], [batch, heads, 1, 1])));
    const momentum = shapes.map((shape, i) => sines(shape, 0.1, 0.7 + i));
    const weights = shapes.map((shape, i) => sines(shape, 1, 0.2 + i));
    const [eta, alpha] = [0.41, 0.13].map((step) => sines([batch, heads, 1, 1], 1, step).sigmoid()) as [tf.Tensor, tf.Tensor];
    const weighted = (y: tf.Tensor) => y.mul(sines(y.shape, 1, 0.11)).sum();
    const clip = clipFactor(surprises, maxNorm);
    return [
      clip,
      ...tf.grads((...g: tf.Tensor[]) => weighted(clipFactor(g, maxNorm)))(surprises),
      ...surprises.flatMap((g, i) => [
        momentumStep(g, { clip, eta, momentum: momentum[i] }), momentumStep(g, { eta, momentum: momentum[i] }), momentumStep(g, { clip }), momentumStep(g, {}),
        forgetStep(weights[i]!, alpha, momentum[i]!),
        ...tf.grads((s: tf.Tensor, c: tf.Tensor, e: tf.Tensor, m: tf.Tensor) => weighted(momentumStep(s, { clip: c, eta: e, momentum: m })))([g, clip, eta, momentum[i]!]),
        ...tf.grads((s: tf.Tensor, c: tf.Tensor) => weighted(momentumStep(s, { clip: c })))([g, clip]),
        ...tf.grads((w: tf.Tensor, a: tf.Tensor, u: tf.Tensor) => weighted(forgetStep(w, a, u)))([weights[i]!, alpha, momentum[i]!]),
      ]),
    ];
  });
  const read = await Promise.all(outputs.map(async (t) => (await t.data()) as Float32Array));
  tf.dispose(outputs);
  return read;
}
