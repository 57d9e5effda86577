/**
 * A repair of tfjs-backend-webgpu 4.22's AddN. Its shader binds every input as a storage buffer, and
 * a WebGPU device allows 8 per shader stage unless it asks for more, which tfjs does not: with more
 * than 7 inputs the pipeline is invalid, and the sum comes back unwritten, with nothing but a
 * validation message on stderr. Gradient clipping sums one square per parameter (40 for the shapes
 * preset). Here the inputs are added in groups that fit, then the groups' sums.
 */
import * as tf from '@tensorflow/tfjs-core';

type AddNKernel = (args: { inputs: tf.TensorInfo[]; backend: tf.KernelBackend }) => tf.TensorInfo;

/** Replaces the backend's AddN by one that adds at most `maxInputs` tensors per launch; call once. */
export function registerGroupedAddN(backendName: string, maxInputs: number): void {
  const stock = tf.getKernel(tf.AddN, backendName)!.kernelFunc as unknown as AddNKernel;
  const addN: AddNKernel = ({ inputs, backend }) => {
    const partialSums: tf.TensorInfo[] = [];
    let terms = inputs;
    while (terms.length > maxInputs) {
      const sums: tf.TensorInfo[] = [];
      for (let start = 0; start < terms.length; start += maxInputs) {
        const group = terms.slice(start, start + maxInputs);
        if (group.length === 1) {
          sums.push(group[0]!);
          continue;
        }
        const sum = stock({ inputs: group, backend });
        partialSums.push(sum);
        sums.push(sum);
      }
      terms = sums;
    }
    const total = stock({ inputs: terms, backend });
    for (const sum of partialSums) backend.disposeData(sum.dataId);
    return total;
  };
  tf.unregisterKernel(tf.AddN, backendName);
  tf.registerKernel({ kernelName: tf.AddN, backendName, kernelFunc: addN as unknown as tf.KernelFunc });
}
