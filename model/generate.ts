/**
 * Incremental generation: the prompt (with its images fused in) fills a decoding cache a few
 * attention segments at a time, then each new token costs one step over one attention window and the
 * memory state, whatever the length already generated.
 *
 * Several generations run as one batch: their rows share every product of a step, which on a CPU
 * costs little more for a few rows than for one (a decoding step is bound by reading the weights).
 * A request joins the batch once its prompt is read, and leaves it when it ends; each row keeps its
 * own images, sampling, stop strings and length.
 */
import * as tf from '@tensorflow/tfjs-core';
import { SEGMENTS_PER_PASS, type DecodingCache } from './mac.ts';
import { imagePlaceholderProblem, type MultimodalMACNetwork } from './multimodal.ts';
import { MAX_SEED, Random } from './random.ts';
import { InvalidSamplingOptionError, penalized, sampleToken, validateSampling, type SamplingOptions } from './sampling.ts';
import type { StreamDecoder } from './tokenizer.ts';

export interface GenerateOptions extends SamplingOptions {
  /** The prompt's images, each [C, H, W] (or all as [N, C, H, W]). */
  images?: tf.Tensor3D[] | tf.Tensor4D;
  /** Position in the prompt of each image's (first) placeholder. */
  imagePositions?: number[];
  /** New tokens at most (the prompt is not counted); default 100. */
  maxLength?: number;
  /** Seeds sampling; the same seed and inputs give the same text. */
  seed?: number;
  /** Generation stops before the first occurrence of any of these strings. */
  stop?: string | string[];
  /** Stops generation, also while the prompt is being read; it then finishes with 'aborted'. */
  signal?: AbortSignal;
  /**
   * Called after each piece of the prompt is read (PREFILL_SEGMENTS attention segments), with the
   * tokens read so far and the prompt's length; the last call has both equal.
   */
  onPrefillProgress?: (tokensRead: number, promptTokens: number) => void;
  /** Called with each sampled token (EOS included) and the logits it was drawn from, in order. */
  onSample?: (tokenId: number, logits: Float32Array) => void;
}

/** The options generate knows, all of them (the type says so): any other is a mistake, such as Python's max_length. */
const GENERATE_OPTIONS: Record<keyof GenerateOptions, true> = {
  temperature: true, topK: true, topP: true, minP: true, presencePenalty: true, frequencyPenalty: true, logitBias: true,
  images: true, imagePositions: true, maxLength: true, seed: true, stop: true, signal: true, onPrefillProgress: true, onSample: true,
};

/** One generation of a batch. */
export interface GenerationRequest {
  prompt: number[];
  options?: GenerateOptions;
}

/**
 * Attention segments of the prompt read per piece: one pass of the model's step. Between pieces
 * generation yields to the event loop, so that an abort arrives and progress can be sent while a
 * long prompt is read. Pieces of whole passes give the logits of reading the prompt in one call.
 */
export const PREFILL_SEGMENTS = SEGMENTS_PER_PASS;

/**
 * How long generations must be seen to last, in periods of the decoding cache, for joins to pay.
 * Measured on the original configuration (a period of 32 tokens, docs/performance.md): at 2 and 4
 * periods joins made requests slower from start to end; at 8 their first tokens came 1.7x sooner.
 */
export const JOIN_AFTER_PERIODS = 8;

export interface GeneratedToken {
  tokenId: number;
  /** The text this token completes: empty while a multi-byte character or a possible stop string is pending. */
  text: string;
}

export type FinishReason = 'eos' | 'stop' | 'length' | 'aborted';

export interface GenerationResult {
  finishReason: FinishReason;
  /** New tokens generated, EOS excluded. */
  tokens: number;
}

/** What happened to one request of a batch (`request`: its index); each request ends with one 'finished' or 'failed'. */
export type BatchEvent =
  | { request: number; type: 'token'; token: GeneratedToken }
  | { request: number; type: 'finished'; result: GenerationResult }
  | { request: number; type: 'failed'; error: Error };

