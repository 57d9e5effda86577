import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import sharp, { type CreateRaw, type Sharp } from 'sharp';
import { IMAGENET_MEAN, IMAGENET_STD, ImageError, type ImageErrorCode, ImageProcessor } from '../../src/image.ts';

type Colour = { r: number; g: number; b: number };
const RED: Colour = { r: 255, g: 0, b: 0 };
const GREEN: Colour = { r: 0, g: 255, b: 0 };
const BLUE: Colour = { r: 0, g: 0, b: 255 };
const ORANGE: Colour = { r: 200, g: 100, b: 50 };

/** A solid-colour image as a sharp pipeline, ready for any encoder. */
function solid(width: number, height: number, colour: Colour & { alpha?: number } = ORANGE, channels: 3 | 4 = 3) {
  return sharp({ create: { width, height, channels, background: colour } });
}

/** Vertical stripes of equal width, left to right, as a sharp pipeline. */
function stripes(width: number, height: number, colours: Colour[]) {
  const pixels = Buffer.alloc(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const { r, g, b } = colours[Math.floor((x * colours.length) / width)]!;
      pixels.set([r, g, b], 3 * (y * width + x));
    }
  }
  return sharp(pixels, { raw: { width, height, channels: 3 } });
}

/** Gaussian noise around mid-grey, as a sharp pipeline. */
function noise(size: number, sigma: number) {
  const gaussian = { type: 'gaussian', mean: 128, sigma } as const;
  return sharp({ create: { width: size, height: size, channels: 3, background: 'black', noise: gaussian } });
}

/** The normalized [r, g, b] at (row, col) of a decoded [3, S, S] array. */
function pixel(chw: Float32Array, size: number, row: number, col: number): number[] {
  return [0, 1, 2].map((c) => chw[c * size * size + row * size + col]!);
}

/** With the default mean = std = 0.5, a channel value v in 0..255 becomes 2v/255 - 1. */
function normalized({ r, g, b }: Colour): number[] {
  return [r, g, b].map((v) => (v / 255 - 0.5) / 0.5);
}

function expectClose(actual: number[], expected: number[], tolerance: number) {
  expect(actual).toHaveLength(expected.length);
  actual.forEach((value, i) => expect(Math.abs(value - expected[i]!)).toBeLessThanOrEqual(tolerance));
}

async function expectImageError(promise: Promise<unknown>, code: ImageErrorCode): Promise<ImageError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(ImageError);
  expect((error as ImageError).code).toBe(code);
  return error as ImageError;
}

/** A real 1x1 PNG whose IHDR is rewritten to declare width x height, with a valid CRC. */
async function pngDeclaring(width: number, height: number): Promise<Buffer> {
  const png = Buffer.from(await solid(1, 1).png().toBuffer());
  // Signature (8) + chunk length (4), then "IHDR" at 12, width at 16, height at 20, CRC at 29.
  png.writeUInt32BE(width, 16);
  png.writeUInt32BE(height, 20);
  png.writeUInt32BE(Bun.hash.crc32(png.subarray(12, 29)), 29);
  return png;
}

const processor = new ImageProcessor({ imageSize: 32 });
const ONE_LEVEL = 2 / 255; // one 8-bit step after the default normalization

describe('ImageProcessor options', () => {
  test('resolves the documented defaults', () => {
    expect(processor.options).toEqual({
      imageSize: 32,
      mean: [0.5, 0.5, 0.5],
      std: [0.5, 0.5, 0.5],
      resize: 'fill',
      maxInputBytes: 20 * 1024 * 1024,
      maxPixels: 40e6,
    });
  });

  test('refuses invalid options loudly', () => {
    expect(() => new ImageProcessor({ imageSize: 0 })).toThrow(RangeError);
    expect(() => new ImageProcessor({ imageSize: 2.5 })).toThrow(RangeError);
    expect(() => new ImageProcessor({ imageSize: 8, std: [0.5, 0, 0.5] })).toThrow(RangeError);
    expect(() => new ImageProcessor({ imageSize: 8, resize: 'stretch' as 'fill' })).toThrow(RangeError);
    expect(() => new ImageProcessor({ imageSize: 8, maxPixels: -1 })).toThrow(RangeError);
  });
});

