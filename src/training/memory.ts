/**
 * How much memory a training job will take, estimated from its spec before anything is allocated, so
 * that a job too large for the machine is refused at submission (with the field to change) rather
 * than growing the server until WebAssembly aborts.
 *
 * The estimate, per data-parallel replica (each holds its own model and optimizer):
 * - parameters: counted exactly from the model's options (the same layers model/ builds), and taken
 *   4 bytes x 4 times: the weights, their gradients and AdamW's two moments (a frozen vision encoder
 *   has weights only);
 * - activations of one micro-batch: the tensors the forward pass keeps for the backward one, layer by
 *   layer (residual stream, attention scores, feed-forward, the neural memory's per-chunk weights and
 *   its MLP's activations, logits; the ViT's tokens and attention scores), doubled for the gradients
 *   of the backward pass. Approximate: it follows the shapes, not every temporary.
 * It is an estimate, not a measurement: it errs high rather than low.
 */
import { memoryNetwork } from '../../model/memory-networks.ts';
import { resolveConfig, type MultimodalMACConfig, type MultimodalMACOptions } from '../../model/config.ts';
import type { JobSpec } from './spec.ts';

const FLOAT = 4;
/** Weights, their gradients, and AdamW's first and second moments. */
const COPIES_PER_TRAINED_PARAMETER = 4;
/** The backward pass holds about as much again as the forward pass keeps. */
const BACKWARD_FACTOR = 2;
/** The largest heap one WebAssembly instance (one worker thread) can grow to: 64K pages of 64 KiB, less one. */
export const WASM_HEAP_BYTES = 4294901760;

export interface MemoryEstimate {
  parameters: number;
  /** Parameters that the optimizer trains (all, or all but a frozen vision encoder). */
  trainedParameters: number;
  /** Bytes of weights, gradients and optimizer state, per replica. */
  parameterBytes: number;
  /** Bytes of the activations of one micro-batch, per replica. */
  activationBytes: number;
  replicas: number;
  /** Per replica: what one worker thread holds. */
  replicaBytes: number;
  /** All replicas together. */
  totalBytes: number;
  /** The stage that needs the most: vision pretraining (one thread) or captions. */
  stage: 'vision' | 'captions';
}

/** The estimate for `spec`, whose model is `model` (the options of a base checkpoint, or the spec's own). */
export function estimateJobMemory(spec: JobSpec, model: MultimodalMACOptions): MemoryEstimate {
  const config = resolveConfig(model);
  const counts = parameterCounts(config);
  const parameters = counts.vision + counts.projection + counts.text;
  const replicas = spec.train.workers;
  // Caption stage: the micro-batch is split between the replicas.
  const rows = Math.ceil(spec.train.batch_size / replicas);
  const withImages = spec.data.type !== 'text' && spec.data.type !== 'passkey';
  const trainedParameters = spec.train.freeze_vision ? parameters - counts.vision : parameters;
  const captionActivations = rows * (textActivations(config, spec.data.max_tokens) + (withImages ? visionActivations(config) : 0));
  const caption = (parameters + (COPIES_PER_TRAINED_PARAMETER - 1) * trainedParameters) * FLOAT + BACKWARD_FACTOR * FLOAT * captionActivations;
  // Vision stage (one thread): the encoder and its heads alone, on its own batch.
  const vision = spec.vision_pretraining
    ? COPIES_PER_TRAINED_PARAMETER * counts.vision * FLOAT + BACKWARD_FACTOR * FLOAT * spec.vision_pretraining.batch_size * visionActivations(config)
    : 0;
  const stage = vision > caption ? 'vision' : 'captions';
  const parameterBytes = stage === 'vision' ? COPIES_PER_TRAINED_PARAMETER * counts.vision * FLOAT : (parameters + (COPIES_PER_TRAINED_PARAMETER - 1) * trainedParameters) * FLOAT;
  const replicaBytes = Math.max(caption, vision);
  return {
    parameters,
    trainedParameters,
    parameterBytes,
    activationBytes: replicaBytes - parameterBytes,
    replicas,
    replicaBytes,
    totalBytes: Math.max(replicas * caption, vision),
    stage,
  };
}

