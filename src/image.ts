/**
 * ImageProcessor: untrusted image bytes -> normalized float32 pixels, channels first [3, S, S]
 * (DESIGN.md section 3, "ImageProcessor"). The format is told from the first bytes (image-format.ts)
 * before any decoder runs; decoding is sharp (libvips). Every failure is an ImageError, in this
 * module's own words (never libvips' text), whose code the API maps to an HTTP status:
 * invalid_image and image_truncated 400, too_large 413, unsupported_media 415.
 */
import { readFile, stat } from 'node:fs/promises';
import * as tf from '@tensorflow/tfjs-core';
import sharp, { type Metadata } from 'sharp';
import { ACCEPTED_NAMES, looksTruncated, sniffFormat, type AcceptedFormat } from './image-format.ts';

export type RGB = readonly [number, number, number];

export const IMAGENET_MEAN: RGB = Object.freeze([0.485, 0.456, 0.406] as const);
export const IMAGENET_STD: RGB = Object.freeze([0.229, 0.224, 0.225] as const);

export interface ImageProcessorOptions {
  /** Output height and width in pixels. */
  imageSize: number;
  /** Per-channel mean and std on the [0, 1] scale; default 0.5 each, which maps [0, 1] to [-1, 1]. */
  mean?: RGB;
  std?: RGB;
  /** fill: whole image, aspect not kept; cover: centre crop; contain: letterbox. Default fill. */
  resize?: 'fill' | 'cover' | 'contain';
  /** Largest accepted encoded input, in bytes. Default 20 MiB. */
  maxInputBytes?: number;
  /** Largest accepted width x height as declared by the file header. Default 40e6. */
  maxPixels?: number;
}

export type ImageErrorCode = 'invalid_image' | 'image_truncated' | 'unsupported_media' | 'too_large';

export class ImageError extends Error {
  override readonly name = 'ImageError';