export class GenerationError extends Error {
  override name = 'GenerationError';
}

/**
 * The model's numbers overflowed (NaN or infinite logits): nothing sampled from here on would mean
 * anything. A neural memory that stores far more chunks than its training examples had can grow
 * without bound (docs/long-context.md).
 */
export class NumericOverflowError extends Error {
  override name = 'NumericOverflowError';
}

/** Streams the new tokens after one prompt: a batch of one. Throws what would fail its request. */
export async function* generate(
  model: MultimodalMACNetwork,
  prompt: number[],
  options: GenerateOptions = {},
): AsyncGenerator<GeneratedToken, GenerationResult> {
  for await (const event of generateBatch(model, [{ prompt, options }])) {
    if (event.type === 'token') yield event.token;
    else if (event.type === 'finished') return event.result;
    else throw event.error;
  }
  throw new GenerationError('the generation ended without a result');
}

/**
 * Runs requests as one batch, and streams what happens to each, in order within each request
 * (GenerationBatch). A request that is invalid, aborted or whose numbers overflow ends alone; the
 * others go on.
 */
export function generateBatch(model: MultimodalMACNetwork, requests: GenerationRequest[]): AsyncGenerator<BatchEvent> {
  const batch = new GenerationBatch(model);
  batch.add(requests);
  return batch.run();
}

/**
 * Generations that decode together, and that more can join while they run. Requests added do not
 * wait for the others to end: those with prompts of the same length read them together, a piece per
 * step of the rows already decoding, and join those rows at the first step at which their cache
 * takes the new rows' length (DecodingCache.stepsUntilJoin: within a period of the cache, a segment
 * or a few). From then on every step serves them all.
 *
 * Where joins do not pay (joinsPay), or a prompt would join after the rows are likely to end
 * (joinsInTime), the batch takes no more joins until its rows have ended, and the prompts waiting
 * then start the next rows together. `onJoins` hears whether joins pay for the generations seen,
 * when that changes, and `lengths` carries what earlier batches saw. `maxRows` bounds the rows that
 * decode together; prompts that would pass it wait for room.
 */
export class GenerationBatch {
  private readonly added: { request: number; prompt: number[]; options: GenerateOptions }[] = [];
  private readonly lengths: GenerationLengths;
  private readonly maxRows: number;
  private readonly onJoins?: (open: boolean) => void;
  private count = 0;
  private ended = false;

  constructor(
    private readonly model: MultimodalMACNetwork,
    { maxRows = Infinity, onJoins, lengths = new GenerationLengths() }: { maxRows?: number; onJoins?: (open: boolean) => void; lengths?: GenerationLengths } = {},
  ) {
    this.maxRows = maxRows;
    this.onJoins = onJoins;
    this.lengths = lengths;
  }

  /** Adds requests, which the run takes at its next step; returns their numbers, as its events name them. Throws once the run has ended. */
  add(requests: GenerationRequest[]): number[] {
    if (this.ended) throw new GenerationError('this batch has ended; start another');
    return requests.map(({ prompt, options = {} }) => {
      this.added.push({ request: this.count, prompt, options });
      return this.count++;
    });
  }

