/**
 * Every constructor option of MultimodalMAC in one place: the original extension's keyword
 * arguments in camelCase, their defaults, and the checks that reject what we do not support.
 */
import type { MemoryNetwork } from './memory-networks.ts';

export type MemoryModelKind = 'mlp' | 'linear' | 'swiglu';

export interface NeuralMemoryOptions {
  /** Layers of the memory MLP (`mlp` kind). */
  depth: number;
  /** Hidden width of the memory network as a multiple of its head dimension. */
  expansionFactor: number;
  heads: number;
  dimHead: number;
  /** S_t = eta_t * S_{t-1} - g_t when on; S_t = -g_t when off. */
  momentum: boolean;
  /**
   * Upper bound of the learned, data-dependent inner step size theta. The inner loss is averaged
   * over the head's features, as in the reference implementation.
   */
  maxLr: number;
  /** L2-normalise queries and keys: keeps the inner loss bounded whatever the layer input's scale. */
  qkNorm: boolean;
  /** Clip each head's surprise to this norm (0 = off). */
  maxGradNorm: number;
  /** Rows of the causal depthwise convolution after the query, key and value projections (0 = none). */
  convKernel: number;
  /** Wrap the memory network as LayerNorm(M(x)) * (1 + gamma) + x (the reference's mem_model_norm_add_residual). */
  memModelNormAddResidual: boolean;
  /** Orthogonalise each update by Newton-Schulz iterations before it is added (spectral_norm_surprises). */
  spectralNormSurprises: boolean;
  /** Initial bias of the forget gate alpha = sigmoid(linear(x)): 0 starts it at 1/2 (init_decay_bias). */
  initDecayBias: number;
}

/** How the patch grid is pooled into image tokens (MultimodalMACConfig.imageTokenPool). */
export type ImageTokenPool = 'mean' | 'max';

export interface MultimodalMACConfig {
  // Vision Transformer
  imageSize: number;
  patchSize: number;
  inChannels: number;
  /**
   * Channels of the 3 x 3 convolutions (each but the last halving the map) whose ReLU features,
   * max-pooled over each patch, add their embedding to that of the patch's pixels (empty: none).
   */
  visionStem: number[];
  visionDim: number;
  visionDepth: number;
  visionHeads: number;
  visionMlpDim: number;
  visionDropout: number;
  // MAC transformer
  numTokens: number;
  textDim: number;
  depth: number;
  segmentLen: number;
  dimHead: number;
  heads: number;
  ffMult: number;
  numPersistMemTokens: number;
  numLongtermMemTokens: number;
  slidingWindowAttn: boolean;
  /** Each attention after the first mixes in the first one's values, a learned share (the reference's accept_value_residual). */
  acceptValueResidual: boolean;
  // Neural memory
  /** 1-based layer numbers that carry a neural memory. */
  neuralMemoryLayers: number[];
  /** Tokens per memory chunk; reads inside a chunk use the weights from before it. */
  neuralMemorySegmentLen: number;
  /** Tokens between weight updates; a multiple of the chunk, whose surprises all use the batch's starting weights. */
  neuralMemoryBatchSize: number;
  neuralMemGateAttnOutput: boolean;
  /** Each memory layer after the first takes its surprises at its weights plus a learned share of the layer before's. */
  neuralMemWeightResidual: boolean;
  neuralMemoryModel: MemoryModelKind | MemoryNetwork;
  neuralMemoryKwargs: NeuralMemoryOptions;
  // Fusion
  projectionDim: number;
  fusionDropout: number;
  numImageTokens: number;
  /**
   * How the patch grid is pooled into numImageTokens regions: 'max' keeps a small object's features
   * at full strength where a mean dilutes them with the background around it.
   */
  imageTokenPool: ImageTokenPool;
  // Image processor
  imageMean: [number, number, number];
  imageStd: [number, number, number];
  imageResize: 'fill' | 'cover' | 'contain';
  /** Seed of the weight initialisation and of dropout. */
  seed: number;
}

export type MultimodalMACOptions = Partial<Omit<MultimodalMACConfig, 'neuralMemoryKwargs'>> & {
  neuralMemoryKwargs?: Partial<NeuralMemoryOptions>;
  // The reference implementation's experimental switches: only their neutral values are accepted.
  numResidualStreams?: number;
  neuralMemoryQkvReceivesDiffViews?: boolean;
  neuralMemoryAddValueResidual?: boolean;
  useFlexAttn?: boolean;
};

const DEFAULTS = {
  imageSize: 224,
  patchSize: 16,
  inChannels: 3,
  visionStem: [] as number[],
  visionDim: 768,
  visionDepth: 12,
  visionHeads: 12,
  visionMlpDim: 3072,
  visionDropout: 0.1,
  numTokens: 256,
  textDim: 384,
  depth: 8,
  segmentLen: 32,
  dimHead: 64,
  heads: 8,
  ffMult: 4,
  numPersistMemTokens: 4,
  numLongtermMemTokens: 4,
  slidingWindowAttn: false,
  acceptValueResidual: false,
  neuralMemGateAttnOutput: false,
  neuralMemWeightResidual: false,
  neuralMemoryModel: 'mlp' as MemoryModelKind,
  projectionDim: 512,
  fusionDropout: 0.1,
  numImageTokens: 1,
  imageTokenPool: 'mean' as ImageTokenPool,
  imageMean: [0.5, 0.5, 0.5] as [number, number, number],
  imageStd: [0.5, 0.5, 0.5] as [number, number, number],
  imageResize: 'fill' as const,
  seed: 0,
};