describe('ImageProcessor.decode: formats', () => {
  test('a solid PNG gives exactly (v / 255 - 0.5) / 0.5 in every pixel, channels first', async () => {
    const chw = await processor.decode(await solid(10, 7).png().toBuffer());
    expect(chw).toBeInstanceOf(Float32Array);
    expect(chw).toHaveLength(3 * 32 * 32);
    const plane = 32 * 32;
    const expected = normalized(ORANGE);
    for (let c = 0; c < 3; c++) {
      for (const value of chw.subarray(c * plane, (c + 1) * plane)) expect(value).toBeCloseTo(expected[c]!, 6);
    }
  });

  // Lossy encoders move a flat colour by a few levels; the tolerance is in 8-bit steps.
  const encoders: Array<[string, (image: Sharp) => Sharp, number]> = [
    ['JPEG', (image) => image.jpeg({ quality: 95 }), 4],
    ['WebP', (image) => image.webp({ lossless: true }), 0],
    ['GIF', (image) => image.gif(), 0],
    ['AVIF', (image) => image.avif({ quality: 90 }), 6],
    ['TIFF', (image) => image.tiff(), 0],
  ];
  for (const [name, encode, levels] of encoders) {
    test(`decodes ${name}`, async () => {
      const chw = await processor.decode(await encode(solid(24, 24)).toBuffer());
      expect(chw).toHaveLength(3 * 32 * 32);
      expectClose(pixel(chw, 32, 16, 16), normalized(ORANGE), levels * ONE_LEVEL + 1e-6);
      expectClose(pixel(chw, 32, 0, 31), normalized(ORANGE), levels * ONE_LEVEL + 1e-6);
    });
  }

  test('accepts a Uint8Array as well as a Buffer', async () => {
    const png = await solid(4, 4).png().toBuffer();
    const chw = await processor.decode(new Uint8Array(png));
    expectClose(pixel(chw, 32, 3, 3), normalized(ORANGE), 1e-6);
  });

  test('uses the first frame of an animated GIF', async () => {
    const frames = Buffer.concat([RED, BLUE].map(({ r, g, b }) => Buffer.from(Array(8 * 8).fill([r, g, b]).flat())));
    const gif = await sharp(frames, { raw: { width: 8, height: 16, channels: 3, pageHeight: 8 } as CreateRaw })
      .gif()
      .toBuffer();
    expect((await sharp(gif).metadata()).pages).toBe(2);
    expectClose(pixel(await processor.decode(gif), 32, 16, 16), normalized(RED), 1e-6);
  });

  test('grayscale becomes three equal channels', async () => {
    const gray = await solid(8, 8, { r: 100, g: 100, b: 100 }).toColourspace('b-w').png().toBuffer();
    expect((await sharp(gray).metadata()).channels).toBe(1);
    expectClose(pixel(await processor.decode(gray), 32, 5, 5), normalized({ r: 100, g: 100, b: 100 }), 1e-6);
  });

  test('transparent pixels are flattened onto white (value 1)', async () => {
    const rgba = await solid(8, 8, { ...RED, alpha: 0 }, 4).png().toBuffer();
    expect((await sharp(rgba).metadata()).hasAlpha).toBe(true);
    expectClose(pixel(await processor.decode(rgba), 32, 4, 4), [1, 1, 1], 1e-6);
  });

  test('16-bit PNG comes out as its 8-bit values', async () => {
    const deep = await solid(8, 8).toColourspace('rgb16').png().toBuffer();
    expect((await sharp(deep).metadata()).depth).toBe('ushort');
    expectClose(pixel(await processor.decode(deep), 32, 4, 4), normalized(ORANGE), ONE_LEVEL + 1e-6);
  });

  test('16-bit RGBA is flattened onto white too', async () => {
    const deep = await solid(8, 8, { ...BLUE, alpha: 0 }, 4).toColourspace('rgb16').png().toBuffer();
    expect((await sharp(deep).metadata()).depth).toBe('ushort');
    expectClose(pixel(await processor.decode(deep), 32, 4, 4), [1, 1, 1], ONE_LEVEL + 1e-6);
  });

  test('applies EXIF orientation: a 40x20 image tagged 6 comes out as 20x40, left half on top', async () => {
    const image = stripes(40, 20, [RED, BLUE]);
    const upright = await processor.decode(await image.clone().png().toBuffer());
    expectClose(pixel(upright, 32, 16, 4), normalized(RED), 1e-6);
    expectClose(pixel(upright, 32, 16, 28), normalized(BLUE), 1e-6);

    const tagged = await image.jpeg({ quality: 95 }).withMetadata({ orientation: 6 }).toBuffer();
    expect((await sharp(tagged).metadata()).orientation).toBe(6);
    const rotated = await processor.decode(tagged);
    const jpegSlack = 12 * ONE_LEVEL;
    for (const col of [2, 16, 29]) {
      expectClose(pixel(rotated, 32, 4, col), normalized(RED), jpegSlack);
      expectClose(pixel(rotated, 32, 28, col), normalized(BLUE), jpegSlack);
    }
  });
});

