/**
 * Shared by the training tests: a tiny model, tiny job bodies, temporary DATA_DIRs, and image/caption
 * fixtures rendered from synthetic scenes in each supported file format.
 */
import { mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { renderScenePng, sceneAt, sceneCaption } from '../../../src/data/shapes.ts';

/** About 55k parameters, with dropout on so that resuming must restore its randomness too. */
export const TINY_MODEL = {
  imageSize: 16,
  patchSize: 8,
  visionDim: 32,
  visionDepth: 1,
  visionHeads: 2,
  visionMlpDim: 64,
  visionDropout: 0.1,
  projectionDim: 32,
  fusionDropout: 0.1,
  textDim: 32,
  depth: 1,
  segmentLen: 8,
  heads: 2,
  dimHead: 16,
};

export function tinyJob(train: Record<string, unknown> = {}, data: Record<string, unknown> = { type: 'synthetic-shapes', val_size: 4 }) {
  return { model: TINY_MODEL, data, train: { steps: 4, batch_size: 2, seed: 3, ...train } };
}

export function tempDir(prefix = 'titans-train-'): Promise<string> {
  return mkdtemp(join(tmpdir(), prefix));
}

export interface Fixtures {
  annotations: string;
  coco: string;
  images: string;
}

/**
 * `count` scenes as PNG files under dir/images, listed by dir/annotations.json (the original's format)
 * and dir/coco.json (COCO captions); `broken` extra entries name files that are not images.
 */
export async function writeCaptionFixtures(dir: string, count: number, broken = 0): Promise<Fixtures> {
  const images = join(dir, 'images');
  await mkdir(images, { recursive: true });
  const entries: { image: string; text: string }[] = [];
  for (let i = 0; i < count; i++) {
    const scene = sceneAt(99, 'train', i);
    await writeFile(join(images, `scene-${i}.png`), await renderScenePng(scene, { width: 48, height: 48 }));
    entries.push({ image: `scene-${i}.png`, text: sceneCaption(scene) });
  }
  for (let i = 0; i < broken; i++) {
    await writeFile(join(images, `broken-${i}.png`), 'not an image');
    entries.push({ image: `broken-${i}.png`, text: 'a broken image.' });
  }
  const coco = {
    images: entries.map((e, id) => ({ id, file_name: e.image })),
    annotations: entries.map((e, id) => ({ id, image_id: id, caption: e.text })),
  };
  await writeFile(join(dir, 'annotations.json'), JSON.stringify(entries));
  await writeFile(join(dir, 'coco.json'), JSON.stringify(coco));
  return { annotations: join(dir, 'annotations.json'), coco: join(dir, 'coco.json'), images };
}
