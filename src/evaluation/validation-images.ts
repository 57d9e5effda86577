/**
 * The evaluation's image files: scenes of the validation split (which training never reads), each
 * written in every variant. Every scene is evaluated in every variant, so that a per-variant score
 * compares the same scenes.
 */
import { sceneAt, sceneCaption } from '../data/shapes.ts';
import { mapConcurrent } from './concurrency.ts';
import { writeSceneVariants, type Variant } from './variants.ts';

export interface ValidationImage {
  /** Index of the scene in the validation split. */
  scene: number;
  variant: Variant;
  path: string;
  details: Record<string, number>;
  expected: string;
}

/** Scenes 0..count-1 of `seed`'s validation split, in every variant, written to `dir`. */
export async function writeValidationImages(count: number, seed: number, dir: string): Promise<ValidationImage[]> {
  // Two at a time: rendering is CPU-bound (libvips and the noise loop), and the machine has two cores.
  const perScene = await mapConcurrent(Array.from({ length: count }, (_, i) => i), 2, async (index) => {
    const scene = sceneAt(seed, 'validation', index);
    const expected = sceneCaption(scene);
    const files = await writeSceneVariants(scene, index, seed, dir);
    return files.map((file) => ({ scene: index, ...file, expected }));
  });
  return perScene.flat();
}