describe('ImageProcessor.decode: resize modes on a 60x20 image with red | green | blue thirds', () => {
  const wide = () => stripes(60, 20, [RED, GREEN, BLUE]).png().toBuffer();

  test('fill stretches the whole image, aspect not kept', async () => {
    const chw = await new ImageProcessor({ imageSize: 30, resize: 'fill' }).decode(await wide());
    for (const row of [0, 15, 29]) {
      expectClose(pixel(chw, 30, row, 2), normalized(RED), 1e-6);
      expectClose(pixel(chw, 30, row, 15), normalized(GREEN), 1e-6);
      expectClose(pixel(chw, 30, row, 27), normalized(BLUE), 1e-6);
    }
  });

  test('cover keeps the centre square: only green remains', async () => {
    const chw = await new ImageProcessor({ imageSize: 30, resize: 'cover' }).decode(await wide());
    // The outermost columns are blended with red and blue by the resampling kernel.
    for (const row of [0, 15, 29]) {
      for (const col of [4, 15, 25]) expectClose(pixel(chw, 30, row, col), normalized(GREEN), 1e-6);
    }
  });

  test('contain letterboxes with white bars above and below', async () => {
    const chw = await new ImageProcessor({ imageSize: 30, resize: 'contain' }).decode(await wide());
    // 60x20 scales to 30x10, centred: rows 10..19 hold the image.
    for (const row of [0, 9, 20, 29]) expectClose(pixel(chw, 30, row, 15), [1, 1, 1], 1e-6);
    expectClose(pixel(chw, 30, 15, 2), normalized(RED), 1e-6);
    expectClose(pixel(chw, 30, 15, 15), normalized(GREEN), 1e-6);
    expectClose(pixel(chw, 30, 15, 27), normalized(BLUE), 1e-6);
  });
});

describe('ImageProcessor.decode: normalization', () => {
  const clipped = () => noise(48, 90).png().toBuffer();

  test('default mean/std maps 0..255 onto exactly [-1, 1]', async () => {
    // Same size in and out, so no resampling averages away the clipped 0 and 255 pixels.
    const chw = await new ImageProcessor({ imageSize: 48 }).decode(await clipped());
    expect(Math.min(...chw)).toBeCloseTo(-1, 6);
    expect(Math.max(...chw)).toBeCloseTo(1, 6);
  });

  test('ImageNet mean/std keeps each channel within [(0 - m) / s, (1 - m) / s]', async () => {
    const size = 32;
    const imagenet = new ImageProcessor({ imageSize: size, mean: IMAGENET_MEAN, std: IMAGENET_STD });
    const chw = await imagenet.decode(await clipped());
    for (let c = 0; c < 3; c++) {
      const [m, s] = [IMAGENET_MEAN[c]!, IMAGENET_STD[c]!];
      const channel = chw.subarray(c * size * size, (c + 1) * size * size);
      expect(Math.min(...channel)).toBeGreaterThanOrEqual(-m / s - 1e-5);
      expect(Math.max(...channel)).toBeLessThanOrEqual((1 - m) / s + 1e-5);
    }
  });

  test('ImageNet normalization of a solid colour is exact', async () => {
    const chw = await new ImageProcessor({ imageSize: 4, mean: IMAGENET_MEAN, std: IMAGENET_STD }).decode(
      await solid(4, 4).png().toBuffer(),
    );
    const expected = [ORANGE.r, ORANGE.g, ORANGE.b].map((v, c) => (v / 255 - IMAGENET_MEAN[c]!) / IMAGENET_STD[c]!);
    expectClose(pixel(chw, 4, 2, 2), expected, 1e-5);
  });
});

