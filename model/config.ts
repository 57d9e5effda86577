/**
 * Every constructor option of MultimodalMAC in one place: the original extension's keyword
 * arguments in camelCase. Each option is written once, in a table that gives its default and what a
 * valid value is; the config's type, the defaults, the known names and the checks all follow from
 * the tables. Checks between options (a divisor, a multiple, a fit) come after them.
 */
import type { MemoryNetwork } from './memory-networks.ts';

export class ConfigError extends Error {
  override name = 'ConfigError';

  /** `option`: the option at fault, as the config spells it (neuralMemoryKwargs.maxLr). */
  constructor(message: string, readonly option?: string) {
    super(message);
  }
}

/** What a valid value is, when `value` is not one; undefined when it is. */
type Rule = (value: unknown) => string | undefined;

/** One option: its default (which may follow from the options resolved before it) and its rule. */
interface Option<T, Context> {
  readonly default: (context: Context) => T;
  readonly rule: Rule;
}

/** An option whose default is a constant; arrays and objects are copied, so configs never share them. */
function option<T>(value: T, rule: Rule): Option<T, unknown> {
  return { default: () => structuredClone(value), rule };
}

/** An option whose default follows from the options resolved before it. */
function derived<T, Context>(value: (context: Context) => T, rule: Rule): Option<T, Context> {
  return { default: value, rule };
}

/** An option that takes one of a few names; the names are its type. */
function choice<const K extends string>(value: NoInfer<K>, kinds: readonly K[]): Option<K, unknown> {
  return option(value, oneOf(kinds));
}

/** The config a table of options resolves to, each option's type that of its default. */
type Resolved<Table> = { -readonly [K in keyof Table]: Table[K] extends Option<infer T, never> ? T : never };

const isWhole = (value: unknown): value is number => Number.isInteger(value);
const wholeAtLeast = (min: number, note = ''): Rule => (value) => (isWhole(value) && value >= min ? undefined : `a whole number >= ${min}${note}`);
const POSITIVE_WHOLE = wholeAtLeast(1);
const WHOLE: Rule = (value) => (isWhole(value) ? undefined : 'a whole number');
const FLAG: Rule = (value) => (typeof value === 'boolean' ? undefined : 'true or false');
const POSITIVE: Rule = (value) => (typeof value === 'number' && Number.isFinite(value) && value > 0 ? undefined : 'a positive number');
const RATE: Rule = (value) => (typeof value === 'number' && value >= 0 && value < 1 ? undefined : 'a rate in [0, 1)');
const FINITE: Rule = (value) => (typeof value === 'number' && Number.isFinite(value) ? undefined : 'a number');
const THREE_NUMBERS: Rule = (value) => (Array.isArray(value) && value.length === 3 && value.every((x) => typeof x === 'number' && Number.isFinite(x)) ? undefined : 'three numbers');
const listOf = (what: string, item: (value: unknown) => boolean): Rule => (value) => (Array.isArray(value) && value.every(item) ? undefined : what);
/** The first rule's complaint, so that the simplest one is named; a later rule may count on the earlier ones. */
const allOf = (...rules: Rule[]): Rule => (value) => {
  for (const rule of rules) {
    const problem = rule(value);
    if (problem !== undefined) return problem;
  }
  return undefined;
};

function oneOf(kinds: readonly string[], or = ''): Rule {
  const quoted = kinds.map((kind) => `'${kind}'`);
  const named = or ? [...quoted, or] : quoted;
  const list = `${named.slice(0, -1).join(', ')} or ${named.at(-1)}`;
  return (value) => (kinds.includes(value as string) ? undefined : list);
}

export const MEMORY_MODEL_KINDS = ['mlp', 'linear', 'swiglu'] as const;
export type MemoryModelKind = (typeof MEMORY_MODEL_KINDS)[number];
const isMemoryNetwork = (value: unknown): value is MemoryNetwork =>
  typeof value === 'object' && value !== null && typeof (value as MemoryNetwork).kind === 'string' && typeof (value as MemoryNetwork).forward === 'function';
const MEMORY_MODEL: Rule = (value) => (isMemoryNetwork(value) ? undefined : oneOf(MEMORY_MODEL_KINDS, 'a memory network object')(value));