const MEMORY_DEFAULTS = {
  depth: 2, expansionFactor: 4, momentum: true, maxLr: 0.1, qkNorm: true, maxGradNorm: 1, convKernel: 0,
  memModelNormAddResidual: true, spectralNormSurprises: false, initDecayBias: -4,
};

const EXPERIMENTAL_NEUTRAL: Record<string, unknown> = {
  numResidualStreams: 1,
  neuralMemoryQkvReceivesDiffViews: false,
  neuralMemoryAddValueResidual: false,
  useFlexAttn: false,
};

export class ConfigError extends Error {
  override name = 'ConfigError';
}

const KNOWN = new Set([...Object.keys(DEFAULTS), 'neuralMemoryLayers', 'neuralMemorySegmentLen', 'neuralMemoryBatchSize', 'neuralMemoryKwargs', ...Object.keys(EXPERIMENTAL_NEUTRAL)]);
const KNOWN_MEMORY = new Set([...Object.keys(MEMORY_DEFAULTS), 'heads', 'dimHead']);

/** Fills in defaults and checks every option; the error names the first offending option. */
export function resolveConfig(options: MultimodalMACOptions = {}): MultimodalMACConfig {
  for (const key of Object.keys(options)) {
    if (!KNOWN.has(key)) throw new ConfigError(`unknown option '${key}'`);
  }
  for (const [key, neutral] of Object.entries(EXPERIMENTAL_NEUTRAL)) {
    const value = (options as Record<string, unknown>)[key];
    if (value !== undefined && value !== neutral) {
      throw new ConfigError(`option '${key}' = ${JSON.stringify(value)} is not supported (only ${JSON.stringify(neutral)})`);
    }
  }
  for (const key of Object.keys(options.neuralMemoryKwargs ?? {})) {
    if (!KNOWN_MEMORY.has(key)) throw new ConfigError(`unknown option 'neuralMemoryKwargs.${key}'`);
  }
  const base = { ...DEFAULTS, ...withoutUndefined(options) };
  const depth = base.depth;
  const neuralMemorySegmentLen = options.neuralMemorySegmentLen ?? base.segmentLen + base.numLongtermMemTokens;
  const config: MultimodalMACConfig = {
    ...base,
    neuralMemoryLayers: options.neuralMemoryLayers ?? Array.from({ length: depth }, (_, i) => i + 1),
    neuralMemorySegmentLen,
    neuralMemoryBatchSize: options.neuralMemoryBatchSize ?? neuralMemorySegmentLen,
    neuralMemoryKwargs: {
      ...MEMORY_DEFAULTS,
      heads: base.heads,
      dimHead: base.dimHead,
      ...withoutUndefined(options.neuralMemoryKwargs ?? {}),
    },
  };
  for (const key of EXPERIMENTAL_KEYS) delete (config as unknown as Record<string, unknown>)[key];
  validate(config);
  return config;
}

const EXPERIMENTAL_KEYS = Object.keys(EXPERIMENTAL_NEUTRAL);

function withoutUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