  /** Runs until every request added has ended. */
  async *run(): AsyncGenerator<BatchEvent> {
    const model = this.model;
    let decoding: Batch | null = null;
    const reading: PromptRead[] = [];
    // Whether prompts may join the rows decoding, rather than wait for them to end.
    let joining = true;
    // What onJoins was last told; each run tells it once at least, since the lengths may have
    // changed between runs. A generation's end that changes it is told before that end's event: a
    // request sent on seeing the event finds the batch's joins as they are by then.
    let paying: boolean | undefined;
    const tellJoins = (cache: DecodingCache): boolean => {
      const pays = this.joinsPay(cache);
      if (pays !== paying) {
        paying = pays;
        this.onJoins?.(pays);
      }
      return pays;
    };
    // Every cache of the model repeats with the same period: rows read but not yet decoding tell by their own.
    const ended = (cache: DecodingCache) => (tokens: number) => {
      this.lengths.note(tokens);
      tellJoins(cache);
    };
    try {
      // Each step first checks the model: one disposed while the consumer held a token has lost its
      // weights, and is said to be disposed rather than fail inside TensorFlow.js.
      for (;;) {
        model.requireUsable();
        yield* this.admit(reading);
        if (decoding) {
          const pays = tellJoins(decoding.cache);
          if (joining && !(pays && this.joinsInTime(decoding, reading))) joining = false;
        }
        // First come, first served: a prompt that found no room at its join step holds back the
        // prompts after it until it has joined; else rows that keep ending would give every place to
        // later, smaller prompts.
        let heldBack = false;
        for (const read of [...reading]) {
          const mayEnd = !decoding || (joining && !heldBack && this.canJoin(read, decoding));
          if (decoding && joining && !heldBack && !mayEnd && read.lastPieceNext && decoding.cache.stepsUntilJoin(read.length) === 0) read.waitsForRoom = true;
          const done = yield* read.next(mayEnd, decoding && !mayEnd ? this.stepsUntilEnd(read, decoding, joining) : 0);
          if (!done) {
            heldBack ||= read.waitsForRoom;
            continue;
          }
          // Still among those read until its first tokens are out: a consumer that stops at one of them ends the run, which frees its cache.
          const going = yield* sampleNext(read.batch, done, ended(read.batch.cache));
          if (going.length === 0) read.dispose();
          else if (decoding) decoding.join(read.batch);
          else decoding = read.batch;
          // Only once it has a place: one whose join fails is still among those read, which the end frees.
          reading.splice(reading.indexOf(read), 1);
        }
        if (decoding) {
          model.requireUsable();
          const logits = await decodeStep(model, decoding);
          const going = yield* leave(decoding, logits);
          if (going.length > 0) yield* sampleNext(decoding, going, ended(decoding.cache));
          if (decoding.rows.length === 0) {
            decoding.cache.dispose();
            decoding = null;
            joining = true;
          }
        }
        if (!decoding && reading.length === 0 && this.added.length === 0) return;
        // A macrotask turn per step lets an abort (a closed connection, a worker message) or a new request arrive.
        await new Promise((resolve) => setImmediate(resolve));
      }
    } finally {
      this.ended = true;
      decoding?.cache.dispose();
      for (const read of reading) read.dispose();
    }
  }

  /**
   * Whether joins pay for the generations seen: where they last JOIN_AFTER_PERIODS periods of the
   * cache or more. A prompt waits for its step half a period on average, its reading stalls the
   * rows decoding, and every row it joins steps slower; shorter generations gain more from waiting
   * for the rows to end and starting together.
   */
  private joinsPay(cache: DecodingCache): boolean {
    return cache.period === null || this.lengths.mean >= JOIN_AFTER_PERIODS * cache.period;
  }

  /** Whether no prompt waiting for its step would join later than the rows decoding are likely to end. */
  private joinsInTime(decoding: Batch, reading: PromptRead[]): boolean {
    const remaining = this.lengths.remaining(decoding.rows);
    return !reading.some((read) => read.lastPieceNext && decoding.cache.stepsUntilJoin(read.length) > remaining);
  }

  /** Whether the prompts read can join the rows decoding at this step: their positions agree, and there is room. */
  private canJoin(read: PromptRead, decoding: Batch): boolean {
    return decoding.cache.stepsUntilJoin(read.length) === 0 && decoding.rows.length + read.batch.rows.length <= this.maxRows;
  }

