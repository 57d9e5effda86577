/**
 * The WebGPU tier. On every machine: each kernel the model launches has a WebGPU kernel, and the
 * tier is refused where it would not be a GPU. Where the preload started webgpu (a GPU machine with
 * the optional packages), the numerics that matter are checked on the GPU against the cpu backend,
 * with tolerances for float32 on a GPU (its reductions sum in another order).
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import * as tf from '@tensorflow/tfjs-core';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadCheckpoint, saveCheckpoint } from '../../../model/checkpoint.ts';
import { MultimodalMACNetwork } from '../../../model/multimodal.ts';
import { AdamW, clipByGlobalNorm } from '../../../model/optim.ts';
import { selectBackend } from '../../../src/backend/select.ts';
import { nameAdapter, softwareAdapterReason } from '../../../src/backend/webgpu.ts';
import { TINY, ids, maxAbsDifference, solidImage } from '../../model/helpers.ts';
import { isInstalled } from './helpers.ts';

const webgpuInstalled = isInstalled('@tensorflow/tfjs-backend-webgpu');
const backend = await selectBackend();
const onGpu = backend.name === 'webgpu';
if (!onGpu) {
  const reason = backend.skipped.find((s) => s.name === 'webgpu')?.reason ?? `MAC_BACKEND=${process.env.MAC_BACKEND}`;
  console.warn(`webgpu numerics skipped: this process runs on ${backend.name} (webgpu: ${reason})`);
}

/** Every option that adds kernels of its own, so that the kernel list covers them all. */
const EVERY_PATH = {
  ...TINY,
  visionStem: [4, 8],
  neuralMemoryKwargs: { convKernel: 3, spectralNormSurprises: true },
  neuralMemWeightResidual: true,
  acceptValueResidual: true,
  neuralMemGateAttnOutput: true,
};
const TOKENS = Array.from({ length: 23 }, (_, i) => (i * 37 + 11) % 250);

/** A batch of one prompt with an image in its first slots, as training and captioning feed it. */
function imageBatch(model: MultimodalMACNetwork) {
  const prompt = model.withImageSlots([model.imageTokenId, ...TOKENS], [0]);
  const images = tf.tidy(() => solidImage(TINY.imageSize!, [200, 40, 40]).expandDims(0).expandDims(0) as tf.Tensor5D);
  return { ids: ids([prompt.tokens]), inputs: { images, imagePositions: [prompt.imagePositions] } };
}

/** The loss and its gradients named as the model names its parameters, as the optimizer takes them. */
function lossAndGradients(model: MultimodalMACNetwork, batch: ReturnType<typeof imageBatch>) {
  const { value, grads } = tf.variableGrads(() => model.loss(batch.ids, batch.inputs));
  const named = Object.fromEntries(model.namedParameters().map(([name, variable]) => [name, grads[variable.name]!]));
  return { value, grads: named };
}

/** A forward with an image, a clipped training step with AdamW, and cached decoding, all of it. */
function runEveryPath(model: MultimodalMACNetwork): void {
  const batch = imageBatch(model);
  const optimizer = new AdamW(model.namedParameters(), { lr: 1e-3 });
  const { value, grads } = lossAndGradients(model, batch);
  const clipped = clipByGlobalNorm(grads, 1);
  optimizer.step(clipped.grads);
  tf.dispose(clipped.grads);
  const cache = model.text.createCache(1);
  const embeddings = model.embed(batch.ids, batch.inputs);
  const logits = model.text.step(embeddings, cache);
  tf.dispose([value, grads, embeddings, logits, batch.ids, batch.inputs.images]);
  cache.dispose();
  optimizer.dispose();
}

describe('the webgpu tier on any machine', () => {
  test.if(webgpuInstalled)('every kernel the model launches (forward, training step, decoding) has a WebGPU kernel', async () => {
    await import('@tensorflow/tfjs-backend-webgpu');
    const model = new MultimodalMACNetwork(EVERY_PATH);
    const profile = await tf.profile(() => runEveryPath(model));
    model.dispose();
    const launched = new Set(profile.kernels.map((kernel) => kernel.name));
    // tf.profile also lists functions with a custom gradient, under their op's name or, outside an op
    // (model/layers.ts), as an unnamed scope; what they run is listed as kernels of its own.
    const kernels = [...launched].filter((name) => !name.endsWith('__op') && name !== 'unnamed scope');
    const onWebGPU = new Set(tf.getKernelsForBackend('webgpu').map((kernel) => kernel.kernelName));
    expect(kernels.length).toBeGreaterThan(20);
    expect(kernels.filter((name) => !onWebGPU.has(name))).toEqual([]);
  });

  test('a software adapter is refused, naming it', () => {
    const swiftShader = { vendor: 'google', architecture: 'swiftshader', device: '', description: 'SwiftShader Device (Subzero)' };
    expect(softwareAdapterReason(swiftShader)).toBe('the adapter is a software renderer (SwiftShader Device (Subzero) (google, swiftshader))');
    const fallback = { vendor: 'mesa', architecture: '', device: 'llvmpipe (LLVM 15.0.6, 256 bits)', description: '', isFallbackAdapter: true };
    expect(softwareAdapterReason(fallback)).toBe("the adapter is Dawn's software fallback (llvmpipe (LLVM 15.0.6, 256 bits) (mesa))");
  });

  test('a GPU is accepted and named as it names itself', () => {
    const h100 = { vendor: 'nvidia', architecture: 'hopper', device: '', description: 'NVIDIA H100 80GB HBM3', isFallbackAdapter: false };
    expect(softwareAdapterReason(h100)).toBeUndefined();
    expect(nameAdapter(h100)).toBe('NVIDIA H100 80GB HBM3 (nvidia, hopper)');
  });
});

