/**
 * The image files of the evaluation (docs/shapes.md, "How it is measured"): one scene saved in each of the
 * variants a user's files come in. Every variant shows the same scene, so all must get its caption.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import sharp, { type Sharp } from 'sharp';
import { Random } from '../../model/random.ts';
import { deriveSeed } from '../data/seed.ts';
import { renderScene, renderScenePng, sceneSvg, type Scene } from '../data/shapes.ts';

export const VARIANTS = ['png', 'jpeg', 'webp', 'transparent-png', 'exif-rotated-jpeg', 'resized', 'noisy'] as const;
export type Variant = (typeof VARIANTS)[number];

export interface EncodedVariant {
  bytes: Buffer;
  extension: 'png' | 'jpg' | 'webp';
  /** What was drawn for this file (JPEG quality, EXIF orientation, pixel size), for the report. */
  details: Record<string, number>;
}

export interface VariantFile {
  variant: Variant;
  path: string;
  details: Record<string, number>;
}

export const JPEG_QUALITY: readonly [number, number] = [60, 95];
/**
 * EXIF orientations that are pure turns (a viewer turns the stored pixels 180, 90 and 270 degrees
 * clockwise for 3, 6 and 8), each with the clockwise turn that stores the upright scene for it.
 */
const ROTATIONS: ReadonlyArray<[orientation: number, storedRotation: number]> = [[3, 180], [6, 270], [8, 90]];
/** The largest background noise docs/shapes.md allows. */
export const NOISE_STD = 8;
const CANVAS: readonly [number, number] = [48, 800];
// Its own seed path, so that what a variant draws is independent of the scene's own draws.
const VARIANT_PATH = 11;

/** Writes validation scene number `index` in every variant to `dir` as `scene-<index>-<variant>.<ext>`. */
export async function writeSceneVariants(scene: Scene, index: number, seed: number, dir: string): Promise<VariantFile[]> {
  return Promise.all(
    VARIANTS.map(async (variant, v) => {
      const { bytes, extension, details } = await encodeVariant(scene, variant, new Random(deriveSeed(seed, VARIANT_PATH, index, v)));
      const path = join(dir, `scene-${String(index).padStart(4, '0')}-${variant}.${extension}`);
      await writeFile(path, bytes);
      return { variant, path, details };
    }),
  );
}

export async function encodeVariant(scene: Scene, variant: Variant, random: Random): Promise<EncodedVariant> {
  const { width, height } = scene;
  switch (variant) {
    case 'png':
      return { bytes: await renderScenePng(scene), extension: 'png', details: { width, height } };
    case 'jpeg': {
      const quality = JPEG_QUALITY[0] + random.int(JPEG_QUALITY[1] - JPEG_QUALITY[0] + 1);
      return { bytes: await (await rendered(scene)).jpeg({ quality }).toBuffer(), extension: 'jpg', details: { quality } };
    }
    case 'webp':
      return { bytes: await (await rendered(scene)).webp().toBuffer(), extension: 'webp', details: {} };
    case 'transparent-png': {
      // Objects only: the server flattens transparency onto white, a legal background colour.
      const bytes = await sharp(Buffer.from(sceneSvg(scene, { background: false }))).ensureAlpha().png().toBuffer();
      return { bytes, extension: 'png', details: {} };
    }
    case 'exif-rotated-jpeg': {
      const [orientation, storedRotation] = ROTATIONS[random.int(ROTATIONS.length)]!;
      const bytes = await (await rendered(scene)).rotate(storedRotation).jpeg({ quality: 90 }).withMetadata({ orientation }).toBuffer();
      return { bytes, extension: 'jpg', details: { orientation } };
    }
    case 'resized': {
      const size = otherSize(scene, random);
      return { bytes: await renderScenePng(scene, size), extension: 'png', details: size };
    }
    case 'noisy':
      return { bytes: await renderScenePng({ ...scene, noise: NOISE_STD }), extension: 'png', details: { noise: NOISE_STD } };
  }
}

async function rendered(scene: Scene): Promise<Sharp> {
  const { data, width, height } = await renderScene(scene);
  return sharp(data, { raw: { width, height, channels: 3 } });
}

/**
 * A canvas of the scene's aspect ratio with a width drawn afresh within the limits of docs/shapes.md: scaling
 * keeps every rule (sizes and offsets are relative to the canvas), so the scene stays legal.
 */
function otherSize(scene: Scene, random: Random): { width: number; height: number } {
  const aspect = scene.width / scene.height;
  const [low, high] = [Math.ceil(Math.max(CANVAS[0], CANVAS[0] * aspect)), Math.floor(Math.min(CANVAS[1], CANVAS[1] * aspect))];
  for (;;) {
    const width = low + random.int(high - low + 1);
    const height = Math.round(width / aspect);
    // Rounding can carry a scene at the 3/4 or 4/3 limit just past it.
    const legal = height >= CANVAS[0] && height <= CANVAS[1] && 4 * width >= 3 * height && 3 * width <= 4 * height;
    if (width !== scene.width && legal) return { width, height };
  }
}
