/**
 * Where training examples come from: image/caption sources (synthetic scenes, files listed by an
 * annotations or COCO file) and text corpora. A source maps an index to one item; the order in which
 * indices are visited is decided elsewhere (order.ts).
 */
import { readFile } from 'node:fs/promises';
import sharp from 'sharp';
import { ImageError, type ImageProcessor } from '../image.ts';
import { ByteTokenizer } from '../../model/tokenizer.ts';
import type { CaptionedFile } from './captions.ts';
import { DataPathError, requirePath, resolveInside } from './paths.ts';
import { renderScene, sceneAt, sceneCaption, type Split } from './shapes.ts';

export interface CaptionedImage {
  /** Normalized [3, S, S], as the ImageProcessor makes it. */
  pixels: Float32Array;
  caption: string;
}

export interface CaptionSource {
  /** Items; Infinity for a generator. */
  readonly size: number;
  /** Indices of the items found unusable so far (bad or missing images). */
  readonly skipped: ReadonlySet<number>;
  /** Why the first of them was, for the error of a source with none usable. */
  readonly firstSkipReason?: string;
  /** The item, or null when its image cannot be used (it joins `skipped`). */
  load(index: number): Promise<CaptionedImage | null>;
}

/** Scenes of docs/shapes.md, drawn at the processor's size and normalized by it. */
export class SyntheticShapes implements CaptionSource {
  readonly size = Infinity;
  readonly skipped: ReadonlySet<number> = new Set();

  constructor(
    private readonly seed: number,
    private readonly split: Split,
    private readonly processor: ImageProcessor,
  ) {}

  async load(index: number): Promise<CaptionedImage> {
    const scene = sceneAt(this.seed, this.split, index);
    const size = this.processor.options.imageSize;
    const { data } = await renderScene(scene, { width: size, height: size });
    // Through PNG so that the one ImageProcessor does the normalization, as it will at inference.
    const png = await sharp(data, { raw: { width: size, height: size, channels: 3 } }).png({ compressionLevel: 0 }).toBuffer();
    return { pixels: await this.processor.decode(png), caption: sceneCaption(scene) };
  }
}

/** Image files named by an annotations or COCO file, relative to an image folder. */
export class CaptionedFiles implements CaptionSource {
  private readonly bad = new Set<number>();
  firstSkipReason: string | undefined;

  constructor(
    private readonly entries: CaptionedFile[],
    private readonly imageDir: string,
    private readonly processor: ImageProcessor,
  ) {}

  get size(): number {
    return this.entries.length;
  }

  get skipped(): ReadonlySet<number> {
    return this.bad;
  }

  async load(index: number): Promise<CaptionedImage | null> {
    const entry = this.entries[index]!;
    try {
      const path = resolveInside(this.imageDir, entry.image, 'image');
      // A symbolic link must not lead out of the folder any more than a name may.
      await requirePath(this.imageDir, path, entry.image, 'image', { kind: 'file' });
      const pixels = await this.processor.decode(path);
      return { pixels, caption: entry.text };
    } catch (error) {
      // An undecodable, missing or out-of-folder image is skipped, not fatal: large caption sets
      // always hold a few. Anything else (a bug) propagates.
      if (!(error instanceof ImageError || error instanceof DataPathError)) throw error;
      // A missing file is most often a wrong image_dir; an undecodable one is the file's own fault.
      this.firstSkipReason ??= error instanceof DataPathError ? `${error.message}; check data.image_dir` : `${entry.image}: ${error.message}`;
      this.bad.add(index);
      return null;
    }
  }
}

/** A UTF-8 text file cut into windows of `windowTokens` bytes. */
export async function readTextWindows(path: string, windowTokens: number): Promise<number[][]> {
  const text = await readFile(path, 'utf8');
  // Decoding and re-encoding replaces invalid bytes, so that none reads as EOS or an image token.
  const bytes = new ByteTokenizer().encode(text);
  if (bytes.length < 2) throw new Error(`${path}: the text file has fewer than 2 bytes`);
  const windows: number[][] = [];
  for (let start = 0; start + 2 <= bytes.length; start += windowTokens) windows.push(bytes.slice(start, start + windowTokens));
  return windows;
}
