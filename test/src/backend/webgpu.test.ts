/**
 * The WebGPU tier. On every machine: each kernel the model launches has a WebGPU kernel, the paths
 * a GPU runs read tensors only asynchronously, and the tier is refused where it would not be a GPU.
 * Then the numerics that matter, on the webgpu backend against the cpu backend, with tolerances for
 * float32 on a GPU (its reductions sum in another order): on the GPU, or where there is none on Mesa's
 * software renderer, which runs the same kernels and shaders. The rest of the suite runs on another
 * tier (test/setup.ts); this file starts webgpu itself and gives the suite its backend back.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from 'bun:test';
import * as tf from '@tensorflow/tfjs-core';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PROJECTED_ATTENTION_KERNEL, WINDOW_APPEND_KERNEL, appendToWindow, attendFromProjection } from '../../../model/attention.ts';
import { loadCheckpoint, saveCheckpoint } from '../../../model/checkpoint.ts';
import {
  AFFINE_KERNEL, ATTENTION_KERNEL, CAUSAL_CONV_KERNEL, GELU_DERIVATIVE_KERNEL, GELU_KERNEL, GELU_SECOND_DERIVATIVE_KERNEL, L2_NORM_KERNEL, LAYER_NORM_KERNEL,
  NORMALIZED_AFFINE_GELU_KERNEL, NORMALIZED_PRODUCT_KERNEL, PRODUCT_KERNEL, RMS_NORM_KERNEL, SELF_ATTENTION_KERNEL, affine, attend, causalConvolution, gelu,
  geluDerivative, geluSecondDerivative, l2Normalize, layerNorm, normalizedAffineGelu, normalizedProduct, product, rmsNorm, selfAttention,
} from '../../../model/layers.ts';
import { MEMORY_READ_KERNEL, MEMORY_READ_MAX_WIDTH, RESIDUAL_NORM_KERNEL, RESIDUAL_NORM_SURPRISE_KERNEL, memoryNetwork, residualNorm, type MemoryNetwork } from '../../../model/memory-networks.ts';
import { CLIP_FACTOR_KERNEL, FORGET_STEP_KERNEL, MOMENTUM_STEP_KERNEL } from '../../../model/memory-update.ts';
import { MultimodalMACNetwork } from '../../../model/multimodal.ts';
import { NeuralMemory, PROJECTED_HEADS_KERNEL } from '../../../model/neural-memory.ts';
import { Random } from '../../../model/random.ts';
import { ADAMW_KERNEL, AdamW } from '../../../model/optim.ts';
import { nameAdapter, softwareAdapterReason, startSoftwareWebGPU, startWebGPU } from '../../../src/backend/webgpu.ts';
import { Replica } from '../../../src/training/replica.ts';
import { parseJobSpec } from '../../../src/training/spec.ts';
import { TINY, collect, ids, solidImage } from '../../model/helpers.ts';
import { tinyJob } from '../training/helpers.ts';
import { differencesFromCpu, isInstalled, memoryUpdateKernels, memoryUpdateOutputs } from './helpers.ts';

const webgpuInstalled = isInstalled('@tensorflow/tfjs-backend-webgpu');
const suiteBackend = tf.getBackend();
const { device, unavailable } = await startGpu();
console.warn(device ? `webgpu numerics on ${device}` : `webgpu numerics skipped: ${unavailable}`);

/**
 * Starts the webgpu tier on the GPU, or where there is none on Mesa's software renderer
 * (startSoftwareWebGPU), then gives the suite its backend back: what it runs on, or why neither starts.
 */
