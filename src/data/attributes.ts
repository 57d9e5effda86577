/**
 * What a caption says of one object, as classes: for the attribute heads of vision pretraining and
 * the probes of `bench:vision` and `bench:tokens`, each attribute's class names in the order of a
 * head's logits.
 */
import { COLORS, SHAPES, type SceneObject } from './shapes.ts';

export const ATTRIBUTES = [
  { name: 'shape', classes: SHAPES as readonly string[] },
  { name: 'color', classes: Object.keys(COLORS) },
  { name: 'size', classes: ['small', 'large'] },
] as const;

export type AttributeName = (typeof ATTRIBUTES)[number]['name'];

/** An object's class index for each of ATTRIBUTES. */
export function attributeLabels(object: SceneObject): number[] {
  return [SHAPES.indexOf(object.shape), Object.keys(COLORS).indexOf(object.color), object.size === 'small' ? 0 : 1];
}