  /**
   * Steps before the prompts of `read` may read their last piece, as far as can be told: until the
   * rows decoding stand where they can join, or where they cannot join, until those rows likely end.
   */
  private stepsUntilEnd(read: PromptRead, decoding: Batch, joining: boolean): number {
    const join = decoding.cache.stepsUntilJoin(read.length);
    return joining && join > 0 ? join : this.lengths.remaining(decoding.rows);
  }

  /**
   * The requests added since the last step, as prompts to read. A request goes with those whose
   * prompts have its length and are not yet being read (they wait for a step at which they can join),
   * so that their images are encoded and their prompts read together. Invalid requests end here.
   */
  private *admit(reading: PromptRead[]): Generator<BatchEvent> {
    for (const { request, prompt, options } of this.added.splice(0)) {
      let row: Sequence;
      try {
        row = new Sequence(this.model, request, prompt, options);
      } catch (error) {
        yield { request, type: 'failed', error: error as Error };
        continue;
      }
      if (!reading.some((read) => read.batch.rows.length < this.maxRows && read.take(row))) reading.push(new PromptRead(this.model, [row]));
    }
  }
}

/** The logits for one row's next token, or null where they are not finite. */
type RowLogits = Float32Array | null;

/**
 * How many tokens generations wrote, to tell how long those still going will take. A server keeps
 * one across its batches (GenerationBatch's `lengths`), so that a batch knows its traffic from its start.
 */
export class GenerationLengths {
  /** The generations the mean is taken over, at most: older ones fade, as traffic changes. */
  static readonly SPAN = 100;
  private count = 0;
  /** New tokens a generation wrote, on average; Infinity before any ended. */
  mean = Infinity;

  /** A generation ended (not aborted) after `tokens` new tokens. */
  note(tokens: number): void {
    this.count = Math.min(this.count + 1, GenerationLengths.SPAN);
    this.mean = this.count === 1 ? tokens : this.mean + (tokens - this.mean) / this.count;
  }

  /**
   * Steps until the last of `rows` is likely to end: each row runs to its maxLength, or to the mean
   * where that comes first (a row past it, at the next step).
   */
  remaining(rows: Sequence[]): number {
    return Math.max(...rows.map((row) => Math.min(row.maxLength - row.tokens, Math.max(1, this.mean - row.tokens))));
  }
}

/** Rows and the cache that holds them, in the same order. */
class Batch {
  constructor(
    public rows: Sequence[],
    public cache: DecodingCache,
  ) {}

  /** Keeps the rows at `indices`, in that order, here and in the cache. */
  keep(indices: number[]): void {
    if (indices.length === this.rows.length) return;
    this.rows = indices.map((i) => this.rows[i]!);
    if (indices.length > 0) this.cache.keepRows(indices);
  }

  /** Adds another batch's rows after these (DecodingCache.join). */
  join(other: Batch): void {
    this.cache.join(other.cache);
    this.rows = [...this.rows, ...other.rows];
  }
}

/**
 * Prompts of the same length being read together, piece by piece, into a cache of their own. Their
 * images are encoded before the first piece. The last piece waits for a step at which the prompts
 * can join the rows decoding; a prompt that has only that piece is read then, with the rows that
 * came meanwhile. While it waits, its images are encoded a stage a step (encodeImages), so that the
 * rows decoding are not stalled for a whole encode.
 */
class PromptRead {
  readonly batch: Batch;
  readonly length: number;
  /** It stood at its join step with no room for its rows: the prompts after it wait until it has joined. */
  waitsForRoom = false;
  private read = 0;
  /** The rows' image encode (encodePromptImages) once it has started, and its stages still to run. */
  private encode: Generator<void, Map<Sequence, tf.Tensor>> | null = null;
  private stagesLeft = 0;
  private features: Map<Sequence, tf.Tensor> | null = null;

  constructor(
    private readonly model: MultimodalMACNetwork,
    rows: Sequence[],
  ) {
    this.batch = new Batch(rows, this.emptyCache(rows));
    this.length = rows[0]!.prompt.length;
  }

