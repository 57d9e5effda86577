/**
 * What a caption says of one object, as classes for the attribute probes of `bench:vision` and
 * `bench:tokens`: each attribute's class names in the order of a probe's logits.
 */
import { COLORS, SHAPES, type SceneObject } from '../src/data/shapes.ts';

export const ATTRIBUTES = [
  { name: 'shape', classes: SHAPES as readonly string[] },
  { name: 'color', classes: Object.keys(COLORS) },
  { name: 'size', classes: ['small', 'large'] },
] as const;

/** An object's class index for each of ATTRIBUTES. */
export function attributeLabels(object: SceneObject): number[] {
  return [SHAPES.indexOf(object.shape), Object.keys(COLORS).indexOf(object.color), object.size === 'small' ? 0 : 1];
}