const MODEL_OPTIONS = {
  // Vision Transformer
  imageSize: option(224, POSITIVE_WHOLE),
  patchSize: option(16, POSITIVE_WHOLE),
  /** Only 3: every image is read as RGB (the image processor, the server, the trainer's data), normalised by imageMean and imageStd. */
  inChannels: option(3, (value) => (value === 3 ? undefined : '3 (images are read as RGB)')),
  /**
   * Channels of the 3 x 3 convolutions (each but the last halving the map) whose ReLU features,
   * max-pooled over each patch, add their embedding to that of the patch's pixels (empty: none).
   */
  visionStem: option<number[]>([], listOf('a list of channel counts, each a whole number >= 1', (n) => isWhole(n) && n >= 1)),
  visionDim: option(768, POSITIVE_WHOLE),
  visionDepth: option(12, POSITIVE_WHOLE),
  visionHeads: option(12, POSITIVE_WHOLE),
  visionMlpDim: option(3072, POSITIVE_WHOLE),
  visionDropout: option(0.1, RATE),
  // MAC transformer
  numTokens: option(256, (value) => (value === 256 ? undefined : '256 (the byte tokenizer)')),
  textDim: option(384, POSITIVE_WHOLE),
  depth: option(8, POSITIVE_WHOLE),
  segmentLen: option(32, POSITIVE_WHOLE),
  dimHead: option(64, allOf(POSITIVE_WHOLE, (value) => ((value as number) % 2 === 0 ? undefined : 'even (rotary embeddings rotate pairs)'))),
  heads: option(8, POSITIVE_WHOLE),
  ffMult: option(4, POSITIVE),
  numPersistMemTokens: option(4, wholeAtLeast(0)),
  numLongtermMemTokens: option(4, wholeAtLeast(0)),
  slidingWindowAttn: option(false, FLAG),
  /** Each attention after the first mixes in the first one's values, a learned share (the reference's accept_value_residual). */
  acceptValueResidual: option(false, FLAG),
  // Neural memory
  neuralMemGateAttnOutput: option(false, FLAG),
  /** Each memory layer after the first takes its surprises at its weights plus a learned share of the layer before's. */
  neuralMemWeightResidual: option(false, FLAG),
  neuralMemoryModel: option<MemoryModelKind | MemoryNetwork>('mlp', MEMORY_MODEL),
  /**
   * A text row's memory convolution (neuralMemoryKwargs.convKernel) reaches back over text rows only,
   * past the long-term memory tokens between segments: without it, a key that spans a segment
   * boundary is made of memory tokens where one inside a segment holds the text before it, and the
   * memory cannot recall it by that text (docs/long-context.md).
   */
  neuralMemConvSkipsMemTokens: option(false, FLAG),
  /**
   * Every neural memory starts afresh (its initial weights, no momentum) at the attention segment
   * that holds an image: what a caption needs the memory to carry past that segment is the image,
   * and a memory still full of a long prompt's text loses it (docs/bundled-model.md, "Long prompts").
   * The text before the image reaches the caption only through the image segment's attention.
   */
  neuralMemResetAtImages: option(false, FLAG),
  // Fusion
  projectionDim: option(512, POSITIVE_WHOLE),
  fusionDropout: option(0.1, RATE),
  numImageTokens: option(1, POSITIVE_WHOLE),
  /**
   * How the patch grid is pooled into numImageTokens regions: 'max' keeps a small object's features
   * at full strength where a mean dilutes them with the background around it.
   */
  imageTokenPool: choice('mean', ['mean', 'max']),
  /**
   * The latest offset in an attention segment at which an image starts; one that would start later
   * moves, behind spaces, to the next segment's start (withImageSlots). What follows an image in its
   * segment sees it through attention, and only through the memories after that, so a captioner
   * captions well only where its training put images. The default keeps an image whole, no more.
   */
  maxImageOffset: derived((c: { segmentLen: number; numImageTokens: number }) => c.segmentLen - c.numImageTokens, WHOLE),
  // Image processor
  imageMean: option<[number, number, number]>([0.5, 0.5, 0.5], THREE_NUMBERS),
  imageStd: option<[number, number, number]>([0.5, 0.5, 0.5], allOf(THREE_NUMBERS, (value) => ((value as number[]).every((x) => x > 0) ? undefined : 'three positive numbers'))),
  imageResize: choice('fill', ['fill', 'cover', 'contain']),
  /** Seed of the weight initialisation and of dropout. */
  seed: option(0, WHOLE),
};

type ModelOptions = Resolved<typeof MODEL_OPTIONS>;

