import { expect, test } from 'bun:test';
import { captionExample, collate, widenImageSlots } from '../../../src/data/batch.ts';

const IMAGE = 255;
const EOS = 254;

test('a caption example is prompt, one image placeholder, caption, EOS', () => {
  const example = captionExample('ab', 'c.', new Float32Array(3), 64);
  expect(example.tokens).toEqual([97, 98, IMAGE, 99, 46, EOS]);
  expect(example.image?.position).toBe(2);
});

test('widenImageSlots gives each image the placeholders a numImageTokens model fills', () => {
  const pixels = new Float32Array(3);
  const batch = collate([captionExample('ab', 'c.', pixels, 64), captionExample('', 'xyz.', pixels, 64)]);
  const wide = widenImageSlots(batch, 3);
  expect(wide.lengths).toEqual([8, 8]);
  expect(wide.imagePositions).toEqual([[2], [0]]);
  expect(Array.from(wide.ids.subarray(0, 8))).toEqual([97, 98, IMAGE, IMAGE, IMAGE, 99, 46, EOS]);
  expect(Array.from(wide.ids.subarray(8, 16))).toEqual([IMAGE, IMAGE, IMAGE, 120, 121, 122, 46, EOS]);
  expect(wide.images).toBe(batch.images);
  expect(widenImageSlots(batch, 1)).toBe(batch);
});