async function startGpu(): Promise<{ device?: string; unavailable?: string }> {
  if (suiteBackend === 'webgpu') return { device: 'the GPU the preload started (MAC_BACKEND=webgpu)' };
  const reason = (error: unknown) => (error instanceof Error ? error.message : String(error));
  try {
    return { device: await startWebGPU() };
  } catch (noGpu) {
    try {
      await startSoftwareWebGPU();
      return { device: `Mesa's software renderer, as there is no GPU (${reason(noGpu)})` };
    } catch (noSoftware) {
      return { unavailable: `no GPU (${reason(noGpu)}) and no software renderer (${reason(noSoftware)})` };
    }
  } finally {
    await tf.setBackend(suiteBackend);
  }
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

/** A tensor of sin(step * i + 0.3): varied values, the same on every backend. */
function sines(shape: number[], step: number): tf.Tensor {
  return tf.tensor(Array.from({ length: tf.util.sizeFromShape(shape) }, (_, i) => Math.sin(step * i + 0.3)), shape);
}

/** Of two tensors, on any backends, read asynchronously: the largest absolute difference (NaN if either has one). */
async function maxAbsDifference(a: tf.Tensor, b: tf.Tensor): Promise<number> {
  const [x, y] = (await Promise.all([a.data(), b.data()])) as [Float32Array, Float32Array];
  return x.reduce((max, value, i) => Math.max(max, Math.abs(value - y[i]!)), 0);
}

/** A forward with an image, a training step with AdamW, and cached decoding of the prompt and of two tokens after it. */
async function runEveryPath(model: MultimodalMACNetwork): Promise<void> {
  const batch = imageBatch(model);
  const optimizer = new AdamW(model.namedParameters(), { lr: 1e-3 });
  const { value, grads } = lossAndGradients(model, batch);
  optimizer.step(grads);
  const cache = model.text.createCache(1);
  const embeddings = model.embed(batch.ids, batch.inputs);
  const logits = [model.text.step(embeddings, cache)];
  for (const token of [7, 8]) {
    const embedding = tf.tidy(() => model.text.embed(ids([[token]])));
    logits.push(model.text.step(embedding, cache));
    embedding.dispose();
  }
  await logits.at(-1)!.data();
  tf.dispose([value, grads, embeddings, ...logits, batch.ids, batch.inputs.images]);
  cache.dispose();
  optimizer.dispose();
}

/**
 * Runs `work` with every synchronous read refused, as the webgpu tier refuses them: under Bun it has
 * no OffscreenCanvas, the only way tfjs-backend-webgpu reads a GPU buffer synchronously.
 */
async function refusingSynchronousReads<T>(work: () => Promise<T>): Promise<T> {
  const engine = tf.engine();
  const readSync = engine.readSync;
  engine.readSync = () => {
    throw new Error('a synchronous read (dataSync, arraySync), which the webgpu tier cannot do');
  };
  try {
    return await work();
  } finally {
    engine.readSync = readSync;
  }
}

describe('the webgpu tier on any machine', () => {
  test('training steps, evaluation, checkpoints and generation read tensors only asynchronously', async () => {
    const replica = await Replica.create(parseJobSpec(tinyJob({ grad_accum: 2 })));
    const model = new MultimodalMACNetwork(TINY);
    const image = solidImage(TINY.imageSize!, [200, 40, 40]);
    const prompt = model.withImageSlots([...model.tokenizer.encode('An image of '), model.imageTokenId], [12]);
    const scratch = await mkdtemp(join(tmpdir(), 'webgpu-reads-'));
    await refusingSynchronousReads(async () => {
      for (let step = 1; step <= 2; step++) {
        const { grads } = await replica.gradients(step, 0, 1);
        await replica.apply(grads, 1e-3);
      }
      await replica.evalLoss();
      await saveCheckpoint(replica.model, scratch);
      (await loadCheckpoint(scratch)).dispose();
      await collect(model.generate(prompt.tokens, { images: [image], imagePositions: prompt.imagePositions, maxLength: 4, temperature: 0 }));
    });
    await expect(refusingSynchronousReads(async () => tf.tidy(() => tf.scalar(1).dataSync()))).rejects.toThrow('a synchronous read');
    await rm(scratch, { recursive: true, force: true });
    tf.dispose(image);
    model.dispose();
    replica.dispose();
  }, 60_000);

  test.if(webgpuInstalled)('every kernel the model launches (forward, training step, decoding) has a WebGPU kernel', async () => {
    await import('@tensorflow/tfjs-backend-webgpu');
    const model = new MultimodalMACNetwork(EVERY_PATH);
    const profile = await tf.profile(() => runEveryPath(model));
    model.dispose();
    const launched = new Set(profile.kernels.map((kernel) => kernel.name));
    // tf.profile also lists functions with a custom gradient, under their op's name or, outside an op
    // (model/layers.ts), as an unnamed scope; what they run is listed as kernels of its own.
    // AdamW takes ADAMW_KERNEL where the backend has one (wasm); elsewhere it writes its update out
    // in buckets (model/optim.ts), fewer launches on a GPU than one a parameter.
    const kernels = [...launched].filter((name) => !name.endsWith('__op') && name !== 'unnamed scope' && name !== ADAMW_KERNEL);
    const onWebGPU = new Set(tf.getKernelsForBackend('webgpu').map((kernel) => kernel.kernelName));
    expect(kernels.length).toBeGreaterThan(20);
    expect(kernels.filter((name) => !onWebGPU.has(name))).toEqual([]);
    // A device binds 8 storage buffers per shader stage, one of them the output. Concat and Pack
    // split wider inputs themselves, and AddN is split by src/backend/webgpu-kernels.ts.
    const splitting = new Set([tf.Concat, tf.Pack, tf.AddN]);
    const tooWide = profile.kernels.filter((kernel) => kernel.inputShapes.length > 7 && !splitting.has(kernel.name)).map((kernel) => kernel.name);
    expect(tooWide).toEqual([]);
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

// Mesa's software renderer takes seconds where a GPU takes milliseconds.
setDefaultTimeout(60_000);

describe.if(device !== undefined)('numerics on the webgpu backend, against the cpu backend', () => {
  let scratch: string;
  beforeAll(async () => {
    scratch = await mkdtemp(join(tmpdir(), 'webgpu-test-'));
    await tf.setBackend('webgpu');
  });
  afterAll(async () => {
    await rm(scratch, { recursive: true, force: true });
    await tf.setBackend(suiteBackend);
  });

  /**
   * The same computation on the cpu backend, the reference, with a model of its own there: the same
   * options give the same weights. Tensors made there stay there, so nothing is read from the GPU.
   */
  async function onCpu<T>(compute: (model: MultimodalMACNetwork) => T): Promise<T> {
    await tf.setBackend('cpu');
    const model = new MultimodalMACNetwork(EVERY_PATH);
    try {
      return compute(model);
    } finally {
      model.dispose();
      await tf.setBackend('webgpu');
    }
  }

  /** The model's logits for one image prompt, its inputs disposed. */
  function imageLogits(model: MultimodalMACNetwork): tf.Tensor {
    const batch = imageBatch(model);
    const logits = model.forward(batch.ids, batch.inputs);
    tf.dispose([batch.ids, batch.inputs.images]);
    return logits;
  }

  /** The gradient of one image prompt's loss, by parameter name, its inputs disposed. */
  function imageGradients(model: MultimodalMACNetwork): tf.NamedTensorMap {
    const batch = imageBatch(model);
    const { value, grads } = lossAndGradients(model, batch);
    tf.dispose([value, batch.ids, batch.inputs.images]);
    return grads;
  }

  test('a forward with an image gives the cpu logits (max abs difference < 1e-3)', async () => {
    const model = new MultimodalMACNetwork(EVERY_PATH);
    const gpu = imageLogits(model);
    const cpu = await onCpu(imageLogits);
    expect(await maxAbsDifference(gpu, cpu)).toBeLessThan(1e-3);
    tf.dispose([gpu, cpu]);
    model.dispose();
  });

  // With a value residual, later layers mix values and take the general path; without one, and with
  // sliding windows, every step appends to its windows with TitansWindowAppend. Pieces of 2, 13 and 8
  // (segments of 4) read whole segments in passes, as a prompt's prefill does.
  test.each([['every path', EVERY_PATH], ['sliding windows, no value residual', { ...TINY, slidingWindowAttn: true }]] as const)('cached decoding gives the logits of a full forward (max abs difference < 1e-3): %s', async (_, options) => {
    const model = new MultimodalMACNetwork(options);
    const input = ids([TOKENS]);
    const full = model.forward(input);
    for (const pieces of [TOKENS.map(() => 1), [2, 13, 8]]) {
      const cache = model.text.createCache(1);
      let at = 0;
      const steps = pieces.map((size) => {
        const embedding = tf.tidy(() => model.text.embed(ids([TOKENS.slice(at, (at += size))])));
        const logits = model.text.step(embedding, cache);
        embedding.dispose();
        return logits;
      });
      const cached = tf.concat(steps, 1);
      expect(await maxAbsDifference(full, cached)).toBeLessThan(1e-3);
      tf.dispose([cached, ...steps]);
      cache.dispose();
    }
    tf.dispose([input, full]);
    model.dispose();
  });

  test('the training gradient gives the cpu gradient (relative difference < 1e-3)', async () => {
    const model = new MultimodalMACNetwork(EVERY_PATH);
    const gpu = imageGradients(model);
    const cpu = await onCpu(imageGradients);
    const offenders: { name: string; relative: number }[] = [];
    for (const name of Object.keys(cpu)) {
      const scale = ((await cpu[name]!.data()) as Float32Array).reduce((max, value) => Math.max(max, Math.abs(value)), 1e-6);
      const relative = (await maxAbsDifference(gpu[name]!, cpu[name]!)) / scale;
      if (!(relative < 1e-3)) offenders.push({ name, relative });
    }
    expect(offenders).toEqual([]);
    tf.dispose([gpu, cpu]);
    model.dispose();
  });

  test('AdamW, which joins the tensors of many parameters into one vector, gives the cpu weights (max abs difference < 1e-6)', async () => {
    const cpuGrads = await onCpu(imageGradients);
    const gradients = await Promise.all(Object.entries(cpuGrads).map(async ([name, grad]) => ({ name, shape: grad.shape, values: await grad.data() })));
    tf.dispose(cpuGrads);
    // Two steps with the same gradients on both backends, so that only the optimizer's arithmetic differs.
    const stepTwice = (model: MultimodalMACNetwork) => {
      const optimizer = new AdamW(model.namedParameters(), { lr: 1e-2 });
      for (let step = 0; step < 2; step++) {
        tf.tidy(() => optimizer.step(Object.fromEntries(gradients.map(({ name, shape, values }) => [name, tf.tensor(values, shape)]))));
      }
      optimizer.dispose();
      return model.namedParameters().map(([name, param]) => ({ name, weights: param.clone() }));
    };
    const model = new MultimodalMACNetwork(EVERY_PATH);
    const gpu = stepTwice(model);
    const cpu = await onCpu(stepTwice);
    // More tensors in a bucket than a shader may bind: Concat joins them in groups.
    expect(gradients.length).toBeGreaterThan(8);
    const offenders: { name: string; difference: number }[] = [];
    for (const [i, { name, weights }] of gpu.entries()) {
      const difference = await maxAbsDifference(weights, cpu[i]!.weights);
      if (!(difference < 1e-6)) offenders.push({ name, difference });
    }
    expect(offenders).toEqual([]);
    tf.dispose([...gpu, ...cpu].map(({ weights }) => weights));
    model.dispose();
  });

  test('training steps lower the loss, and the tensor count returns to its baseline', async () => {
    const model = new MultimodalMACNetwork(EVERY_PATH);
    const optimizer = new AdamW(model.namedParameters(), { lr: 1e-2 });
    const losses: number[] = [];
    const tensorCounts: number[] = [];
    for (let step = 0; step < 8; step++) {
      const batch = imageBatch(model);
      const { value, grads } = lossAndGradients(model, batch);
      losses.push((await value.data())[0]!);
      optimizer.step(grads);
      tf.dispose([value, grads, batch.ids, batch.inputs.images]);
      tensorCounts.push(tf.memory().numTensors);
    }
    expect(new Set(tensorCounts).size).toBe(1);
    expect(losses.every(Number.isFinite)).toBe(true);
    // On the cpu backend the loss falls to about half in these 8 steps.
    expect(losses.at(-1)!).toBeLessThan(losses[0]! * 0.8);
    optimizer.dispose();
    model.dispose();
  });

  // A batch of requests decodes as rows of one cache; those that end leave it (DecodingCache.keepRows).
  test.each([['every path', EVERY_PATH], ['sliding windows, no value residual', { ...TINY, slidingWindowAttn: true }]] as const)('three rows decoded together give a full forward\'s logits, also after two of them are kept (max abs difference < 1e-3): %s', async (_, options) => {
    const model = new MultimodalMACNetwork(options);
    const rows = [0, 1, 2].map((r) => TOKENS.map((token) => (token + 31 * r) % 250));
    const input = ids(rows);
    const full = model.forward(input);
    const cache = model.text.createCache(3);
    let kept = [0, 1, 2];
    let difference = 0;
    for (let at = 0; at < TOKENS.length; at++) {
      if (at === 9) {
        kept = [2, 0];
        cache.keepRows(kept);
      }
      const embedding = tf.tidy(() => model.text.embed(ids(kept.map((r) => rows[r]!.slice(at, at + 1)))));
      const logits = model.text.step(embedding, cache);
      const expected = tf.tidy(() => tf.gather(full.slice([0, at, 0], [-1, 1, -1]), kept));
      difference = Math.max(difference, await maxAbsDifference(logits, expected));
      tf.dispose([embedding, logits, expected]);
    }
    expect(difference).toBeLessThan(1e-3);
    cache.dispose();
    tf.dispose([input, full]);
    model.dispose();
  });

  // A request whose prompt was read apart joins rows already decoding (DecodingCache.join).
  test('a row that joins two rows a period behind it gets a full forward\'s logits, as they do (max abs difference < 1e-3)', async () => {
    const model = new MultimodalMACNetwork(EVERY_PATH);
    const rows = [0, 1, 2].map((r) => TOKENS.map((token) => (token + 31 * r) % 250));
    const full = model.forward(ids(rows));
    const cache = model.text.createCache(2);
    const arriving = model.text.createCache(1);
    const read = (into: typeof cache, which: number[], from: number, to: number) => {
      const embedding = tf.tidy(() => model.text.embed(ids(which.map((r) => rows[r]!.slice(from, to)))));
      const logits = model.text.step(embedding, into);
      embedding.dispose();
      return logits;
    };
    tf.dispose(read(cache, [0, 1], 0, 3));
    const period = cache.period!;
    tf.dispose(read(arriving, [2], 0, 3 + period));
    cache.join(arriving);
    let difference = 0;
    let steps = 0;
    for (let at = 3; at + period < TOKENS.length; at++, steps++) {
      const embedding = tf.tidy(() => model.text.embed(ids([rows[0]!.slice(at, at + 1), rows[1]!.slice(at, at + 1), rows[2]!.slice(at + period, at + period + 1)])));
      const logits = model.text.step(embedding, cache);
      const expected = tf.tidy(() => tf.concat([full.slice([0, at, 0], [2, 1, -1]), full.slice([2, at + period, 0], [1, 1, -1])], 0));
      difference = Math.max(difference, await maxAbsDifference(logits, expected));
      tf.dispose([embedding, logits, expected]);
    }
    expect(steps).toBeGreaterThan(8);
    expect(difference).toBeLessThan(1e-3);
    cache.dispose();
    full.dispose();
    model.dispose();
  });

  test('a checkpoint saved from the GPU loads with identical logits', async () => {
    const model = new MultimodalMACNetwork(EVERY_PATH);
    await saveCheckpoint(model, join(scratch, 'round-trip'));
    const loaded = await loadCheckpoint(join(scratch, 'round-trip'));
    const x = ids([TOKENS]);
    const [before, after] = [model.forward(x), loaded.forward(x)];
    expect(await maxAbsDifference(before, after)).toBe(0);
    tf.dispose([x, before, after]);
    model.dispose();
    loaded.dispose();
  });

  test('every shader of a forward, a training step and decoding passes WebGPU validation, with block and with sliding windows', async () => {
    const device = (tf.backend() as unknown as { device: GPUDevice }).device;
    for (const options of [EVERY_PATH, { ...EVERY_PATH, slidingWindowAttn: true }]) {
      device.pushErrorScope('validation');
      const model = new MultimodalMACNetwork(options);
      await runEveryPath(model);
      model.dispose();
      expect((await device.popErrorScope())?.message).toBeUndefined();
    }
  });

  test("a pipeline gives every launch the same bind group layout (Dawn's binding makes a new one at each ask)", async () => {
    const sum = tf.tidy(() => tf.ones([3, 4]).add(tf.ones([3, 4])).sum());
    await sum.data();
    sum.dispose();
    const { pipelineCache } = tf.backend() as unknown as { pipelineCache: Record<string, { getBindGroupLayout(index: number): object }> };
    const pipelines = Object.values(pipelineCache);
    expect(pipelines.length).toBeGreaterThan(0);
    for (const pipeline of pipelines) expect(pipeline.getBindGroupLayout(0)).toBe(pipeline.getBindGroupLayout(0));
  });

  test("a product's gradient launches no transposes on webgpu (WASM's gradient transposes explicitly)", async () => {
    const [a, b] = [tf.ones([3, 4]), tf.ones([5, 4])];
    const { kernels } = await tf.profile(() => tf.tidy(() => tf.grads((x: tf.Tensor, y: tf.Tensor) => tf.matMul(x, y, false, true).sum())([a, b])));
    expect(kernels.map((kernel) => kernel.name).filter((name) => name === tf.Transpose)).toEqual([]);
    tf.dispose([a, b]);
  });

  test('webgpu starts in worker threads, two at once, as the inference workers and training replicas start it', async () => {
    const workers = [0, 1].map(() => new Worker(new URL('./webgpu-worker.ts', import.meta.url).href));
    const results = await Promise.all(workers.map((worker) => new Promise((resolve) => {
      worker.onmessage = ({ data }) => resolve(data);
      worker.postMessage('start');
    })));
    for (const worker of workers) worker.terminate();
    expect(results).toEqual([0, 1].map(() => ({ backend: 'webgpu', values: [4, 4, 4, 4, 4, 4] })));
  });

  test('a causal convolution is one kernel and gives the values and gradients of the ops written out, on the cpu', async () => {
    const { kernels } = await tf.profile(() => tf.tidy(() => causalConvolution(tf.ones([1, 5, 2]), tf.ones([3, 2]))));
    expect(kernels.map((kernel) => kernel.name)).toEqual([CAUSAL_CONV_KERNEL]);
    /** K taps over 2 rows of the batch, 5 output rows and 6 channels: the output, and the gradients of its weighted sum. */
    const convolve = async (taps: number) => {
      const [x, weight, dy] = [sines([2, taps - 1 + 5, 6], 0.37), sines([taps, 6], 0.53), sines([2, 5, 6], 0.11)];
      const outputs = [causalConvolution(x, weight), ...tf.grads((a: tf.Tensor, w: tf.Tensor) => causalConvolution(a, w).mul(dy).sum())([x, weight])];
      const read = await Promise.all(outputs.map(async (t) => Array.from(await t.data())));
      tf.dispose([x, weight, dy, ...outputs]);
      return read;
    };
    for (const taps of [1, 4]) {
      const gpu = await convolve(taps);
      await tf.setBackend('cpu');
      const cpu = await convolve(taps).finally(() => tf.setBackend('webgpu'));
      gpu.forEach((values, k) => values.forEach((value, i) => expect(value).toBeCloseTo(cpu[k]![i]!, 5)));
    }
  });

  test("a decoding step's window append and attention are one kernel each and give the cpu's values", async () => {
    /**
     * For 2 groups x 3 heads x dh, after `cachedRows` rows of which the first `persist` are
     * persistent: the windows of keys and of values, and the query's attention over them.
     */
    const step = async (dh: number, cachedRows: number, keep: number, persist: number) => {
      const [cached, projection, rotation] = [sines([2, 3, cachedRows, dh], 0.37), sines([2, 1, 9 * dh], 0.21), sines([dh, dh], 0.53) as tf.Tensor2D];
      const [keys, values] = [appendToWindow(cached as tf.Tensor4D, projection, 'keys', rotation, keep, persist), appendToWindow(cached as tf.Tensor4D, projection, 'values', null, keep, persist)];
      const outputs = [keys, values, attendFromProjection(projection, rotation, keys, values)];
      const read = await Promise.all(outputs.map(async (t) => ({ shape: t.shape, values: Array.from(await t.data()) })));
      tf.dispose([cached, projection, rotation, ...outputs]);
      return read;
    };
    const [ones, row, identity] = [tf.ones([1, 2, 3, 4]) as tf.Tensor4D, tf.ones([1, 1, 24]), tf.eye(4) as tf.Tensor2D];
    const { kernels } = await tf.profile(() => tf.tidy(() => attendFromProjection(row, identity, ones, appendToWindow(ones, row, 'keys', identity, 2, 1))));
    expect(kernels.map((kernel) => kernel.name)).toEqual([WINDOW_APPEND_KERNEL, PROJECTED_ATTENTION_KERNEL]);
    tf.dispose([ones, row, identity]);
    // Every cached row kept; a sliding window's oldest dropped; a block window's start (none kept); no
    // persistent rows. Heads of 4, and of 100, more columns than a workgroup's threads.
    const cases = [[4, 6, 4, 2], [4, 6, 3, 2], [4, 6, 0, 2], [4, 5, 5, 0], [4, 5, 2, 0], [100, 6, 3, 2]] as const;
    for (const [dh, cachedRows, keep, persist] of cases) {
      const gpu = await step(dh, cachedRows, keep, persist);
      await tf.setBackend('cpu');
      const cpu = await step(dh, cachedRows, keep, persist).finally(() => tf.setBackend('webgpu'));
      expect(gpu.map((w) => w.shape)).toEqual(cpu.map((w) => w.shape));
      // Relative to the largest value: a rotated row sums dh products, in another order.
      const relative = gpu.map((w, k) => {
        const scale = cpu[k]!.values.reduce((max, value) => Math.max(max, Math.abs(value)), 1);
        return w.values.reduce((max, value, i) => Math.max(max, Math.abs(value - cpu[k]!.values[i]!)), 0) / scale;
      });
      expect(relative.filter((difference) => !(difference < 1e-5))).toEqual([]);
    }
  });

  test("a ViT's self-attention from its packed projection is one kernel and gives the cpu's values and gradient", async () => {
    const attentionAndGradient = async (shape: [number, number, number], heads: number) => {
      const [qkv, weights] = [sines(shape, 0.37) as tf.Tensor3D, sines([shape[0], shape[1], shape[2] / 3], 0.11)];
      const outputs = [selfAttention(qkv, heads), tf.grad((x: tf.Tensor) => selfAttention(x as tf.Tensor3D, heads).mul(weights).sum())(qkv)];
      const read = await Promise.all(outputs.map(async (t) => Array.from(await t.data())));
      tf.dispose([qkv, weights, ...outputs]);
      return read;
    };
    const { kernels } = await tf.profile(() => tf.tidy(() => selfAttention(tf.ones([2, 5, 12]) as tf.Tensor3D, 2)));
    expect(kernels.map((kernel) => kernel.name)).toEqual([SELF_ATTENTION_KERNEL]);
    // Two images of five positions, heads of 3; 67 positions, more than a workgroup's threads, heads of 100.
    for (const [shape, heads] of [[[2, 5, 18], 2], [[1, 67, 600], 2]] as [[number, number, number], number][]) {
      const gpu = await attentionAndGradient(shape, heads);
      await tf.setBackend('cpu');
      const cpu = await attentionAndGradient(shape, heads).finally(() => tf.setBackend('webgpu'));
      const relative = gpu.map((values, k) => {
        const scale = cpu[k]!.reduce((max, value) => Math.max(max, Math.abs(value)), 1);
        return values.reduce((max, value, i) => Math.max(max, Math.abs(value - cpu[k]![i]!)), 0) / scale;
      });
      expect(relative.filter((difference) => !(difference < 1e-5))).toEqual([]);
    }
  });

  test("a decoding step's memory read is one kernel and gives the cpu's values, for MLP memories with and without their residual norm", async () => {
    /** A memory of 3 heads of dh; its read below is of 2 rows of a batch, at weights moved off their initial values. */
    const memoryOf = (network: MemoryNetwork, dh: number, qkNorm: boolean) => new NeuralMemory(new Random(7), {
      dim: 16, chunkSize: 4, batchSize: 4, network, weightResidual: false,
      options: {
        heads: 3, dimHead: dh, momentum: true, maxLr: 0.1, qkNorm, maxGradNorm: 1, convKernel: 0, depth: 2, expansionFactor: 2,
        memModelNormAddResidual: false, spectralNormSurprises: false, initDecayBias: -4, minStepSize: 0,
      },
    });
    /** What `rows` projected rows read, as the decoding step reads them, and the kernels it launched. */
    const read = async (network: MemoryNetwork, dh: number, qkNorm: boolean, rows: number) => {
      const mem = memoryOf(network, dh, qkNorm);
      const weights = mem.initialWeights.map((w, i) => tf.broadcastTo(w.expandDims(0), [2, ...w.shape]).add(sines([2, ...w.shape], 0.1 * (i + 1)).mul(0.3)));
      const projected = sines([2, rows, 9 * dh], 0.37);
      const { result, kernels } = await tf.profile(() => mem.retrieve(projected, weights, { decoding: true }));
      const values = Array.from(await (result as tf.Tensor).data());
      tf.dispose([...weights, projected, result as tf.Tensor]);
      mem.dispose();
      return { values, kernels: kernels.map((kernel) => kernel.name) };
    };
    // The default memory (depth 2, its residual norm, normalised queries); a linear one; one of depth
    // 3 with its residual norm. Heads of 4, and of 100, more columns than a workgroup's threads. A
    // hidden layer wider than the kernel's workgroup memory holds is read written out.
    const cases = [[2, 4, true, 4, true, 1], [2, 4, true, 100, true, 3], [1, 1, false, 4, false, 1], [3, 2, true, 6, true, 2], [2, MEMORY_READ_MAX_WIDTH / 4 + 1, true, 4, true, 1]] as const;
    for (const [depth, expansion, residual, dh, qkNorm, rows] of cases) {
      const network = () => memoryNetwork('mlp', depth, expansion, residual);
      const gpu = await read(network(), dh, qkNorm, rows);
      const oneKernel = dh * expansion <= MEMORY_READ_MAX_WIDTH;
      expect(gpu.kernels.includes(MEMORY_READ_KERNEL)).toBe(oneKernel);
      if (oneKernel) expect(gpu.kernels.filter((name) => !['Reshape', 'Transpose', 'BatchMatMul', PRODUCT_KERNEL].includes(name))).toEqual([MEMORY_READ_KERNEL]);
      await tf.setBackend('cpu');
      const cpu = await read(network(), dh, qkNorm, rows).finally(() => tf.setBackend('webgpu'));
      const scale = cpu.values.reduce((max, value) => Math.max(max, Math.abs(value)), 1);
      expect(gpu.values.reduce((max, value, i) => Math.max(max, Math.abs(value - cpu.values[i]!)), 0) / scale).toBeLessThan(1e-5);
    }
  });

  test("a decoding store takes its keys and values in a kernel each, and its surprise through the residual norm in two, and gives the cpu's weights; a training store takes the ops", async () => {
    /** A memory of 3 heads of dh storing one chunk of 5 rows of a batch of 2, from weights moved off their initial values. */
    const stored = async (network: MemoryNetwork, dh: number, qkNorm: boolean, decoding: boolean) => {
      const mem = new NeuralMemory(new Random(7), {
        dim: 16, chunkSize: 5, batchSize: 5, network, weightResidual: false,
        options: {
          heads: 3, dimHead: dh, momentum: true, maxLr: 0.1, qkNorm, maxGradNorm: 1, convKernel: 0, depth: 2, expansionFactor: 2,
          memModelNormAddResidual: true, spectralNormSurprises: false, initDecayBias: -4, minStepSize: 0,
        },
      });
      const weights = mem.initialWeights.map((w, i) => tf.broadcastTo(w.expandDims(0), [2, ...w.shape]).add(sines([2, ...w.shape], 0.1 * (i + 1)).mul(0.3)));
      const momentum = weights.map((w, i) => sines(w.shape, 0.2 * (i + 1)).mul(0.01));
      const chunk = { inputs: sines([2, 5, 16], 0.23), projected: sines([2, 5, 9 * dh], 0.37) };
      const { result, kernels } = await tf.profile(() => {
        const after = mem.store(chunk, weights, momentum, { decoding });
        return [...after.weights, ...after.momentum, after.forgetting];
      });
      const values = await Promise.all((result as tf.Tensor[]).map(async (t) => Array.from(await t.data())));
      tf.dispose([...weights, ...momentum, chunk.inputs, chunk.projected, ...(result as tf.Tensor[])]);
      mem.dispose();
      return { values, kernels: kernels.map((kernel) => kernel.name) };
    };
    // The default memory (depth 2), a linear one and one of depth 3, with heads of 4, and of 100
    // columns, more than a workgroup's threads; one without its residual norm; keys normalised or not.
    const cases = [[2, 4, true, true], [1, 100, false, true], [3, 6, true, true], [2, 5, true, false]] as const;
    for (const [depth, dh, qkNorm, residual] of cases) {
      const network = () => memoryNetwork('mlp', depth, 2, residual);
      const gpu = await stored(network(), dh, qkNorm, true);
      const count = (name: string) => gpu.kernels.filter((kernel) => kernel === name).length;
      expect([count(PROJECTED_HEADS_KERNEL), count(RESIDUAL_NORM_SURPRISE_KERNEL)]).toEqual([2, residual ? 2 : 0]);
      const training = (await stored(network(), dh, qkNorm, false)).kernels;
      expect(training.filter((name) => name === PROJECTED_HEADS_KERNEL || name === RESIDUAL_NORM_SURPRISE_KERNEL)).toEqual([]);
      await tf.setBackend('cpu');
      const cpu = await stored(network(), dh, qkNorm, true).finally(() => tf.setBackend('webgpu'));
      const relative = gpu.values.map((values, k) => {
        const scale = cpu.values[k]!.reduce((max, value) => Math.max(max, Math.abs(value)), 1e-3);
        return values.reduce((max, value, i) => Math.max(max, Math.abs(value - cpu.values[k]![i]!)), 0) / scale;
      });
      expect(relative.filter((difference) => !(difference < 1e-5))).toEqual([]);
    }
  });

  test("a store's clip factor, momentum step and forgetting step are one kernel each and give the values and gradients of the ops written out, on the cpu", async () => {
    expect(await memoryUpdateKernels()).toEqual([CLIP_FACTOR_KERNEL, MOMENTUM_STEP_KERNEL, MOMENTUM_STEP_KERNEL, FORGET_STEP_KERNEL]);
    for (const maxNorm of [0.05, 100]) {
      expect((await differencesFromCpu(() => memoryUpdateOutputs(maxNorm))).filter((difference) => !(difference < 1e-5))).toEqual([]);
    }
  });

  test('x W + b (and its sigmoid, and with a bias a row), x W, the norms, GELU and its derivatives, one query\'s attention and a pre-norm with its product run as one kernel each and give the values and gradients of the ops written out, on the cpu', async () => {
    const { kernels } = await tf.profile(() =>
      tf.tidy(() => {
        const [x, gain, memory, keys] = [tf.ones([2, 8]), tf.ones([8]), tf.ones([1, 2, 1, 8]), tf.ones([1, 2, 5, 8])];
        return [
          affine(x, tf.ones([8, 3]), tf.ones([3])), affine(x, tf.ones([8, 3]), tf.ones([3]), 'sigmoid'), affine(x, tf.ones([8, 3]), tf.ones([2, 3])),
          layerNorm(x, gain, gain, 1e-5), rmsNorm(x, gain, 1e-6), l2Normalize(x, 1e-6),
          residualNorm(memory, memory, memory, 1e-5), gelu(x), geluDerivative(x), geluSecondDerivative(x), attend(memory, keys, keys),
          normalizedAffineGelu(x, gain, 1e-6, tf.ones([8, 3]), tf.ones([3])), normalizedProduct(x, gain, 1e-6, tf.ones([8, 3])), product(x, tf.ones([8, 3])),
        ];
      }),
    );
    expect(kernels.map((kernel) => kernel.name)).toEqual([
      AFFINE_KERNEL, AFFINE_KERNEL, AFFINE_KERNEL, LAYER_NORM_KERNEL, RMS_NORM_KERNEL, L2_NORM_KERNEL, RESIDUAL_NORM_KERNEL,
      GELU_KERNEL, GELU_DERIVATIVE_KERNEL, GELU_SECOND_DERIVATIVE_KERNEL, ATTENTION_KERNEL, NORMALIZED_AFFINE_GELU_KERNEL, NORMALIZED_PRODUCT_KERNEL,
      PRODUCT_KERNEL,
    ]);
    const numbers = (count: number, scale: number, step: number) => Array.from({ length: count }, (_, i) => scale * Math.sin(step * i + 0.5));
    /**
     * Each op's output and the gradients of a weighted sum of it, for rows x cols inputs, read as
     * numbers; the memory's residual norm sees the rows as [B, H, n, cols] with one gamma per B, H,
     * and attention sees them as B x H queries, each over `keys` keys and values of its own.
     */
    const valuesAndGradients = async (rows: number, cols: number, [batch, heads]: [number, number], keys: number) => {
      const x = tf.tensor(numbers(rows * cols, 3, 0.37), [rows, cols]);
      const memoryShape = [batch, heads, rows / (batch * heads), cols];
      const memoryRows = x.reshape(memoryShape);
      const gamma = tf.tensor(numbers(batch * heads * cols, 0.3, 0.5), [batch, heads, 1, cols]);
      const residual = tf.tensor(numbers(rows * cols, 1, 0.29), memoryShape);
      const gain = tf.tensor(numbers(cols, 1, 0.9).map((v) => 1 + 0.1 * v));
      const normBias = tf.tensor(numbers(cols, 0.5, 0.7));
      const [weight, bias] = [tf.tensor(numbers(cols * 3, 0.2, 0.23), [cols, 3]), tf.tensor(numbers(3, 1, 1.3))];
      const rowBias = tf.tensor(numbers(rows * 3, 1, 0.7), [rows, 3]); // a residual stream's rows, added as a bias
      // A feed-forward's first product, or attention's projection: 70 outputs, more than a workgroup's columns.
      const [upWeight, upBias] = [tf.tensor(numbers(cols * 70, 0.2, 0.19), [cols, 70]), tf.tensor(numbers(70, 0.5, 0.9))];
      const query = tf.tensor(numbers(batch * heads * cols, 1, 0.41), [batch, heads, 1, cols]);
      const keysAndValues = (step: number) => tf.tensor(numbers(batch * heads * keys * cols, 2, step), [batch, heads, keys, cols]);
      const [k, v] = [keysAndValues(0.31), keysAndValues(0.17)];
      const weighted = (y: tf.Tensor) => y.mul(tf.tensor(numbers(y.size, 1, 0.11), y.shape)).sum();
      const ops = [
        (a: tf.Tensor, w: tf.Tensor, b: tf.Tensor) => weighted(affine(a, w, b)),
        (a: tf.Tensor, w: tf.Tensor, b: tf.Tensor) => weighted(affine(a, w, b, 'sigmoid')),
        (a: tf.Tensor, w: tf.Tensor, b: tf.Tensor) => weighted(affine(a, w, b)),
        (a: tf.Tensor, g: tf.Tensor, b: tf.Tensor) => weighted(layerNorm(a, g, b, 1e-5)),
        (a: tf.Tensor, g: tf.Tensor) => weighted(rmsNorm(a, g, 1e-6)),
        (a: tf.Tensor) => weighted(l2Normalize(a, 1e-6)),
        (y: tf.Tensor, g: tf.Tensor, r: tf.Tensor) => weighted(residualNorm(y, g, r, 1e-5)),
        (a: tf.Tensor) => weighted(gelu(a)),
        (a: tf.Tensor) => weighted(geluDerivative(a)),
        (a: tf.Tensor) => weighted(geluSecondDerivative(a)),
        (q: tf.Tensor, k: tf.Tensor, v: tf.Tensor) => weighted(attend(q, k, v)),
        (a: tf.Tensor, g: tf.Tensor, w: tf.Tensor, b: tf.Tensor) => weighted(normalizedAffineGelu(a, g, 1e-6, w, b)),
        (a: tf.Tensor, g: tf.Tensor, w: tf.Tensor) => weighted(normalizedProduct(a, g, 1e-6, w)),
        (a: tf.Tensor, w: tf.Tensor) => weighted(product(a, w)),
      ];
      const outputs = [
        ...[affine(x, weight, bias), affine(x, weight, bias, 'sigmoid'), affine(x, weight, rowBias), layerNorm(x, gain, normBias, 1e-5), rmsNorm(x, gain, 1e-6), l2Normalize(x, 1e-6)],
        ...[residualNorm(memoryRows, gamma, residual, 1e-5), gelu(x), geluDerivative(x), geluSecondDerivative(x), attend(query, k, v)],
        normalizedAffineGelu(x, gain, 1e-6, upWeight, upBias), normalizedProduct(x, gain, 1e-6, upWeight), product(x, upWeight),
        ...[
          tf.grads(ops[0]!)([x, weight, bias]),
          tf.grads(ops[1]!)([x, weight, bias]),
          tf.grads(ops[2]!)([x, weight, rowBias]),
          tf.grads(ops[3]!)([x, gain, normBias]),
          tf.grads(ops[4]!)([x, gain]),
          tf.grads(ops[5]!)([x]),
          tf.grads(ops[6]!)([memoryRows, gamma, residual]),
          tf.grads(ops[7]!)([x]),
          tf.grads(ops[8]!)([x]),
          tf.grads(ops[9]!)([x]),
          tf.grads(ops[10]!)([query, k, v]),
          tf.grads(ops[11]!)([x, gain, upWeight, upBias]),
          tf.grads(ops[12]!)([x, gain, upWeight]),
          tf.grads(ops[13]!)([x, upWeight]),
        ].flat(),
      ];
      const read = await Promise.all(outputs.map(async (t) => (await t.data()) as Float32Array));
      tf.dispose([x, memoryRows, gamma, residual, gain, normBias, weight, bias, rowBias, upWeight, upBias, query, k, v, ...outputs]);
      return read;
    };
    // One row of a decoded token, whose query sees one key; rows of 100 with a ragged last workgroup,
    // and more keys than a workgroup's tile; more rows than one dimension of a dispatch holds (65,535),
    // which the backend folds into two. (A pre-norm and its product run as one program up to 16 rows,
    // as the norm's program and tfjs's product for more.)
    const cases: [number, number, [number, number], number][] = [[1, 384, [1, 1], 1], [15, 100, [1, 3], 150], [70_000, 2, [2, 2], 40]];
    for (const [rows, cols, memory, keys] of cases) {
      const gpu = await valuesAndGradients(rows, cols, memory, keys);
      await tf.setBackend('cpu');
      const cpu = await valuesAndGradients(rows, cols, memory, keys).finally(() => tf.setBackend('webgpu'));
      const relative = gpu.map((values, k) => {
        const scale = cpu[k]!.reduce((max, value) => Math.max(max, Math.abs(value)), 1);
        return values.reduce((max, value, i) => Math.max(max, Math.abs(value - cpu[k]![i]!)), 0) / scale;
      });
      // Relative to the largest value: the gradients of W, the gains and gamma sum over many rows
      // (70,000 here) in another order, to some 1e-5 (a pre-norm's gain before a product, whose rows
      // each sum 70 columns first, 1.2e-4); every other value agrees to 1e-6.
      expect(relative.filter((difference) => !(difference < 3e-4))).toEqual([]);
    }
  });
});
