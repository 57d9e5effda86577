/**
 * The batches of a training run, as a pure function of (data spec, seed, step): which step is a
 * text-only step (corpus windows or passkey examples), which examples each step, micro-batch and
 * data-parallel shard reads, and the fixed validation batches. Nothing here depends on the history of
 * the run, which is what makes a resumed run read exactly the data of an uninterrupted one.
 */
import type { ImageProcessor } from '../image.ts';
import type { DataSpec, PasskeySpec } from '../training/spec.ts';
import { captionExample, collate, type Batch, type Example } from './batch.ts';
import { readAnnotations, readCocoCaptions } from './captions.ts';
import { EpochOrder, shuffled } from './order.ts';
import { passkeyAt, sentencesOf, trainingSentences } from './passkey.ts';
import { Random } from '../../model/random.ts';
import { deriveSeed } from './seed.ts';
import type { Split } from './shapes.ts';
import { CaptionedFiles, SyntheticShapes, readTextWindows, type CaptionSource } from './sources.ts';

export interface TrainingDataOptions {
  seed: number;
  batchSize: number;
  gradAccum: number;
  processor: ImageProcessor;
}

// Seed paths of the independent random streams.
const ORDER_IMAGES = 1;
const ORDER_TEXT = 2;
const PROMPT = 3;
const HOLD_OUT = 4;
const VALIDATION_PROMPT = 5;
const LONG_PROMPT_LENGTH = 6;
const LONG_PROMPT_TEXT = 7;

interface Stream<T> {
  source: T;
  order: EpochOrder;
}

export class TrainingData {
  private constructor(
    private readonly spec: DataSpec,
    private readonly options: TrainingDataOptions,
    private readonly images: Stream<CaptionSource> | null,
    private readonly text: Stream<number[][]> | null,
    private readonly validationSet: { images: CaptionSource | null; text: Example[] },
  ) {}

  /** Reads the listed files (paths must be absolute and checked); images are decoded lazily. */
  static async open(spec: DataSpec, options: TrainingDataOptions): Promise<TrainingData> {
    const { seed, processor } = options;
    let images: CaptionSource | null = null;
    let validationImages: CaptionSource | null = null;
    if (spec.type === 'synthetic-shapes') {
      images = new SyntheticShapes(seed, 'train', processor);
      validationImages = new SyntheticShapes(seed, 'validation', processor);
    } else if (spec.type === 'annotations' || spec.type === 'coco') {
      const entries = spec.type === 'annotations' ? await readAnnotations(spec.annotations_file!) : await readCocoCaptions(spec.captions_file!);
      if (entries.length === 0) throw new Error(`${spec.annotations_file ?? spec.captions_file}: no image/caption pairs`);
      const held = holdOut(entries, spec.val_size, seed, (entry) => entry.image);
      const imageDir = spec.image_dir!;
      images = new CaptionedFiles(held.train, imageDir, processor);
      validationImages = held.validation.length > 0 ? new CaptionedFiles(held.validation, imageDir, processor) : null;
    }
    let text: number[][] = [];
    let validationText: Example[] = [];
    if (spec.text_data_path !== undefined) {
      text = await readTextWindows(spec.text_data_path, spec.max_tokens);
      if (spec.type === 'text') {
        const held = holdOut(text, spec.val_size, seed);
        text = held.train;
        validationText = held.validation.map((tokens) => ({ tokens }));
      }
    }
    if (spec.type === 'passkey') {
      validationText = Array.from({ length: spec.val_size }, (_, i) => passkeyExample(spec.passkey!, seed, 'validation', i, spec.passkey!.filler_tokens));
    }
    return new TrainingData(
      spec,
      options,
      images && { source: images, order: new EpochOrder(images.size, deriveSeed(seed, ORDER_IMAGES)) },
      text.length > 0 ? { source: text, order: new EpochOrder(text.length, deriveSeed(seed, ORDER_TEXT)) } : null,
      { images: validationImages, text: validationText },
    );
  }