/** Parameters of each part, as model/ creates them. */
export function parameterCounts(c: MultimodalMACConfig): { vision: number; projection: number; text: number } {
  const linear = (inDim: number, outDim: number, bias = true) => inDim * outDim + (bias ? outDim : 0);
  const layerNorm = (dim: number) => 2 * dim;

  const vd = c.visionDim;
  const patches = (c.imageSize / c.patchSize) ** 2;
  const visionBlock = layerNorm(vd) + linear(vd, 3 * vd) + linear(vd, vd) + layerNorm(vd) + linear(vd, c.visionMlpDim) + linear(c.visionMlpDim, vd);
  const channels = [c.inChannels, ...c.visionStem];
  const stem = c.visionStem.reduce((sum, out, i) => sum + 9 * channels[i]! * out + out, 0) + (c.visionStem.length > 0 ? linear(channels.at(-1)!, vd) : 0);
  const vision = linear(c.inChannels * c.patchSize ** 2, vd) + vd + (patches + 1) * vd + c.visionDepth * visionBlock + layerNorm(vd) + stem;

  const projection = linear(vd, c.projectionDim) + layerNorm(c.projectionDim) + linear(c.projectionDim, c.textDim);

  const d = c.textDim;
  const inner = c.heads * c.dimHead;
  const hidden = Math.round(c.ffMult * d);
  const attention = linear(d, 3 * inner, false) + linear(inner, d, false) + (c.numPersistMemTokens > 0 ? 2 * c.heads * c.numPersistMemTokens * c.dimHead : 0);
  const block = d + attention + d + linear(d, hidden) + linear(hidden, d);
  // Each attention after the first mixes in the first one's values; each memory after the first, the weights of the one before.
  const valueResidual = c.acceptValueResidual ? (c.depth - 1) * linear(d, c.heads) : 0;
  const m = c.neuralMemoryKwargs;
  const memoryInner = m.heads * m.dimHead;
  const memory =
    d + 3 * linear(d, memoryInner, false) + 3 * linear(d, m.heads) + linear(memoryInner, d, false) + (m.convKernel > 0 ? 3 * m.convKernel * memoryInner : 0) +
    m.heads * memoryWeightsPerHead(c);
  const weightResidual = c.neuralMemWeightResidual ? Math.max(c.neuralMemoryLayers.length - 1, 0) * linear(d, m.heads) : 0;
  const text = c.numTokens * d + c.numLongtermMemTokens * d + c.depth * block + valueResidual + c.neuralMemoryLayers.length * memory + weightResidual + d + linear(d, c.numTokens, false);
  return { vision, projection, text };
}

/** Floats in one head's memory network, as model/memory-networks.ts lays them out. */
function memoryWeightsPerHead(c: MultimodalMACConfig): number {
  const m = c.neuralMemoryKwargs;
  const network = memoryNetwork(c.neuralMemoryModel, m.depth, m.expansionFactor, m.memModelNormAddResidual);
  return network.weightSpecs(m.dimHead).reduce((sum, { shape }) => sum + shape.reduce((a, b) => a * b, 1), 0);
}

/** Floats the text model keeps for one row of `tokens` tokens. */
function textActivations(c: MultimodalMACConfig, tokens: number): number {
  const length = tokens + c.numImageTokens + Math.ceil(tokens / c.segmentLen) * c.numLongtermMemTokens;
  const d = c.textDim;
  const inner = c.heads * c.dimHead;
  const window = c.segmentLen + c.numLongtermMemTokens;
  const keys = (c.slidingWindowAttn ? 2 * window : window) + c.numPersistMemTokens;
  const perLayer = length * (8 * d + 4 * inner + 2 * Math.round(c.ffMult * d)) + 2 * c.heads * length * keys;
  const m = c.neuralMemoryKwargs;
  const chunks = Math.ceil(length / c.neuralMemorySegmentLen);
  const memoryHidden = m.dimHead * m.expansionFactor;
  const perMemory =
    length * (2 * d + 3 * m.heads * m.dimHead + 3 * m.heads) +
    // Per chunk: the weights, momentum and surprise of every head, and its memory network's activations.
    chunks * m.heads * (3 * memoryWeightsPerHead(c) + 2 * c.neuralMemorySegmentLen * memoryHidden * m.depth);
  return c.depth * perLayer + c.neuralMemoryLayers.length * perMemory + 3 * length * c.numTokens;
}

/** Floats the vision encoder keeps for one image. */
function visionActivations(c: MultimodalMACConfig): number {
  const tokens = (c.imageSize / c.patchSize) ** 2 + 1;
  const perLayer = tokens * (8 * c.visionDim + 2 * c.visionMlpDim) + 2 * c.visionHeads * tokens * tokens;
  let side = c.imageSize;
  let stem = 0;
  c.visionStem.forEach((out, i) => {
    if (i < c.visionStem.length - 1) side /= 2;
    stem += 2 * side * side * out;
  });
  return c.inChannels * c.imageSize ** 2 + c.visionDepth * perLayer + stem;
}

/** Bytes as a short human figure: 1.5 GiB, 300 MiB. */
export function formatBytes(bytes: number): string {
  const units = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value >= 100 || unit === 0 ? Math.round(value) : value.toFixed(1)} ${units[unit]}`;
}