/** Where the neural memory sits and how it steps: the defaults follow from the transformer's options. */
const MEMORY_LAYOUT_OPTIONS = {
  /** 1-based layer numbers that carry a neural memory (all of them by default; checked against depth below). */
  neuralMemoryLayers: derived((c: ModelOptions) => Array.from({ length: c.depth }, (_, i) => i + 1), listOf('a list of layer numbers', () => true)),
  /** Tokens per memory chunk; reads inside a chunk use the weights from before it. */
  neuralMemorySegmentLen: derived((c: ModelOptions) => c.segmentLen + c.numLongtermMemTokens, POSITIVE_WHOLE),
  /** Tokens between weight updates; a multiple of the chunk, whose surprises all use the batch's starting weights. */
  neuralMemoryBatchSize: derived((c: ModelOptions & { neuralMemorySegmentLen: number }) => c.neuralMemorySegmentLen, POSITIVE_WHOLE),
};

/** The memory network's own options (the reference's neural_memory_kwargs). */
const MEMORY_OPTIONS = {
  /** Layers of the memory MLP (`mlp` kind). */
  depth: option(2, POSITIVE_WHOLE),
  /** Hidden width of the memory network as a multiple of its head dimension. */
  expansionFactor: option(4, POSITIVE_WHOLE),
  heads: derived((c: ModelOptions) => c.heads, POSITIVE_WHOLE),
  dimHead: derived((c: ModelOptions) => c.dimHead, POSITIVE_WHOLE),
  /** S_t = eta_t * S_{t-1} - g_t when on; S_t = -g_t when off. */
  momentum: option(true, FLAG),
  /**
   * Upper bound of the learned, data-dependent inner step size theta. The inner loss is averaged
   * over the head's features, as in the reference implementation.
   */
  maxLr: option(0.1, POSITIVE),
  /**
   * Writes of less than this fraction of maxLr are dropped, and the rest measured from it:
   * theta = maxLr * relu(s - m) / (1 - m), s = sigmoid(linear(x)). A sigmoid is never zero, and a
   * write of 1e-4 on every row of a repeated text adds up over 64K tokens (docs/long-context.md); 0 = off.
   */
  minStepSize: option(0, (value) => (typeof value === 'number' && value >= 0 && value < 1 ? undefined : 'a number in [0, 1) (0 = off)')),
  /** L2-normalise queries and keys: keeps the inner loss bounded whatever the layer input's scale. */
  qkNorm: option(true, FLAG),
  /** Clip each head's surprise to this norm (0 = off). */
  maxGradNorm: option(1, (value) => (typeof value === 'number' && value >= 0 ? undefined : 'a number >= 0 (0 = off)')),
  /** Rows of the causal depthwise convolution after the query, key and value projections (0 = none). */
  convKernel: option(0, wholeAtLeast(0, ' (0 = none)')),
  /** Wrap the memory network as LayerNorm(M(x)) * (1 + gamma) + x (the reference's mem_model_norm_add_residual). */
  memModelNormAddResidual: option(true, FLAG),
  /** Orthogonalise each update by Newton-Schulz iterations before it is added (spectral_norm_surprises). */
  spectralNormSurprises: option(false, FLAG),
  /** Initial bias of the forget gate alpha = sigmoid(linear(x)): 0 starts it at 1/2 (init_decay_bias). */
  initDecayBias: option(-4, FINITE),
};

/**
 * The reference's names (its NeuralMemory's keyword arguments) for memory options of ours: its
 * qk_rmsnorm normalises queries and keys as qkNorm does (here to unit length, without a learned
 * gain), and its default_step_transform_max_lr bounds the step size sigmoid(linear(x)) * maxLr.
 */
const MEMORY_ALIASES = {
  qkRmsnorm: 'qkNorm',
  defaultStepTransformMaxLr: 'maxLr',
} as const satisfies Record<string, keyof typeof MEMORY_OPTIONS>;

/** The reference implementation's experimental switches: known, but only their neutral values are accepted. */
const EXPERIMENTAL_NEUTRAL = {
  numResidualStreams: 1,
  neuralMemoryQkvReceivesDiffViews: false,
  neuralMemoryAddValueResidual: false,
  useFlexAttn: false,
};

/** The same for the reference's memory options whose feature is not implemented here. */
const MEMORY_EXPERIMENTAL_NEUTRAL = {
  /** The momentum is first order. */
  momentumOrder: 1,
  learnedMomentumCombine: false,
  /** A chunk's momentum and forgetting gates read the mean of its rows. */
  attnPoolChunks: false,
  perParameterLrModulation: false,
  /** The step size gate starts as any other linear layer (the reference's None). */
  initAdaptiveStepBias: null,
  useAcceleratedScan: false,
};

export type NeuralMemoryOptions = Resolved<typeof MEMORY_OPTIONS>;
/** How the patch grid is pooled into image tokens (MultimodalMACConfig.imageTokenPool). */
export type ImageTokenPool = ModelOptions['imageTokenPool'];