  /**
   * The images found unusable so far, as `train:<index>` / `validation:<index>`: replicas that read
   * different shards each know some, and their union is the run's count.
   */
  skippedImages(): string[] {
    const keys = (split: string, source: CaptionSource | null | undefined) => [...(source?.skipped ?? [])].map((i) => `${split}:${i}`);
    return [...keys('train', this.images?.source), ...keys('validation', this.validationSet.images)];
  }

  /** Whether update number `step` (from 1) reads text only (corpus or passkey), spread evenly at their joint ratio. */
  isTextStep(step: number): boolean {
    return spread(step, this.textRatio).selected;
  }

  /** Rows [shard * n, (shard + 1) * n) of micro-batch `micro` of update `step`, n = batchSize / shards. */
  async shard(step: number, micro: number, shard: number, shards: number): Promise<Batch> {
    const { batchSize, gradAccum } = this.options;
    const rows = batchSize / shards;
    const { kind, sameKindBefore } = this.stepKind(step);
    const first = sameKindBefore * batchSize * gradAccum + micro * batchSize + shard * rows;
    const longPrompt = kind === 'image' ? this.longPromptBytes(step, sameKindBefore + 1) : 0;
    const positions = Array.from({ length: rows }, (_, i) => first + i);
    // Images are decoded or drawn side by side: sharp works in its own threads, and each example
    // depends on its position alone.
    const examples = await Promise.all(positions.map(async (p) => {
      if (kind === 'image') return this.imageExample(p, longPrompt);
      return kind === 'text' ? this.textExample(p) : this.passkeyExample(p, step);
    }));
    return collate(examples);
  }

  /** Text steps of both kinds together; the spec keeps their sum at most 1. */
  private get textRatio(): number {
    return this.spec.text_ratio + (this.spec.passkey?.ratio ?? 0);
  }

  /**
   * What update `step` reads, and how many earlier updates read the same kind. Text steps are spread
   * at the text ratio, and the passkey steps are spread the same way among the text steps.
   */
  private stepKind(step: number): { kind: 'image' | 'text' | 'passkey'; sameKindBefore: number } {
    const text = spread(step, this.textRatio);
    if (!text.selected) return { kind: 'image', sameKindBefore: step - 1 - text.before };
    const passkeyShare = (this.spec.passkey?.ratio ?? 0) / this.textRatio;
    const passkey = spread(text.before + 1, passkeyShare);
    return passkey.selected ? { kind: 'passkey', sameKindBefore: passkey.before } : { kind: 'text', sameKindBefore: text.before - passkey.before };
  }

  /** The fixed validation batches (images, or text for a text-only or passkey run); empty when there is no validation set. */
  async validation(): Promise<Batch[]> {
    const examples: Example[] = [];
    const { images, text } = this.validationSet;
    const { seed } = this.options;
    if (images) {
      // Bad images are skipped, so a few more than val_size may be read (each at most once).
      const wanted = Math.min(this.spec.val_size, images.size);
      for (let i = 0; examples.length < wanted && i < images.size; i++) {
        const item = await images.load(i);
        if (item) examples.push(captionExample(this.prompt(deriveSeed(seed, VALIDATION_PROMPT, i)), item.caption, item.pixels, this.spec.max_tokens));
      }
    } else {
      examples.push(...text.slice(0, this.spec.val_size));
    }
    const batches: Batch[] = [];
    for (let i = 0; i < examples.length; i += this.options.batchSize) batches.push(collate(examples.slice(i, i + this.options.batchSize)));
    return batches;
  }