describe('ImageProcessor.decode: refused inputs are ImageErrors', () => {
  test('random bytes and text are unsupported_media, refused from their first bytes', async () => {
    const random = new Uint8Array(512).map(() => Math.floor(Math.random() * 256));
    random[0] = 0x01; // no image signature starts with this byte
    await expectImageError(processor.decode(random), 'unsupported_media');
    const error = await expectImageError(processor.decode(Buffer.from('hello, I am not a picture')), 'unsupported_media');
    expect(error.message).toContain('not an image in an accepted format');
  });

  test('an empty input is invalid_image', async () => {
    await expectImageError(processor.decode(new Uint8Array(0)), 'invalid_image');
  });

  // Cut at 3000 bytes (what a broken upload sends), at half, and just before the end marker.
  const truncatable: Array<[string, (image: Sharp) => Sharp]> = [
    ['JPEG', (image) => image.jpeg()],
    ['progressive JPEG', (image) => image.jpeg({ progressive: true })],
    ['PNG', (image) => image.png()],
    ['WebP', (image) => image.webp()],
    ['GIF', (image) => image.gif()],
  ];
  for (const [name, encode] of truncatable) {
    test(`a truncated ${name} is image_truncated, in our own words`, async () => {
      const whole = await encode(noise(160, 40)).toBuffer();
      expect(whole.length).toBeGreaterThan(6000);
      for (const length of [3000, whole.length >> 1, whole.length - 2]) {
        const error = await expectImageError(processor.decode(whole.subarray(0, length)), 'image_truncated');
        expect(error.message).toMatch(/^the (JPEG|PNG|WebP|GIF) image is truncated: the file ends before its picture does$/);
      }
    });
  }

  test('a truncated PNG with the letters IEND in an earlier chunk is image_truncated: its chunks are walked, not searched', async () => {
    const png = await noise(160, 40).png({ compressionLevel: 0 }).toBuffer();
    const text = Buffer.from('Comment\0IEND');
    const chunk = Buffer.concat([Buffer.alloc(4), Buffer.from('tEXt'), text, Buffer.alloc(4)]);
    chunk.writeUInt32BE(text.length, 0);
    chunk.writeUInt32BE(Bun.hash.crc32(chunk.subarray(4, 8 + text.length)) >>> 0, 8 + text.length);
    // After the signature (8 bytes) and the header chunk (25).
    const commented = Buffer.concat([png.subarray(0, 33), chunk, png.subarray(33)]);
    expect((await processor.decode(commented)).length).toBe(3 * 32 * 32);
    await expectImageError(processor.decode(commented.subarray(0, commented.length >> 1)), 'image_truncated');
  });

  test('a truncated TIFF or AVIF is image_truncated, in our own words: a TIFF\'s directory, strips, tiles or JPEG tables, an AVIF\'s boxes cut short', async () => {
    const encodings: Array<(image: Sharp) => Sharp> = [
      (image) => image.tiff({ compression: 'none' }),
      (image) => image.tiff({ compression: 'jpeg' }),
      (image) => image.tiff({ compression: 'deflate', tile: true, tileWidth: 16, tileHeight: 16 }),
      (image) => image.avif(),
    ];
    for (const encode of encodings) {
      const whole = await encode(noise(160, 40)).toBuffer();
      for (const length of [64, whole.length >> 1, whole.length - 2]) {
        const error = await expectImageError(processor.decode(whole.subarray(0, length)), 'image_truncated');
        expect(error.message).toMatch(/^the (TIFF|AVIF) image is truncated: the file ends before its picture does$/);
      }
    }
  });

  test('a truncated BigTIFF (8-byte offsets) is image_truncated too', async () => {
    // One grey strip of 32 x 32 bytes after a directory of 20-byte entries, each value in place.
    const [side, tags] = [32, [[256, 3, 32], [257, 3, 32], [258, 3, 8], [259, 3, 1], [262, 3, 1], [273, 16, 0], [277, 3, 1], [278, 3, 32], [279, 16, 32 * 32]]];
    const directory = 16;
    const data = directory + 8 + 20 * tags.length + 8;
    const file = Buffer.alloc(data + side * side, 0x80);
    file.write('II', 0, 'latin1');
    file.writeUInt16LE(43, 2);
    file.writeUInt16LE(8, 4);
    file.writeUInt16LE(0, 6);
    file.writeBigUInt64LE(BigInt(directory), 8);
    file.writeBigUInt64LE(BigInt(tags.length), directory);
    tags.forEach(([tag, type, value], i) => {
      const entry = directory + 8 + 20 * i;
      file.writeUInt16LE(tag!, entry);
      file.writeUInt16LE(type!, entry + 2);
      file.writeBigUInt64LE(1n, entry + 4);
      file.fill(0, entry + 12, entry + 20);
      if (type === 3) file.writeUInt16LE(value!, entry + 12);
      else file.writeBigUInt64LE(BigInt(tag === 273 ? data : value!), entry + 12);
    });
    file.writeBigUInt64LE(0n, data - 8);
    expect((await processor.decode(file)).length).toBe(3 * 32 * 32);
    for (const length of [12, data - 30, data + 100, file.length - 2]) {
      await expectImageError(processor.decode(file.subarray(0, length)), 'image_truncated');
    }
  });

  test('an AVIF followed by a few stray bytes still decodes: only a box that runs past the end is a truncation', async () => {
    const avif = await noise(64, 40).avif().toBuffer();
    for (const tail of ['\r\n', '\0\0\0\0\0\0\0', '\xff'.repeat(12)]) {
      expect((await processor.decode(Buffer.concat([avif, Buffer.from(tail, 'latin1')]))).length).toBe(3 * 32 * 32);
    }
  });

  test('a whole AVIF whose picture is garbage is invalid_image, not image_truncated: sending it again would not help', async () => {
    const avif = Buffer.from(await noise(64, 40).avif().toBuffer());
    const mdat = avif.indexOf('mdat', 0, 'latin1');
    avif.fill(0x5a, mdat + 4, avif.length);
    await expectImageError(processor.decode(avif), 'invalid_image');
  });

  test('a TIFF whose directory repeats the strips\' tag thousands of times, each with millions of values, is read once: answered at once', async () => {
    // 2,000 entries, each saying 10 million strip offsets lie in the same 20 MB: read again for each,
    // they took 45 ms apiece, a minute and a half on the request thread.
    const [entries, values] = [2000, 10_000_000];
    const header = Buffer.alloc(8 + 2 + 12 * entries + 4);
    header.write('II*\0', 0, 'latin1');
    header.writeUInt32LE(8, 4);
    header.writeUInt16LE(entries, 8);
    for (let i = 0; i < entries; i++) {
      const entry = 10 + 12 * i;
      header.writeUInt16LE(273, entry);
      header.writeUInt16LE(3, entry + 2);
      header.writeUInt32LE(values, entry + 4);
      header.writeUInt32LE(header.length, entry + 8);
    }
    const error = await processor.decode(Buffer.concat([header, Buffer.alloc(2 * values)])).then(() => undefined, (e: unknown) => e as ImageError);
    expect(error).toBeInstanceOf(ImageError);
  });

  test('a JPEG with a broken Huffman table is invalid_image, without libvips\' words', async () => {
    const jpeg = Buffer.from(await noise(64, 40).jpeg().toBuffer());
    const table = jpeg.indexOf(Buffer.from([0xff, 0xc4]));
    jpeg.fill(0xff, table + 5, table + 21);
    const error = await expectImageError(processor.decode(jpeg), 'invalid_image');
    expect(error.message).toBe('the JPEG image is corrupt and could not be decoded');
  });

  test('an SVG with a DOCTYPE and an external entity is refused before any parser reads it', async () => {
    const svg = `<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
      <svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><text>&xxe;</text></svg>`;
    const error = await expectImageError(processor.decode(Buffer.from(svg)), 'unsupported_media');
    expect(error.message).toBe('SVG images are not supported; send JPEG, PNG, WebP, GIF, AVIF or TIFF');
    expect(error.cause).toBeUndefined();
  });

  test('HEIC (an ISO-BMFF file without the AVIF brand) is unsupported_media', async () => {
    const heic = Buffer.concat([Buffer.from([0, 0, 0, 24]), Buffer.from('ftypheic\0\0\0\0mif1heic'), Buffer.alloc(64)]);
    const error = await expectImageError(processor.decode(heic), 'unsupported_media');
    expect(error.message).toContain('HEIC');
  });

  test('SVG is unsupported_media (never rendered)', async () => {
    const svg =
      '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10" fill="red"/></svg>';
    const error = await expectImageError(processor.decode(Buffer.from(svg)), 'unsupported_media');
    expect(error.message).toContain('SVG');
  });

  test('PDF is unsupported_media', async () => {
    const pdf = Buffer.from('%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n');
    const error = await expectImageError(processor.decode(pdf), 'unsupported_media');
    expect(error.message).toContain('PDF');
  });

  test('a header declaring 30000x30000 is too_large before any pixel is decoded', async () => {
    const bomb = await pngDeclaring(30000, 30000);
    expect(bomb.length).toBeLessThan(100);
    await expectImageError(processor.decode(bomb), 'too_large');
  });

  test('a real, well-compressed large PNG over maxPixels is too_large', async () => {
    const large = await solid(2000, 1000).png({ compressionLevel: 9 }).toBuffer();
    expect(large.length).toBeLessThan(64 * 1024);
    await expectImageError(new ImageProcessor({ imageSize: 8, maxPixels: 1_000_000 }).decode(large), 'too_large');
    expect(await new ImageProcessor({ imageSize: 8, maxPixels: 2_000_000 }).decode(large)).toHaveLength(3 * 8 * 8);
  });

  test('input over maxInputBytes is too_large', async () => {
    const png = await stripes(32, 32, [RED, GREEN, BLUE]).png().toBuffer();
    const small = new ImageProcessor({ imageSize: 8, maxInputBytes: png.length - 1 });
    const error = await expectImageError(small.decode(png), 'too_large');
    expect(error.message).toContain(String(png.length));
  });
});