  /** Takes a row whose prompt has this length, while nothing is read yet; false otherwise. */
  take(row: Sequence): boolean {
    if (this.read > 0 || this.encode || this.features || row.prompt.length !== this.length) return false;
    this.batch.rows.push(row);
    this.batch.cache.dispose();
    this.batch.cache = this.emptyCache(this.batch.rows);
    return true;
  }

  /** Whether the next piece ends the prompts. */
  get lastPieceNext(): boolean {
    return this.read + this.pieceLength >= this.length;
  }

  private get pieceLength(): number {
    return PREFILL_SEGMENTS * this.model.config.segmentLen;
  }

  private emptyCache(rows: Sequence[]): DecodingCache {
    return this.model.text.createCache(rows.length, this.model.memoryResets(rows.map((row) => row.imagePositions)));
  }

  /**
   * Reads the next piece, unless it is the last and the prompts may not end yet (for some
   * `stepsUntilEnd`), letting go of rows aborted or overflowed meanwhile. Returns the logits for the
   * remaining rows' first new token once the whole prompt is read, else null.
   */
  async *next(mayEnd: boolean, stepsUntilEnd: number): AsyncGenerator<BatchEvent, Float32Array[] | null> {
    const { model, batch } = this;
    const end = Math.min(this.read + this.pieceLength, this.length);
    // A consumer may dispose of the model at any event of the step, another prompt's too.
    model.requireUsable();
    if (end === this.length && !mayEnd) {
      yield* leave(batch, null);
      if (batch.rows.length === 0) return [];
      model.requireUsable();
      this.encodeImages(stepsUntilEnd);
      return null;
    }
    this.encodeImages(0);
    const embeddings = tf.tidy(() => tf.concat(batch.rows.map((row) =>
      model.embedRows(row.prompt.slice(this.read, end), this.read, this.features!.get(row) ?? null, row.imagePositions)), 0) as tf.Tensor3D);
    let logits: RowLogits[];
    try {
      logits = await lastLogits(model, model.text.step(embeddings, batch.cache));
    } finally {
      embeddings.dispose();
    }
    this.read = end;
    for (const row of batch.rows) {
      row.read = end;
      row.options.onPrefillProgress?.(end, this.length);
    }
    const going = yield* leave(batch, logits);
    if (end < this.length && going.length > 0) return null;
    this.disposeFeatures();
    return going;
  }

  /**
   * Runs the image encode's stages as late as it can while spreading them evenly over the steps
   * before the one that reads the last piece, which has the prompts' reading and their join to do:
   * none while there are more such steps than stages, so that prompts arriving meanwhile are encoded
   * with these (take); all that are left when the piece is read now.
   */
  private encodeImages(stepsUntilRead: number): void {
    if (this.features) return;
    if (!this.encode) {
      if (!this.batch.rows.some(hasImages)) {
        if (stepsUntilRead === 0) this.features = new Map();
        return;
      }
      if (this.model.vision.stages < stepsUntilRead) return;
      this.encode = encodePromptImages(this.model, this.batch.rows);
      this.stagesLeft = this.model.vision.stages;
    }
    const encode = this.encode;
    const now = stepsUntilRead === 0 ? this.stagesLeft : this.stagesLeft < stepsUntilRead ? 0 : Math.ceil(this.stagesLeft / stepsUntilRead);
    for (let stages = now; stages > 0; stages--) {
      const stage = encode.next();
      this.stagesLeft--;
      if (stage.done) {
        this.features = stage.value;
        this.encode = null;
      }
    }
  }

  dispose(): void {
    this.batch.cache.dispose();
    // Stopping the encode frees the tensors it holds between stages.
    this.encode?.return(new Map());
    this.disposeFeatures();
  }

  private disposeFeatures(): void {
    tf.dispose([...(this.features?.values() ?? [])]);
    this.features = null;
  }
}