export interface MultimodalMACConfig extends ModelOptions, Resolved<typeof MEMORY_LAYOUT_OPTIONS> {
  neuralMemoryKwargs: NeuralMemoryOptions;
}

type MemoryAliases = { [Alias in keyof typeof MEMORY_ALIASES]?: NeuralMemoryOptions[(typeof MEMORY_ALIASES)[Alias]] };

export type MultimodalMACOptions = Partial<Omit<MultimodalMACConfig, 'neuralMemoryKwargs'>> & {
  neuralMemoryKwargs?: Partial<NeuralMemoryOptions> & MemoryAliases & Partial<typeof MEMORY_EXPERIMENTAL_NEUTRAL>;
} & Partial<typeof EXPERIMENTAL_NEUTRAL>;

const TOP_LEVEL_TABLES: object[] = [MODEL_OPTIONS, MEMORY_LAYOUT_OPTIONS, EXPERIMENTAL_NEUTRAL, { neuralMemoryKwargs: MEMORY_OPTIONS }];

/** `options` with `changes` made: top-level options replaced, neuralMemoryKwargs replaced one by one (an alias replaces its option). */
export function changedOptions(options: MultimodalMACOptions, changes: MultimodalMACOptions): MultimodalMACOptions {
  const memoryChanges = changes.neuralMemoryKwargs && withOwnMemoryNames(changes.neuralMemoryKwargs as Record<string, unknown>);
  return { ...options, ...changes, neuralMemoryKwargs: { ...options.neuralMemoryKwargs, ...memoryChanges } };
}

/** Fills in defaults and checks every option; the error names the first offending option. */
export function resolveConfig(options: MultimodalMACOptions = {}): MultimodalMACConfig {
  const given = options as Record<string, unknown>;
  requireKnown(given, TOP_LEVEL_TABLES, '');
  requireNeutral(given, EXPERIMENTAL_NEUTRAL, '');
  const memoryGiven = given.neuralMemoryKwargs ?? {};
  if (typeof memoryGiven !== 'object' || memoryGiven === null || Array.isArray(memoryGiven)) fail('neuralMemoryKwargs', memoryGiven, 'an object of memory options');
  const memory = memoryGiven as Record<string, unknown>;
  requireKnown(memory, [MEMORY_OPTIONS, MEMORY_ALIASES, MEMORY_EXPERIMENTAL_NEUTRAL], 'neuralMemoryKwargs.');
  requireNeutral(memory, MEMORY_EXPERIMENTAL_NEUTRAL, 'neuralMemoryKwargs.');
  const model = resolveTable(MODEL_OPTIONS, given, {}, '');
  const config: MultimodalMACConfig = {
    ...model,
    ...resolveTable(MEMORY_LAYOUT_OPTIONS, given, model, ''),
    neuralMemoryKwargs: resolveTable(MEMORY_OPTIONS, withOwnMemoryNames(memory), model, 'neuralMemoryKwargs.'),
  };
  checkRelations(config);
  return config;
}

function requireKnown(given: Record<string, unknown>, tables: object[], prefix: string): void {
  for (const key of Object.keys(given)) {
    if (!tables.some((table) => Object.hasOwn(table, key))) throw new ConfigError(`unknown option '${prefix}${key}'`, prefix + key);
  }
}

function requireNeutral(given: Record<string, unknown>, neutrals: Record<string, unknown>, prefix: string): void {
  for (const [key, neutral] of Object.entries(neutrals)) {
    if (given[key] !== undefined && given[key] !== neutral) {
      throw new ConfigError(`option '${prefix}${key}' = ${JSON.stringify(given[key])} is not supported (only ${JSON.stringify(neutral)})`, prefix + key);
    }
  }
}

/** Memory options with the reference's names (MEMORY_ALIASES) given ours; each value is checked under the name it was given. */
function withOwnMemoryNames(memory: Record<string, unknown>): Record<string, unknown> {
  const renamed = { ...memory };
  for (const [alias, name] of Object.entries(MEMORY_ALIASES)) {
    const value = renamed[alias];
    delete renamed[alias];
    if (value === undefined) continue;
    if (renamed[name] !== undefined) throw new ConfigError(`options 'neuralMemoryKwargs.${alias}' and 'neuralMemoryKwargs.${name}' are one option under two names: give one`, `neuralMemoryKwargs.${alias}`);
    const problem = MEMORY_OPTIONS[name].rule(value);
    if (problem !== undefined) fail(`neuralMemoryKwargs.${alias}`, value, problem);
    renamed[name] = value;
  }
  return renamed;
}

