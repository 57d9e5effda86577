/**
 * A worker thread that starts the webgpu tier, as the service's inference workers and training's
 * replicas do in theirs (on the GPU, or where there is none on Mesa's software renderer), multiplies
 * and reads the product back: webgpu.test.ts starts two at once.
 */
import * as tf from '@tensorflow/tfjs-core';
import { startSoftwareWebGPU, startWebGPU } from '../../../src/backend/webgpu.ts';

declare const self: Worker;

self.onmessage = async () => {
  try {
    await startWebGPU().catch(() => startSoftwareWebGPU());
    const product = tf.matMul(tf.ones([3, 8]), tf.fill([8, 2], 0.5));
    self.postMessage({ backend: tf.getBackend(), values: Array.from(await product.data()) });
  } catch (error) {
    self.postMessage({ error: String(error) });
  }
};