/**
 * One request of a batch: its prompt and options, its own random stream, and the text it still holds
 * back. Throws when the request is invalid, before any work.
 */
class Sequence {
  readonly imagePositions: number[];
  /** Tokens read so far, its prompt's and its own. */
  read = 0;
  /** New tokens so far, EOS excluded. */
  tokens = 0;
  /** The newest token sampled, which the next step reads. */
  lastToken = -1;
  /** How often each token was generated, for the presence and frequency penalties. */
  private readonly counts: Uint32Array;
  readonly maxLength: number;
  private readonly stops: string[];
  private readonly random: Random;
  private readonly decoder: StreamDecoder;
  private pendingText = '';
  // The newest token, held back while text after it is still pending (part of a possible stop
  // string, or of an unfinished character): if EOS comes next, that text is released with the token
  // it belongs to, and every yielded token is a generated one.
  private waiting: GeneratedToken | undefined;

  constructor(
    private readonly model: MultimodalMACNetwork,
    readonly request: number,
    readonly prompt: number[],
    readonly options: GenerateOptions,
  ) {
    this.maxLength = options.maxLength ?? 100;
    validateRequest(model, prompt, options, this.maxLength);
    this.imagePositions = options.imagePositions ?? [];
    this.stops = [options.stop ?? []].flat().filter((s) => s.length > 0);
    this.random = new Random(options.seed ?? Math.floor(Math.random() * 2 ** 32));
    this.decoder = model.tokenizer.streamDecoder();
    this.counts = new Uint32Array(model.config.numTokens);
  }

  /**
   * Samples the next token from the logits, biased and penalized as the options ask: the tokens whose
   * text it releases, and why the generation ends with it, if it does. onSample sees the model's own
   * logits.
   */
  next(logits: Float32Array): { released: GeneratedToken[]; finishReason?: FinishReason } {
    const tokenId = sampleToken(penalized(logits, this.options, this.counts), this.options, this.random);
    this.options.onSample?.(tokenId, logits);
    const released: GeneratedToken[] = [];
    const waiting = this.waiting;
    this.waiting = undefined;
    if (tokenId === this.model.eosTokenId) {
      if (waiting) released.push({ tokenId: waiting.tokenId, text: waiting.text + this.pendingText + this.decoder.flush() });
      return { released, finishReason: 'eos' };
    }
    if (waiting) released.push(waiting);
    this.tokens++;
    this.counts[tokenId]!++;
    this.lastToken = tokenId;
    this.pendingText += this.decoder.push(tokenId);
    const stopAt = firstStop(this.pendingText, this.stops);
    if (stopAt >= 0) {
      released.push({ tokenId, text: this.pendingText.slice(0, stopAt) });
      return { released, finishReason: 'stop' };
    }
    if (this.tokens === this.maxLength) {
      released.push({ tokenId, text: this.pendingText + this.decoder.flush() });
      return { released, finishReason: 'length' };
    }
    const hold = heldForStops(this.pendingText, this.stops);
    const token = { tokenId, text: this.pendingText.slice(0, this.pendingText.length - hold) };
    this.pendingText = this.pendingText.slice(this.pendingText.length - hold);
    // Only a byte past ASCII can leave a character unfinished in the decoder.
    if (hold > 0 || tokenId >= 0x80) this.waiting = token;
    else released.push(token);
    return { released };
  }
}