/** Each option of the table, given or its default, in the table's order, checked by its rule. */
function resolveTable<Table extends Record<string, Option<unknown, never>>, Context extends object>(
  table: Table, given: Record<string, unknown>, context: Context, prefix: string,
): Resolved<Table> {
  const resolved: Record<string, unknown> = {};
  for (const [key, { default: fallback, rule }] of Object.entries(table)) {
    // A derived default sees the options before it: the context and this table's own.
    const value = given[key] === undefined ? (fallback as (c: object) => unknown)({ ...context, ...resolved }) : given[key];
    const problem = rule(value);
    if (problem !== undefined) fail(prefix + key, value, problem);
    resolved[key] = value;
  }
  return resolved as Resolved<Table>;
}

/** The checks between options, once each is valid on its own. */
function checkRelations(c: MultimodalMACConfig): void {
  if (c.imageSize % c.patchSize !== 0) fail('patchSize', c.patchSize, `a divisor of imageSize (${c.imageSize})`);
  const halvings = Math.max(c.visionStem.length - 1, 0);
  if (c.patchSize % 2 ** halvings !== 0) {
    fail('visionStem', c.visionStem, `at most ${Math.log2(c.patchSize & -c.patchSize) + 1} convolutions: all but the last halve the map, and patchSize (${c.patchSize}) must be a whole number of halvings`);
  }
  if (c.visionDim % c.visionHeads !== 0) fail('visionHeads', c.visionHeads, `a divisor of visionDim (${c.visionDim})`);
  if (Math.round(c.ffMult * c.textDim) < 1) fail('ffMult', c.ffMult, `large enough that the feed-forward, round(ffMult x textDim) wide, has a unit (textDim ${c.textDim})`);
  // Pooled over a grid of regions, each at least one patch wide and high.
  const side = c.imageSize / c.patchSize;
  const rowsOf = (k: number) => { let r = Math.floor(Math.sqrt(k)); while (k % r !== 0) r--; return r; };
  if (c.numImageTokens > side * side || rowsOf(c.numImageTokens) > side || c.numImageTokens / rowsOf(c.numImageTokens) > side) {
    fail('numImageTokens', c.numImageTokens, `a number of regions that fits the ${side} x ${side} patch grid`);
  }
  if (c.numImageTokens > c.segmentLen) fail('numImageTokens', c.numImageTokens, `at most segmentLen (${c.segmentLen}): an image's tokens share one attention segment`);
  if (c.maxImageOffset < 0 || c.maxImageOffset > c.segmentLen - c.numImageTokens) {
    fail('maxImageOffset', c.maxImageOffset, `in [0, segmentLen - numImageTokens] (${c.segmentLen - c.numImageTokens}): an image's tokens share one attention segment`);
  }
  if (c.neuralMemoryLayers.some((l) => !isWhole(l) || l < 1 || l > c.depth)) {
    fail('neuralMemoryLayers', c.neuralMemoryLayers, `layer numbers from 1 to depth (${c.depth})`);
  }
  if (c.neuralMemoryBatchSize % c.neuralMemorySegmentLen !== 0) {
    fail('neuralMemoryBatchSize', c.neuralMemoryBatchSize, `a multiple of neuralMemorySegmentLen (${c.neuralMemorySegmentLen})`);
  }
  const window = c.segmentLen + c.numLongtermMemTokens;
  if (c.neuralMemResetAtImages && window % c.neuralMemoryBatchSize !== 0) {
    fail('neuralMemoryBatchSize', c.neuralMemoryBatchSize, `a divisor of segmentLen + numLongtermMemTokens (${window}) with neuralMemResetAtImages: the memory starts afresh where an attention segment starts`);
  }
}

function fail(name: string, value: unknown, expected: string): never {
  // JSON writes NaN and the infinities as null.
  const given = typeof value === 'number' && !Number.isFinite(value) ? `${value} (not a finite number)` : JSON.stringify(value);
  throw new ConfigError(`option '${name}' must be ${expected}, got ${given}`, name);
}

/** The config as it is stored in config.json: a custom memory network object cannot be saved. */
export function serializableConfig(c: MultimodalMACConfig): Record<string, unknown> {
  if (typeof c.neuralMemoryModel !== 'string') {
    throw new ConfigError(`a model whose neuralMemoryModel is a custom object ('${c.neuralMemoryModel.kind}') cannot be saved to config.json`, 'neuralMemoryModel');
  }
  return { ...c };
}