describe.if(onGpu)('numerics on the GPU, against the cpu backend', () => {
  let scratch: string;
  beforeAll(async () => {
    scratch = await mkdtemp(join(tmpdir(), 'webgpu-test-'));
  });
  afterAll(async () => {
    await rm(scratch, { recursive: true, force: true });
    await tf.setBackend('webgpu');
  });

  /** The same computation on the cpu backend, the reference; tensors move between backends on use. */
  async function onCpu<T>(compute: () => T): Promise<T> {
    await tf.setBackend('cpu');
    try {
      return compute();
    } finally {
      await tf.setBackend('webgpu');
    }
  }

  test('a forward with an image gives the cpu logits (max abs difference < 1e-3)', async () => {
    const model = new MultimodalMACNetwork(EVERY_PATH);
    const batch = imageBatch(model);
    const gpu = model.forward(batch.ids, batch.inputs);
    const cpu = await onCpu(() => model.forward(batch.ids, batch.inputs));
    expect(maxAbsDifference(gpu, cpu)).toBeLessThan(1e-3);
    tf.dispose([gpu, cpu, batch.ids, batch.inputs.images]);
    model.dispose();
  });

  test('cached decoding gives the logits of a full forward (max abs difference < 1e-3)', () => {
    const model = new MultimodalMACNetwork(EVERY_PATH);
    const full = model.forward(ids([TOKENS]));
    const cache = model.text.createCache(1);
    const steps = TOKENS.map((token) => tf.tidy(() => model.text.step(model.text.embed(ids([[token]])), cache)));
    const cached = tf.concat(steps, 1);
    expect(maxAbsDifference(full, cached)).toBeLessThan(1e-3);
    tf.dispose([full, cached, ...steps]);
    cache.dispose();
    model.dispose();
  });

  test('the training gradient gives the cpu gradient (relative difference < 1e-3)', async () => {
    const model = new MultimodalMACNetwork(EVERY_PATH);
    const batch = imageBatch(model);
    const gradients = () => {
      const { value, grads } = lossAndGradients(model, batch);
      value.dispose();
      return grads;
    };
    const gpu = gradients();
    const cpu = await onCpu(gradients);
    const scale = (name: string) => Math.max(tf.tidy(() => cpu[name]!.abs().max().dataSync()[0]!), 1e-6);
    const relative = (name: string) => maxAbsDifference(gpu[name]!, cpu[name]!) / scale(name);
    const offenders = Object.keys(cpu).map((name) => ({ name, relative: relative(name) })).filter((o) => !(o.relative < 1e-3));
    expect(offenders).toEqual([]);
    tf.dispose([gpu, cpu, batch.ids, batch.inputs.images]);
    model.dispose();
  });

  test('training steps lower the loss, and the tensor count returns to its baseline', () => {
    const model = new MultimodalMACNetwork(EVERY_PATH);
    const batch = imageBatch(model);
    const optimizer = new AdamW(model.namedParameters(), { lr: 3e-3 });
    const losses: number[] = [];
    const tensorCounts: number[] = [];
    for (let step = 0; step < 20; step++) {
      const { value, grads } = lossAndGradients(model, batch);
      losses.push(value.dataSync()[0]!);
      optimizer.step(grads);
      tf.dispose([value, grads]);
      tensorCounts.push(tf.memory().numTensors);
    }
    expect(new Set(tensorCounts).size).toBe(1);
    expect(losses.every(Number.isFinite)).toBe(true);
    expect(losses.at(-1)!).toBeLessThan(losses[0]! * 0.8);
    tf.dispose([batch.ids, batch.inputs.images]);
    optimizer.dispose();
    model.dispose();
  });

  test('a checkpoint saved from the GPU loads with identical logits', async () => {
    const model = new MultimodalMACNetwork(EVERY_PATH);
    await saveCheckpoint(model, join(scratch, 'round-trip'));
    const loaded = await loadCheckpoint(join(scratch, 'round-trip'));
    const x = ids([TOKENS]);
    const [before, after] = [model.forward(x), loaded.forward(x)];
    expect(maxAbsDifference(before, after)).toBe(0);
    tf.dispose([x, before, after]);
    model.dispose();
    loaded.dispose();
  });
});