function validateRequest(model: MultimodalMACNetwork, prompt: number[], options: GenerateOptions, maxLength: number): void {
  const unknownOptions = Object.keys(options).filter((key) => !Object.hasOwn(GENERATE_OPTIONS, key));
  if (unknownOptions.length > 0) {
    throw new GenerationError(`unknown option${unknownOptions.length > 1 ? 's' : ''} ${unknownOptions.map((key) => `'${key}'`).join(', ')}`);
  }
  validateSampling(options);
  if (options.seed !== undefined && !(Number.isInteger(options.seed) && options.seed >= 0 && options.seed <= MAX_SEED)) {
    throw new GenerationError(`seed must be a whole number in [0, 2^32), got ${options.seed}`);
  }
  const unknown = Object.keys(options.logitBias ?? {}).find((id) => Number(id) >= model.config.numTokens);
  if (unknown !== undefined) throw new InvalidSamplingOptionError('logitBias', `keys must be token ids below ${model.config.numTokens}, got ${unknown}`);
  if (!Number.isInteger(maxLength) || maxLength < 1) throw new GenerationError(`maxLength must be a whole number >= 1, got ${maxLength}`);
  if (prompt.length === 0) throw new GenerationError('prompt must hold at least one token');
  if (prompt.some((id) => !Number.isInteger(id) || id < 0 || id >= model.config.numTokens)) {
    throw new GenerationError(`prompt tokens must be whole numbers in [0, ${model.config.numTokens})`);
  }
  const count = imageCount(options.images);
  const { inChannels, imageSize } = model.config;
  const images: tf.Tensor[] = options.images === undefined ? [] : Array.isArray(options.images) ? options.images : [options.images];
  const rank = Array.isArray(options.images) ? 3 : 4;
  for (const image of images) {
    if (image.isDisposed) throw new GenerationError('an image of the request was disposed before it was read');
    const [channels, height, width] = image.shape.slice(-3);
    if (image.rank !== rank || channels !== inChannels || height !== imageSize || width !== imageSize) {
      throw new GenerationError(`images must be [${inChannels}, ${imageSize}, ${imageSize}] each, or [N, ${inChannels}, ${imageSize}, ${imageSize}]; got [${image.shape.join(', ')}]`);
    }
  }
  const positions = options.imagePositions ?? [];
  if (positions.length !== count) throw new GenerationError(`${count} image(s) but ${positions.length} imagePositions`);
  if (positions.some((p) => p < 0)) throw new GenerationError(`image positions must be >= 0, got ${positions.join(', ')}`);
  const problem = imagePlaceholderProblem(prompt, positions, model.config.numImageTokens, model.config.segmentLen, model.imageTokenId);
  if (problem) throw new GenerationError(problem);
}

function imageCount(images: GenerateOptions['images']): number {
  if (!images) return 0;
  return Array.isArray(images) ? images.length : images.shape[0];
}

/**
 * What fills each row's image placeholders (MultimodalMACNetwork.encodeImagesInStages, a stage at
 * each next()): every distinct image of the batch in one encode, an image that several rows hold (the
 * same tensor: a request's choices) once. Rows without images have none.
 */
function* encodePromptImages(model: MultimodalMACNetwork, rows: Sequence[]): Generator<void, Map<Sequence, tf.Tensor>> {
  const withImages = rows.filter(hasImages);
  // Where each distinct images tensor starts among the rows encoded.
  const starts = new Map<tf.Tensor, number>();
  let encodedRows = 0;
  const imagesOf = (row: Sequence) => [row.options.images!].flat();
  for (const image of withImages.flatMap(imagesOf)) {
    if (starts.has(image)) continue;
    starts.set(image, encodedRows);
    encodedRows += rowsOf(image);
  }
  const images = tf.tidy(() => tf.concat([...starts.keys()].map((image) => (image.rank === 3 ? image.expandDims(0) : image)), 0) as tf.Tensor4D);
  let encoded: tf.Tensor;
  try {
    encoded = yield* model.encodeImagesInStages(images);
  } finally {
    images.dispose();
  }
  const features = tf.tidy(() => withImages.map((row) =>
    tf.gather(encoded, imagesOf(row).flatMap((image) => Array.from({ length: rowsOf(image) }, (_, j) => starts.get(image)! + j)))));
  encoded.dispose();
  return new Map(withImages.map((row, i) => [row, features[i]!]));
}

function hasImages(row: Sequence): boolean {
  return imageCount(row.options.images) > 0;
}