  /**
   * The image example at position p. An unusable image is replaced by the next usable one in the
   * visiting order; that depends only on which files are bad, so the replacement is reproducible.
   */
  private async imageExample(position: number, longPromptBytes: number): Promise<Example> {
    if (!this.images) throw new Error(`data.type "${this.spec.type}" has no images`);
    const { source, order } = this.images;
    const { seed } = this.options;
    const tries = Number.isFinite(source.size) ? source.size : 1;
    for (let k = 0; k < tries; k++) {
      const item = await source.load(order.at(position + k));
      if (!item) continue;
      const before = longPromptBytes === 0 ? '' : sentencesOf(trainingSentences(new Random(deriveSeed(seed, LONG_PROMPT_TEXT, position))), longPromptBytes).text;
      // The long text is there to be read past, not learned: only the caption is.
      return captionExample(before + this.prompt(deriveSeed(seed, PROMPT, position)), item.caption, item.pixels, this.spec.max_tokens, longPromptBytes > 0);
    }
    throw new Error(`none of the ${source.size} training images can be used (the first: ${source.firstSkipReason ?? 'unknown'})`);
  }

  /**
   * Bytes of text before the prompt in the examples of image step number `imageStep` (update `step`):
   * 0 unless data.long_prompts picks it. One length for the whole step, so that no row is mostly padding.
   */
  private longPromptBytes(step: number, imageStep: number): number {
    const long = this.spec.long_prompts;
    if (!long || !spread(imageStep, long.ratio).selected) return 0;
    const [min, max] = long.bytes;
    return min + new Random(deriveSeed(this.options.seed, LONG_PROMPT_LENGTH, step)).int(max - min + 1);
  }

  private textExample(position: number): Example {
    const { source, order } = this.text!;
    return { tokens: source[order.at(position)]! };
  }

  private passkeyExample(position: number, step: number): Example {
    const { filler_tokens, filler_schedule } = this.spec.passkey!;
    const filler: [number, number] = [filler_tokens[0], Math.round(scheduled(filler_schedule, step) ?? filler_tokens[1])];
    return passkeyExample(this.spec.passkey!, this.options.seed, 'train', position, filler);
  }

  private prompt(seed: number): string {
    return this.spec.prompts[seed % this.spec.prompts.length]!;
  }
}

/** Passkey example `index` of a split as training reads it: with answer_only, all but the key and EOS is context. */
function passkeyExample(spec: PasskeySpec, seed: number, split: Split, index: number, filler: [number, number]): Example {
  const { tokens, key } = passkeyAt(seed, split, index, filler, spec.key_digits, spec);
  return { tokens, ...(spec.answer_only && { contextLength: tokens.length - key.length - 1 }) };
}

/** The piecewise-linear schedule's value at `step`, held flat past its ends; undefined without one. */
export function scheduled(points: readonly (readonly [number, number])[] | undefined, step: number): number | undefined {
  if (!points || points.length === 0) return undefined;
  const after = points.findIndex(([at]) => at > step);
  if (after === 0) return points[0]![1];
  if (after === -1) return points.at(-1)![1];
  const [x0, y0] = points[after - 1]!;
  const [x1, y1] = points[after]!;
  return y0 + ((y1 - y0) * (step - x0)) / (x1 - x0);
}

/** Item n (from 1) of a sequence of which a fraction `ratio` is selected, evenly: is it, and how many were before it. */
function spread(n: number, ratio: number): { selected: boolean; before: number } {
  const before = Math.floor((n - 1) * ratio);
  return { selected: Math.floor(n * ratio) > before, before };
}

/**
 * A seeded hold-out of up to val_size items, at most a tenth of the list, in whole groups (`groupOf`,
 * each item its own by default): an image's other captions must not teach training what validation
 * asks. A group that would carry validation past that count stays in training.
 */
export function holdOut<T>(items: T[], valSize: number, seed: number, groupOf: (item: T) => unknown = (item) => item): { train: T[]; validation: T[] } {
  const groups = new Map<unknown, T[]>();
  for (const item of items) {
    const key = groupOf(item);
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key)!.push(item);
  }
  const count = Math.min(valSize, Math.floor(items.length / 10));
  const validation: T[] = [];
  const train: T[] = [];
  for (const group of shuffled([...groups.values()], deriveSeed(seed, HOLD_OUT))) (validation.length + group.length <= count ? validation : train).push(...group);
  return { validation, train };
}
