import { expect } from 'bun:test';
import * as tf from '@tensorflow/tfjs-core';

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