/** The images a tensor holds: one [C, H, W], or N of [N, C, H, W]. */
function rowsOf(image: tf.Tensor): number {
  return image.rank === 3 ? 1 : image.shape[0]!;
}

/**
 * Ends the rows whose request was aborted or whose numbers overflowed (where there are logits to
 * tell); returns the logits of the rows that go on.
 */
function* leave(batch: Batch, logits: RowLogits[] | null): Generator<BatchEvent, Float32Array[]> {
  const kept: number[] = [];
  for (const [i, row] of batch.rows.entries()) {
    if (row.options.signal?.aborted) yield { request: row.request, type: 'finished', result: { finishReason: 'aborted', tokens: row.tokens } };
    else if (logits && !logits[i]) yield { request: row.request, type: 'failed', error: overflowAfter(row.read) };
    else kept.push(i);
  }
  batch.keep(kept);
  return logits ? kept.map((i) => logits[i]!) : [];
}

function overflowAfter(read: number): NumericOverflowError {
  return new NumericOverflowError(`the model's state overflowed after ${read} tokens (its logits are not finite); this model cannot read text this long`);
}

/** Samples each row's next token and releases its text; the rows that end leave the batch, `ended` hearing each one's new tokens before its event. Returns the rows that go on. */
function* sampleNext(batch: Batch, logits: Float32Array[], ended: (tokens: number) => void): Generator<BatchEvent, Sequence[]> {
  const kept: number[] = [];
  for (const [i, row] of batch.rows.entries()) {
    const { released, finishReason } = row.next(logits[i]!);
    for (const token of released) yield { request: row.request, type: 'token', token };
    if (!finishReason) {
      kept.push(i);
      continue;
    }
    ended(row.tokens);
    yield { request: row.request, type: 'finished', result: { finishReason, tokens: row.tokens } };
  }
  batch.keep(kept);
  return batch.rows;
}

/** Each row reads the token it sampled last. */
async function decodeStep(model: MultimodalMACNetwork, batch: Batch): Promise<RowLogits[]> {
  const tokens = batch.rows.map((row) => row.lastToken);
  for (const row of batch.rows) row.read++;
  const embeddings = tf.tidy(() => model.text.embed(tf.tensor2d(tokens, [tokens.length, 1], 'int32')));
  try {
    return await lastLogits(model, model.text.step(embeddings, batch.cache));
  } finally {
    embeddings.dispose();
  }
}

/**
 * Each row's last logits of [B, n, V], with the image placeholder ruled out (the model writes text),
 * or null where they are not finite. Read asynchronously, as a GPU must be.
 */
async function lastLogits(model: MultimodalMACNetwork, logits: tf.Tensor3D): Promise<RowLogits[]> {
  const [batch, rows, vocab] = logits.shape;
  const last = logits.slice([0, rows - 1, 0], [batch, 1, vocab]);
  tf.dispose(logits);
  let values: Float32Array;
  try {
    values = (await last.data()) as Float32Array;
  } finally {
    last.dispose();
  }
  return Array.from({ length: batch }, (_, b) => {
    const row = values.slice(b * vocab, (b + 1) * vocab);
    if (!row.every(Number.isFinite)) return null;
    row[model.imageTokenId] = -Infinity;
    return row;
  });
}

function firstStop(text: string, stops: string[]): number {
  let first = -1;
  for (const stop of stops) {
    const at = text.indexOf(stop);
    if (at >= 0 && (first < 0 || at < first)) first = at;
  }
  return first;
}

/** How many trailing characters could still begin a stop string, and so must wait. */
function heldForStops(text: string, stops: string[]): number {
  let hold = 0;
  for (const stop of stops) {
    for (let n = Math.min(stop.length - 1, text.length); n > hold; n--) {
      if (text.endsWith(stop.slice(0, n))) {
        hold = n;
        break;
      }
    }
  }
  return hold;
}
