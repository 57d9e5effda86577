import { describe, expect, test } from 'bun:test';
import { Random } from '../../model/random.ts';
import { ByteTokenizer } from '../../model/tokenizer.ts';

const tokenizer = new ByteTokenizer();

function streamAll(ids: number[]): string[] {
  const stream = tokenizer.streamDecoder();
  return [...ids.map((id) => stream.push(id)), stream.flush()];
}

const loneSurrogate = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/** A string of random code points from every plane, surrogates excluded (they are not text). */
function randomText(random: Random, length: number): string {
  let text = '';
  for (let i = 0; i < length; i++) {
    const range = random.int(4);
    const max = [0x80, 0x800, 0x10000, 0x110000][range] ?? 0x80;
    let codePoint = random.int(max);
    if (codePoint >= 0xd800 && codePoint <= 0xdfff) codePoint -= 0x800;
    text += String.fromCodePoint(codePoint);
  }
  return text;
}

describe('ByteTokenizer', () => {
  test('has 256 tokens; the two bytes UTF-8 never uses are EOS and the image placeholder', () => {
    expect(tokenizer.numTokens).toBe(256);
    expect(tokenizer.eosTokenId).toBe(0xfe);
    expect(tokenizer.imageTokenId).toBe(0xff);
    expect(tokenizer.imageTokenId).toBe(tokenizer.numTokens - 1);
  });

  test('encodes text as its UTF-8 bytes', () => {
    expect(tokenizer.encode('Hi!')).toEqual([72, 105, 33]);
    expect(tokenizer.encode('é')).toEqual([0xc3, 0xa9]);
    expect(tokenizer.encode('€')).toEqual([0xe2, 0x82, 0xac]);
    expect(tokenizer.encode('😀')).toEqual([0xf0, 0x9f, 0x98, 0x80]);
    expect(tokenizer.encode('')).toEqual([]);
  });

  test.each([
    ['ascii', 'A red circle on a white background.\n\t"quoted" 0123456789'],
    ['accents', 'Ça déjà vu, naïve façade, Ærøskøbing, Œuvre'],
    ['CJK', '一只猫坐在垫子上。日本語のテキスト、한국어'],
    ['emoji', '😀🎉🚀 and 🇫🇷 flags'],
    ['ZWJ sequences', 'family 👨‍👩‍👧‍👦, 🏳️‍🌈, 👩🏽‍💻 skin tones'],
    ['a leading byte order mark', '\uFEFFstarts with U+FEFF'],
    ['control characters and NUL', '\u0000\u0001\u007f\u0080\u00ff'],
  ])('round-trips %s', (_, text) => {
    expect(tokenizer.decode(tokenizer.encode(text))).toBe(text);
  });

  test('round-trips random strings of code points from every plane', () => {
    const random = new Random(1234);
    for (let i = 0; i < 200; i++) {
      const text = randomText(random, 1 + random.int(40));
      expect(tokenizer.decode(tokenizer.encode(text))).toBe(text);
    }
  });

  test('never produces the EOS or image ids when encoding text', () => {
    const random = new Random(99);
    const ids = tokenizer.encode(randomText(random, 5000));
    expect(ids).not.toContain(tokenizer.eosTokenId);
    expect(ids).not.toContain(tokenizer.imageTokenId);
  });

  test('EOS and image ids are not text: decode skips them', () => {
    const { eosTokenId, imageTokenId } = tokenizer;
    expect(tokenizer.decode([imageTokenId, ...tokenizer.encode('a cat'), eosTokenId])).toBe('a cat');
    expect(tokenizer.isText(eosTokenId)).toBe(false);
    expect(tokenizer.isText(imageTokenId)).toBe(false);
    expect(tokenizer.isText(0x41)).toBe(true);
  });

  test('invalid bytes decode to U+FFFD', () => {
    expect(tokenizer.decode([0x41, 0x80, 0x42])).toBe('A\uFFFDB');
    expect(tokenizer.decode([0xc3])).toBe('\uFFFD');
    expect(tokenizer.decode([0xf0, 0x9f, 0x41])).toBe('\uFFFDA');
    expect(tokenizer.decode([0xc0, 0xaf])).toBe('\uFFFD\uFFFD');
  });

  test('accepts any iterable of ids', () => {
    expect(tokenizer.decode(new Set([104, 105]))).toBe('hi');
    expect(tokenizer.decode(Int32Array.of(0xe2, 0x82, 0xac))).toBe('€');
  });

  test('refuses ids outside the vocabulary', () => {
    expect(() => tokenizer.decode([256])).toThrow(RangeError);
    expect(() => tokenizer.decode([-1])).toThrow(/token id/);
    expect(() => tokenizer.streamDecoder().push(1.5)).toThrow(/token id/);
  });
});

describe('StreamDecoder', () => {
  test('emits ascii at once, one character per token', () => {
    expect(streamAll(tokenizer.encode('abc'))).toEqual(['a', 'b', 'c', '']);
  });

  test('emits nothing for a partial emoji and the whole emoji at its last byte', () => {
    expect(streamAll(tokenizer.encode('😀!'))).toEqual(['', '', '', '😀', '!', '']);
  });

  test('emits each character of a ZWJ sequence as soon as its bytes are complete', () => {
    const text = '👩‍💻';
    const pieces = streamAll(tokenizer.encode(text)).filter((piece) => piece !== '');
    expect(pieces).toEqual(['👩', '\u200d', '💻']);
  });

  test('its concatenated output equals decode(), for text, special tokens and invalid bytes', () => {
    const random = new Random(7);
    for (let i = 0; i < 100; i++) {
      const ids = tokenizer.encode(randomText(random, 20));
      // Sprinkle special tokens and stray bytes, as an untrained model would.
      for (let j = 0; j < 5; j++) ids.splice(random.int(ids.length + 1), 0, random.int(256));
      expect(streamAll(ids).join('')).toBe(tokenizer.decode(ids));
    }
  });

  test('never emits half a character: every piece is whole UTF-16', () => {
    const random = new Random(11);
    const ids = tokenizer.encode(randomText(random, 500));
    for (const piece of streamAll(ids)) {
      expect(piece).not.toMatch(loneSurrogate);
      expect(piece).not.toContain('\uFFFD');
    }
  });

  test('EOS and image tokens emit nothing and do not break a pending character', () => {
    const { eosTokenId, imageTokenId } = tokenizer;
    const ids = [0xf0, 0x9f, eosTokenId, 0x98, imageTokenId, 0x80]; // 😀 with specials inside
    expect(streamAll(ids)).toEqual(['', '', '', '', '', '😀', '']);
  });

  test('invalid bytes become U+FFFD as soon as they are known to be invalid', () => {
    expect(streamAll([0x80, 0x41])).toEqual(['\uFFFD', 'A', '']);
    expect(streamAll([0xf0, 0x9f, 0x41])).toEqual(['', '', '\uFFFDA', '']);
  });

  test('flush turns an unfinished character into U+FFFD and resets the decoder', () => {
    const stream = tokenizer.streamDecoder();
    expect(stream.push(0xe2)).toBe('');
    expect(stream.push(0x82)).toBe('');
    expect(stream.flush()).toBe('\uFFFD');
    expect(stream.push(0x41)).toBe('A');
    expect(stream.flush()).toBe('');
  });
});