  constructor(
    readonly code: ImageErrorCode,
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

// Each request decodes a different image, so libvips' operation cache would only keep memory
// (up to 50 MB by default) busy with inputs that are never seen again.
sharp.cache(false);

const ACCEPTED = 'JPEG, PNG, WebP, GIF, AVIF or TIFF';

// How libvips' loaders word a file that ends too soon; any other decoder failure is a corrupt file.
// Not 'bad seek': libvips' HEIF loader logs it while probing any AVIF, whole or not.
const TRUNCATION_MESSAGES = /premature end|unexpected end|truncated|end of file|out of data|short read|not enough data/i;

// White because transparent pixels are flattened onto white too: the model then sees one
// colour for "no image content", whether it comes from alpha or from letterboxing.
const WHITE = { r: 255, g: 255, b: 255, alpha: 1 };

export class ImageProcessor {
  readonly options: Readonly<Required<ImageProcessorOptions>>;

  constructor(options: ImageProcessorOptions) {
    // Field by field rather than a spread, so that an explicit `undefined` still gets the default.
    const resolved = {
      imageSize: options.imageSize,
      mean: options.mean ?? ([0.5, 0.5, 0.5] as const),
      std: options.std ?? ([0.5, 0.5, 0.5] as const),
      resize: options.resize ?? 'fill',
      maxInputBytes: options.maxInputBytes ?? 20 * 1024 * 1024,
      maxPixels: options.maxPixels ?? 40e6,
    };
    for (const key of ['imageSize', 'maxInputBytes', 'maxPixels'] as const) {
      if (!Number.isSafeInteger(resolved[key]) || resolved[key] <= 0) {
        throw new RangeError(`ImageProcessor: ${key} must be a positive integer, got ${resolved[key]}`);
      }
    }
    if (resolved.mean.length !== 3 || !resolved.mean.every(Number.isFinite)) {
      throw new RangeError(`ImageProcessor: mean must be 3 finite numbers, got ${resolved.mean}`);
    }
    if (resolved.std.length !== 3 || !resolved.std.every((s) => Number.isFinite(s) && s > 0)) {
      throw new RangeError(`ImageProcessor: std must be 3 positive numbers, got ${resolved.std}`);
    }
    if (!['fill', 'cover', 'contain'].includes(resolved.resize)) {
      throw new RangeError(`ImageProcessor: resize must be fill, cover or contain, got ${resolved.resize}`);
    }
    this.options = Object.freeze(resolved);
  }

  /** Decodes one image to normalized pixels, layout [3, H, W] flattened. */
  async decode(input: Buffer | Uint8Array | string): Promise<Float32Array> {
    const bytes = await this.read(input);
    const format = acceptedFormat(bytes);
    if (looksTruncated(format, bytes)) throw truncated(format);
    const size = this.options.imageSize;
    try {
      const image = sharp(bytes, {
        // 'error' rejects truncated and corrupt pixel data; the default 'warning' would also refuse
        // the many camera JPEGs that carry harmless oddities such as stray bytes between markers.
        failOn: 'error',
        // Enforced on the header's declared size, before any pixel is decoded: stops decompression bombs.
        limitInputPixels: this.options.maxPixels,
      });
      this.checkFormat(format, await image.metadata());
      const { data, info } = await image
        .rotate() // EXIF orientation
        .flatten({ background: WHITE })
        .toColourspace('srgb') // grayscale, CMYK and 16-bit inputs all become 8-bit sRGB
        .removeAlpha()
        .resize(size, size, { fit: this.options.resize, background: WHITE })
        .raw()
        .toBuffer({ resolveWithObject: true });
      if (info.channels !== 3 || info.width !== size || info.height !== size) {
        const shape = `${info.width}x${info.height}x${info.channels}`;
        throw new ImageError('invalid_image', `image decoded to an unexpected shape ${shape}`);
      }
      return this.normalize(data);
    } catch (error) {
      throw this.toImageError(error, format);
    }
  }

  /** decode() as a float32 tensor [3, imageSize, imageSize]; the caller disposes it. */
  async preprocess(input: Buffer | Uint8Array | string): Promise<tf.Tensor3D> {
    const size = this.options.imageSize;
    return tf.tensor3d(await this.decode(input), [3, size, size]);
  }

  private async read(input: Buffer | Uint8Array | string): Promise<Uint8Array> {
    if (typeof input !== 'string') {
      this.checkBytes(input.byteLength);
      return input;
    }
    try {
      // Checked before reading so that an oversized file is never loaded into memory.
      this.checkBytes((await stat(input)).size);
      return await readFile(input);
    } catch (error) {
      if (error instanceof ImageError) throw error;
      const reason = (error as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : 'it cannot be read';
      throw new ImageError('invalid_image', `cannot read image file ${input}: ${reason}`, { cause: error });
    }
  }

  private checkBytes(byteLength: number): void {
    if (byteLength === 0) throw new ImageError('invalid_image', 'image is empty');
    if (byteLength > this.options.maxInputBytes) {
      const limit = this.options.maxInputBytes;
      throw new ImageError('too_large', `image is ${byteLength} bytes, more than the limit of ${limit}`);
    }
  }

  /** libvips' own reading of the header must agree with the sniffed signature. */
  private checkFormat(sniffed: AcceptedFormat, { format, compression }: Metadata): void {
    // HEIF holds both AVIF (AV1, accepted) and HEIC (HEVC, which this libvips build cannot decode).
    if (sniffed === 'avif' && (format !== 'heif' || compression !== 'av1')) throw unsupported('HEIC');
    if (sniffed !== 'avif' && format !== sniffed) throw corrupt(sniffed);
  }

  /** HWC uint8 -> CHW float32, (x / 255 - mean) / std folded into one multiply-add. */
  private normalize(hwc: Uint8Array): Float32Array {
    const { imageSize, mean, std } = this.options;
    const plane = imageSize * imageSize;
    const chw = new Float32Array(3 * plane);
    for (let c = 0; c < 3; c++) {
      const scale = 1 / (255 * std[c]!);
      const shift = mean[c]! / std[c]!;
      for (let i = 0; i < plane; i++) chw[c * plane + i] = hwc[3 * i + c]! * scale - shift;
    }
    return chw;
  }

  /** sharp's errors are plain Errors, told apart only by their message, which is never passed on. */
  private toImageError(error: unknown, format: AcceptedFormat): ImageError {
    if (error instanceof ImageError) return error;
    const message = (error as Error).message;
    if (/pixel limit/i.test(message)) {
      return new ImageError('too_large', `image has more than ${this.options.maxPixels} pixels`, { cause: error });
    }
    if (TRUNCATION_MESSAGES.test(message)) return truncated(format, error);
    return corrupt(format, error);
  }
}

/** The sniffed format when it is one this processor decodes; 415 naming what was sent otherwise. */
function acceptedFormat(bytes: Uint8Array): AcceptedFormat {
  const sniffed = sniffFormat(bytes);
  if (sniffed.accepted) return sniffed.accepted;
  if (sniffed.name) throw unsupported(sniffed.name);
  throw new ImageError('unsupported_media', `not an image in an accepted format; send ${ACCEPTED}`);
}

function unsupported(format: string): ImageError {
  return new ImageError('unsupported_media', `${format} images are not supported; send ${ACCEPTED}`);
}

function truncated(format: AcceptedFormat, cause?: unknown): ImageError {
  return new ImageError('image_truncated', `the ${ACCEPTED_NAMES[format]} image is truncated: the file ends before its picture does`, { cause });
}

function corrupt(format: AcceptedFormat, cause?: unknown): ImageError {
  return new ImageError('invalid_image', `the ${ACCEPTED_NAMES[format]} image is corrupt and could not be decoded`, { cause });
}
