import { expect, test } from 'bun:test';
import { captionExample, collate, widenImageSlots } from '../../../src/data/batch.ts';

const IMAGE = 255;
const EOS = 254;

test('a caption example is prompt, one image placeholder, caption, EOS', () => {
  const example = captionExample('ab', 'c.', new Float32Array(3), 64);
  expect(example.tokens).toEqual([97, 98, IMAGE, 99, 46, EOS]);
  expect(example.image?.position).toBe(2);
});

test('a caption cut to fit max_tokens has no EOS, and is cut between characters, never inside one', () => {
  const pixels = new Float32Array(3);
  // 'ab', the image, 'c.' and EOS: 6 tokens fit 6, 5 cut the EOS, 4 the period too.
  expect(captionExample('ab', 'c.', pixels, 6).tokens).toEqual([97, 98, IMAGE, 99, 46, EOS]);
  expect(captionExample('ab', 'c.', pixels, 5).tokens).toEqual([97, 98, IMAGE, 99, 46]);
  expect(captionExample('ab', 'c.', pixels, 4).tokens).toEqual([97, 98, IMAGE, 99]);
  // 'é' is two bytes: room for one leaves it out whole.
  expect(captionExample('', 'caé', pixels, 4).tokens).toEqual([IMAGE, 99, 97]);
  expect(captionExample('', 'caé', pixels, 5).tokens).toEqual([IMAGE, 99, 97, 0xc3, 0xa9]);
});

test('widenImageSlots gives each image the placeholders a numImageTokens model fills', () => {
  const pixels = new Float32Array(3);
  const batch = collate([captionExample('ab', 'c.', pixels, 64), captionExample('', 'xyz.', pixels, 64)]);
  const wide = widenImageSlots(batch, { numImageTokens: 3, segmentLen: 16, maxImageOffset: 13 });
  expect(wide.lengths).toEqual([8, 8]);
  expect(wide.imagePositions).toEqual([[2], [0]]);
  expect(Array.from(wide.ids.subarray(0, 8))).toEqual([97, 98, IMAGE, IMAGE, IMAGE, 99, 46, EOS]);
  expect(Array.from(wide.ids.subarray(8, 16))).toEqual([IMAGE, IMAGE, IMAGE, 120, 121, 122, 46, EOS]);
  expect(wide.images).toBe(batch.images);
  const text = collate([{ tokens: [1, 2] }]);
  expect(widenImageSlots(text, { numImageTokens: 3, segmentLen: 16, maxImageOffset: 13 })).toBe(text);
});

test('widenImageSlots moves an image that starts past maxImageOffset to the next segment, as inference does', () => {
  const pixels = new Float32Array(3);
  const batch = collate([captionExample('ab', 'c.', pixels, 64), captionExample('abcdefg', 'c.', pixels, 64)]);
  // Segments of 6 with maxImageOffset 0: every image starts a segment, behind 4 and 5 spaces.
  const wide = widenImageSlots({ ...batch, contextLengths: [0, 7] }, { numImageTokens: 3, segmentLen: 6, maxImageOffset: 0 });
  expect(wide.imagePositions).toEqual([[6], [12]]);
  expect(Array.from(wide.ids.subarray(0, 11))).toEqual([97, 98, 32, 32, 32, 32, IMAGE, IMAGE, IMAGE, 99, 46]);
  // What a row reads as context moves with its image.
  expect(wide.contextLengths).toEqual([0, 12]);
});