describe('ImageProcessor.decode: file paths', () => {
  let dir = '';
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'titans-image-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('decodes a file given by path', async () => {
    const path = join(dir, 'orange.png');
    await writeFile(path, await solid(5, 5).png().toBuffer());
    expectClose(pixel(await processor.decode(path), 32, 0, 0), normalized(ORANGE), 1e-6);
  });

  test('a file over maxInputBytes is too_large', async () => {
    const path = join(dir, 'big.png');
    const png = await solid(5, 5).png().toBuffer();
    await writeFile(path, png);
    const small = new ImageProcessor({ imageSize: 8, maxInputBytes: png.length - 1 });
    await expectImageError(small.decode(path), 'too_large');
  });

  test('a missing path names the file', async () => {
    const path = join(dir, 'missing.png');
    const error = await expectImageError(processor.decode(path), 'invalid_image');
    expect(error.message).toContain(path);
    expect(error.message).toContain('no such file');
  });
});

describe('ImageProcessor.preprocess', () => {
  beforeAll(async () => {
    await tf.ready();
  });

  test('returns a float32 Tensor3D [3, S, S] with the decoded values', async () => {
    const before = tf.memory().numTensors;
    const png = await solid(6, 9).png().toBuffer();
    const tensor = await processor.preprocess(png);
    try {
      expect(tensor.rank).toBe(3);
      expect(tensor.shape).toEqual([3, 32, 32]);
      expect(tensor.dtype).toBe('float32');
      expect(await tensor.data()).toEqual(await processor.decode(png));
    } finally {
      tensor.dispose();
    }
    expect(tf.memory().numTensors).toBe(before);
  });
});
