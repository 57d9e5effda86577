/**
 * Reads a caption of docs/shapes.md back into its parts, so that a wrong caption can still be
 * credited for the attributes it got right. Tolerant of what does not change the meaning (case,
 * spacing, a missing final period, text after the first sentence); any other shape is unparseable.
 */

export interface CaptionObject {
  size: string;
  color: string;
  shape: string;
}

export interface ParsedCaption {
  /** In reading order: left before right, upper before lower. */
  objects: CaptionObject[];
  relation: 'alone' | 'left of' | 'above';
}

const OBJECT = String.raw`an? (\S+) (\S+) (\S+)`;
const CAPTION = new RegExp(`^${OBJECT}(?: (to the left of|above) ${OBJECT})?$`);

/** The caption's parts, or null when it is not a caption of the data set's form. */
export function parseCaption(text: string): ParsedCaption | null {
  const sentence = text.toLowerCase().split('.')[0]!.replace(/\s+/g, ' ').trim();
  const match = CAPTION.exec(sentence);
  if (!match) return null;
  const [, size1, color1, shape1, relation, size2, color2, shape2] = match;
  const first = { size: size1!, color: color1!, shape: shape1! };
  if (relation === undefined) return { objects: [first], relation: 'alone' };
  return { objects: [first, { size: size2!, color: color2!, shape: shape2! }], relation: relation === 'above' ? 'above' : 'left of' };
}