function validate(c: MultimodalMACConfig): void {
  const positiveInts: (keyof MultimodalMACConfig)[] = [
    'imageSize', 'patchSize', 'inChannels', 'visionDim', 'visionDepth', 'visionHeads', 'visionMlpDim',
    'numTokens', 'textDim', 'depth', 'segmentLen', 'dimHead', 'heads', 'projectionDim', 'numImageTokens',
    'neuralMemorySegmentLen', 'neuralMemoryBatchSize',
  ];
  for (const key of positiveInts) requirePositiveInt(key, c[key]);
  for (const key of ['numPersistMemTokens', 'numLongtermMemTokens'] as const) {
    if (!Number.isInteger(c[key]) || c[key] < 0) fail(key, c[key], 'a whole number >= 0');
  }
  for (const key of ['visionDropout', 'fusionDropout'] as const) {
    if (!(c[key] >= 0 && c[key] < 1)) fail(key, c[key], 'a rate in [0, 1)');
  }
  if (!(c.ffMult > 0)) fail('ffMult', c.ffMult, 'a positive number');
  if (c.numTokens !== 256) fail('numTokens', c.numTokens, '256 (the byte tokenizer)');
  if (c.imageSize % c.patchSize !== 0) fail('patchSize', c.patchSize, `a divisor of imageSize (${c.imageSize})`);
  if (!Array.isArray(c.visionStem) || c.visionStem.some((n) => !Number.isInteger(n) || n < 1)) {
    fail('visionStem', c.visionStem, 'a list of channel counts, each a whole number >= 1');
  }
  const halvings = Math.max(c.visionStem.length - 1, 0);
  if (c.patchSize % 2 ** halvings !== 0) {
    fail('visionStem', c.visionStem, `at most ${Math.log2(c.patchSize & -c.patchSize) + 1} convolutions: all but the last halve the map, and patchSize (${c.patchSize}) must be a whole number of halvings`);
  }
  if (c.visionDim % c.visionHeads !== 0) fail('visionHeads', c.visionHeads, `a divisor of visionDim (${c.visionDim})`);
  if (c.dimHead % 2 !== 0) fail('dimHead', c.dimHead, 'even (rotary embeddings rotate pairs)');
  const patches = (c.imageSize / c.patchSize) ** 2;
  // Pooled over a grid of regions, each at least one patch wide and high.
  const side = c.imageSize / c.patchSize;
  const rowsOf = (k: number) => { let r = Math.floor(Math.sqrt(k)); while (k % r !== 0) r--; return r; };
  if (c.numImageTokens > patches || rowsOf(c.numImageTokens) > side || c.numImageTokens / rowsOf(c.numImageTokens) > side) {
    fail('numImageTokens', c.numImageTokens, `a number of regions that fits the ${side} x ${side} patch grid`);
  }
  if (c.numImageTokens > c.segmentLen) fail('numImageTokens', c.numImageTokens, `at most segmentLen (${c.segmentLen}): an image's tokens share one attention segment`);
  if (!Array.isArray(c.neuralMemoryLayers) || c.neuralMemoryLayers.some((l) => !Number.isInteger(l) || l < 1 || l > c.depth)) {
    fail('neuralMemoryLayers', c.neuralMemoryLayers, `layer numbers from 1 to depth (${c.depth})`);
  }
  if (c.neuralMemoryBatchSize % c.neuralMemorySegmentLen !== 0) {
    fail('neuralMemoryBatchSize', c.neuralMemoryBatchSize, `a multiple of neuralMemorySegmentLen (${c.neuralMemorySegmentLen})`);
  }
  if (typeof c.neuralMemoryModel === 'string' && !['mlp', 'linear', 'swiglu'].includes(c.neuralMemoryModel)) {
    fail('neuralMemoryModel', c.neuralMemoryModel, "'mlp', 'linear', 'swiglu' or a memory network object");
  }
  const m = c.neuralMemoryKwargs;
  for (const key of ['depth', 'expansionFactor', 'heads', 'dimHead'] as const) requirePositiveInt(`neuralMemoryKwargs.${key}`, m[key]);
  if (typeof m.momentum !== 'boolean') fail('neuralMemoryKwargs.momentum', m.momentum, 'true or false');
  for (const key of ['qkNorm', 'memModelNormAddResidual', 'spectralNormSurprises'] as const) {
    if (typeof m[key] !== 'boolean') fail(`neuralMemoryKwargs.${key}`, m[key], 'true or false');
  }
  for (const key of ['neuralMemWeightResidual', 'acceptValueResidual'] as const) {
    if (typeof c[key] !== 'boolean') fail(key, c[key], 'true or false');
  }
  if (!Number.isFinite(m.initDecayBias)) fail('neuralMemoryKwargs.initDecayBias', m.initDecayBias, 'a number');
  if (!(m.maxLr > 0)) fail('neuralMemoryKwargs.maxLr', m.maxLr, 'a positive number');
  if (!(m.maxGradNorm >= 0)) fail('neuralMemoryKwargs.maxGradNorm', m.maxGradNorm, 'a number >= 0 (0 = off)');
  if (!Number.isInteger(m.convKernel) || m.convKernel < 0) fail('neuralMemoryKwargs.convKernel', m.convKernel, 'a whole number >= 0 (0 = none)');
  for (const key of ['imageMean', 'imageStd'] as const) {
    const v = c[key];
    if (!Array.isArray(v) || v.length !== 3 || v.some((x) => typeof x !== 'number' || !Number.isFinite(x))) fail(key, v, 'three numbers');
  }
  if (c.imageStd.some((x) => x <= 0)) fail('imageStd', c.imageStd, 'three positive numbers');
  if (!['mean', 'max'].includes(c.imageTokenPool)) fail('imageTokenPool', c.imageTokenPool, "'mean' or 'max'");
  if (!['fill', 'cover', 'contain'].includes(c.imageResize)) fail('imageResize', c.imageResize, "'fill', 'cover' or 'contain'");
  if (!Number.isInteger(c.seed)) fail('seed', c.seed, 'a whole number');
}

function requirePositiveInt(name: string, value: unknown): void {
  if (!Number.isInteger(value) || (value as number) < 1) fail(name, value, 'a whole number >= 1');
}

function fail(name: string, value: unknown, expected: string): never {
  throw new ConfigError(`option '${name}' must be ${expected}, got ${JSON.stringify(value)}`);
}

/** The config as it is stored in config.json: a custom memory network object cannot be saved. */
export function serializableConfig(c: MultimodalMACConfig): Record<string, unknown> {
  if (typeof c.neuralMemoryModel !== 'string') {
    throw new ConfigError(`a model whose neuralMemoryModel is a custom object ('${c.neuralMemoryModel.kind}') cannot be saved to config.json`);
  }
  return { ...c };
}
