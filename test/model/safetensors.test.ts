import { describe, expect, test } from 'bun:test';
import { Random } from '../../model/random.ts';
import {
  decodeSafetensors,
  encodeSafetensors,
  fromFloat16Bits,
  SafetensorsError,
  toFloat16Bits,
  type SafeTensor,
} from '../../model/safetensors.ts';

/** A file built by hand from the spec: u64 header length, the header text as given, then the data. */
function fileOf(header: string | object, data: number[] | Uint8Array = []): Uint8Array {
  const json = new TextEncoder().encode(typeof header === 'string' ? header : JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

function expectSafetensorsError(run: () => unknown, message: RegExp): void {
  let caught: unknown;
  try {
    run();
  } catch (error) {
    caught = error;
  }
  expect(caught).toBeInstanceOf(SafetensorsError);
  expect((caught as Error).message).toMatch(message);
}

function f32Bytes(values: number[]): number[] {
  return [...new Uint8Array(new Float32Array(values).buffer)];
}

function half(value: number): number {
  return toFloat16Bits(new Float32Array([value]))[0]!;
}

function fromHalf(bits: number): number {
  return fromFloat16Bits(new Uint16Array([bits]))[0]!;
}

describe('round trip', () => {
  const tensors: Record<string, SafeTensor> = {
    'blocks.0.weight': { dtype: 'F32', shape: [2, 3], data: new Float32Array([1, -2, 3.5, 0, -0, 1e-30]) },
    'blocks.0.bias': { dtype: 'F32', shape: [3], data: new Float32Array([Infinity, -Infinity, 7]) },
    scale: { dtype: 'F32', shape: [], data: new Float32Array([0.25]) },
    empty: { dtype: 'F32', shape: [0, 4], data: new Float32Array(0) },
    halfWeight: { dtype: 'F16', shape: [2, 2], data: new Float32Array([1, -2, 0.5, 65504]) },
    halfScalar: { dtype: 'F16', shape: [], data: new Float32Array([-0.125]) },
    halfEmpty: { dtype: 'F16', shape: [0], data: new Float32Array(0) },
    step: { dtype: 'I32', shape: [], data: new Int32Array([123456]) },
    tokens: { dtype: 'I32', shape: [1, 3], data: new Int32Array([-2147483648, 0, 2147483647]) },
    noTokens: { dtype: 'I32', shape: [3, 0], data: new Int32Array(0) },
  };

  test('every dtype, scalars and empty tensors come back as written', () => {
    const { tensors: decoded, metadata } = decodeSafetensors(encodeSafetensors(tensors));
    expect(Object.keys(decoded).sort()).toEqual(Object.keys(tensors).sort());
    for (const [name, tensor] of Object.entries(tensors)) {
      const back = decoded[name]!;
      expect(back.dtype).toBe(tensor.dtype);
      expect(back.shape).toEqual(tensor.shape);
      expect(back.data.constructor).toBe(tensor.data.constructor);
      expect([...back.data]).toEqual([...tensor.data]);
    }
    expect(metadata).toEqual({});
  });

  test('metadata comes back as written', () => {
    const metadata = { format: 'pt', step: '42', note: 'ünïcödé ✓', empty: '' };
    expect(decodeSafetensors(encodeSafetensors(tensors, metadata)).metadata).toEqual(metadata);
  });

  test('a file with no tensors is valid', () => {
    expect(decodeSafetensors(encodeSafetensors({}))).toEqual({ tensors: {}, metadata: {} });
  });

  test('a tensor may be named __proto__', () => {
    const decoded = decodeSafetensors(
      encodeSafetensors({ ['__proto__']: { dtype: 'I32', shape: [1], data: new Int32Array([5]) } }),
    );
    expect(Object.keys(decoded.tensors)).toEqual(['__proto__']);
    expect([...decoded.tensors['__proto__']!.data]).toEqual([5]);
  });

  test('decodes from a view at an unaligned offset of a larger buffer', () => {
    const bytes = encodeSafetensors(tensors);
    const padded = new Uint8Array(bytes.length + 3);
    padded.set(bytes, 3);
    const decoded = decodeSafetensors(padded.subarray(3));
    expect([...decoded.tensors['blocks.0.weight']!.data]).toEqual([...tensors['blocks.0.weight']!.data]);
  });
});

describe('layout', () => {
  test('header is space-padded so the data starts at a multiple of 8', () => {
    for (const name of ['a', 'ab', 'abc', 'abcd', 'abcde', 'abcdef', 'abcdefg', 'abcdefgh']) {
      const bytes = encodeSafetensors({ [name]: { dtype: 'F32', shape: [1], data: new Float32Array([1]) } });
      const headerLength = Number(new DataView(bytes.buffer).getBigUint64(0, true));
      expect(headerLength % 8).toBe(0);
      const header = new TextDecoder().decode(bytes.subarray(8, 8 + headerLength));
      expect(header.trimEnd()).toMatch(/^\{.*\}$/);
      expect(header.slice(header.trimEnd().length)).toMatch(/^ *$/);
      expect(bytes.length).toBe(8 + headerLength + 4);
    }
  });

  test('tensors are written in name order, contiguous, little-endian', () => {
    const bytes = encodeSafetensors(
      {
        b: { dtype: 'I32', shape: [1], data: new Int32Array([0x01020304]) },
        a: { dtype: 'F16', shape: [1], data: new Float32Array([1]) },
      },
      { format: 'pt' },
    );
    const headerLength = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLength)));
    expect(header).toEqual({
      __metadata__: { format: 'pt' },
      a: { dtype: 'F16', shape: [1], data_offsets: [0, 2] },
      b: { dtype: 'I32', shape: [1], data_offsets: [2, 6] },
    });
    expect([...bytes.subarray(8 + headerLength)]).toEqual([0x00, 0x3c, 0x04, 0x03, 0x02, 0x01]);
  });

  test('a hand-built file, unpadded and in its own tensor order, decodes', () => {
    // 'z' comes first in the data and 'a' last: readers must not assume name order, and the 61-byte
    // header leaves the F32 data at an odd file offset.
    const header =
      '{"z":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},' +
      '"a":{"dtype":"F32","shape":[1,2],"data_offsets":[8,16]},' +
      '"m":{"dtype":"I32","shape":[],"data_offsets":[4,8]},' +
      '"__metadata__":{"format":"pt"}}';
    const data = [0x00, 0x3c, 0x00, 0xc0, 0xff, 0xff, 0xff, 0xff, ...f32Bytes([0.5, -3])];
    const file = fileOf(header, data);
    expect((8 + header.length) % 4).not.toBe(0);
    const { tensors, metadata } = decodeSafetensors(file);
    expect(metadata).toEqual({ format: 'pt' });
    expect(tensors['z']).toEqual({ dtype: 'F16', shape: [2], data: new Float32Array([1, -2]) });
    expect(tensors['m']).toEqual({ dtype: 'I32', shape: [], data: new Int32Array([-1]) });
    expect(tensors['a']).toEqual({ dtype: 'F32', shape: [1, 2], data: new Float32Array([0.5, -3]) });
  });

  test('an empty tensor may share its offset with its neighbour', () => {
    const file = fileOf(
      {
        e: { dtype: 'F32', shape: [0], data_offsets: [4, 4] },
        x: { dtype: 'F32', shape: [1], data_offsets: [0, 4] },
        y: { dtype: 'F32', shape: [1], data_offsets: [4, 8] },
      },
      f32Bytes([1, 2]),
    );
    expect(decodeSafetensors(file).tensors['e']!.data.length).toBe(0);
  });
});

describe('malformed files throw SafetensorsError', () => {
  const oneFloat = f32Bytes([1]);

  test('too short for the header length', () => {
    expectSafetensorsError(() => decodeSafetensors(new Uint8Array(5)), /5 bytes, too short/);
  });

  test('header length beyond the file', () => {
    const file = fileOf('{}');
    new DataView(file.buffer).setBigUint64(0, 100n, true);
    expectSafetensorsError(() => decodeSafetensors(file), /header length 100 runs past the end of the 10-byte file/);
    new DataView(file.buffer).setBigUint64(0, 2n ** 63n, true);
    expectSafetensorsError(() => decodeSafetensors(file), /runs past the end/);
  });

  test('header not JSON', () => {
    expectSafetensorsError(() => decodeSafetensors(fileOf('{"a": ')), /header is not valid UTF-8 JSON/);
    const invalidUtf8 = fileOf('{}');
    invalidUtf8.set([0xc3, 0x28], 8);
    expectSafetensorsError(() => decodeSafetensors(invalidUtf8), /not valid UTF-8 JSON/);
  });

  test('header not an object', () => {
    for (const header of ['[]', 'null', '3', '"text"']) {
      expectSafetensorsError(() => decodeSafetensors(fileOf(header)), /header must be a JSON object/);
    }
  });

  test('entry not an object, or with unknown fields', () => {
    expectSafetensorsError(() => decodeSafetensors(fileOf({ w: 3 })), /tensor 'w': header entry must be an object/);
    const extra = { w: { dtype: 'F32', shape: [1], data_offsets: [0, 4], layout: 'x' } };
    expectSafetensorsError(() => decodeSafetensors(fileOf(extra, oneFloat)), /tensor 'w': unexpected field 'layout'/);
  });

  test('unknown dtype', () => {
    const bf16 = { w: { dtype: 'BF16', shape: [2], data_offsets: [0, 4] } };
    expectSafetensorsError(() => decodeSafetensors(fileOf(bf16, oneFloat)), /tensor 'w': unsupported dtype "BF16"/);
    const missing = { w: { shape: [1], data_offsets: [0, 4] } };
    expectSafetensorsError(() => decodeSafetensors(fileOf(missing, oneFloat)), /tensor 'w': unsupported dtype/);
  });

  test('shape not a list of non-negative integers', () => {
    for (const shape of [[-1], [1.5], '1', null, [2 ** 40, 2 ** 40]]) {
      const header = { w: { dtype: 'F32', shape, data_offsets: [0, 4] } };
      expectSafetensorsError(() => decodeSafetensors(fileOf(header, oneFloat)), /tensor 'w': shape must be/);
    }
  });

  test('data_offsets malformed', () => {
    for (const offsets of [[0], [0, 4, 8], [-4, 0], [0, '4'], null]) {
      const header = { w: { dtype: 'F32', shape: [1], data_offsets: offsets } };
      expectSafetensorsError(
        () => decodeSafetensors(fileOf(header, oneFloat)),
        /tensor 'w': data_offsets must be two non-negative integers/,
      );
    }
    const reversed = { w: { dtype: 'F32', shape: [0], data_offsets: [4, 0] } };
    expectSafetensorsError(() => decodeSafetensors(fileOf(reversed, oneFloat)), /tensor 'w'.*end before they begin/);
  });

  test('shape and offsets disagree on the size', () => {
    const header = { w: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } };
    expectSafetensorsError(
      () => decodeSafetensors(fileOf(header, f32Bytes([1, 2]))),
      /tensor 'w': F32 shape \[3\] needs 12 bytes but data_offsets span 8/,
    );
    const f16 = { h: { dtype: 'F16', shape: [2], data_offsets: [0, 8] } };
    expectSafetensorsError(() => decodeSafetensors(fileOf(f16, f32Bytes([1, 2]))), /tensor 'h': F16.*needs 4 bytes/);
  });

  test('offsets out of range', () => {
    const header = { w: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } };
    expectSafetensorsError(
      () => decodeSafetensors(fileOf(header, f32Bytes([1, 2]))),
      /tensor 'w': data_offsets \[0, 16\] out of range of the 8-byte data/,
    );
  });

  test('overlapping data', () => {
    const header = {
      a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
      b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] },
    };
    expectSafetensorsError(() => decodeSafetensors(fileOf(header, f32Bytes([1, 2, 3]))), /tensor 'b': data overlaps tensor 'a'/);
  });

  test('hole between tensors', () => {
    const header = {
      a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] },
      b: { dtype: 'F32', shape: [1], data_offsets: [8, 12] },
    };
    expectSafetensorsError(() => decodeSafetensors(fileOf(header, f32Bytes([1, 2, 3]))), /tensor 'b': hole of 4 bytes/);
    const late = { a: { dtype: 'F32', shape: [1], data_offsets: [4, 8] } };
    expectSafetensorsError(() => decodeSafetensors(fileOf(late, f32Bytes([1, 2]))), /tensor 'a': hole of 4 bytes/);
  });

  test('data length not matching the tensors', () => {
    const header = { a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } };
    expectSafetensorsError(
      () => decodeSafetensors(fileOf(header, f32Bytes([1, 2]))),
      /data section is 8 bytes but tensors cover 4/,
    );
  });

  test('metadata not an object of strings', () => {
    expectSafetensorsError(() => decodeSafetensors(fileOf({ __metadata__: { step: 42 } })), /metadata 'step' must be a string/);
    expectSafetensorsError(() => decodeSafetensors(fileOf({ __metadata__: ['pt'] })), /'__metadata__' must be an object/);
    expectSafetensorsError(() => decodeSafetensors(fileOf({ __metadata__: null })), /'__metadata__' must be an object/);
  });

  test('truncated or corrupted files never throw anything else', () => {
    const file = encodeSafetensors(
      {
        w: { dtype: 'F32', shape: [3, 2], data: new Float32Array(6).fill(0.5) },
        h: { dtype: 'F16', shape: [3], data: new Float32Array([1, 2, 3]) },
        n: { dtype: 'I32', shape: [], data: new Int32Array([9]) },
      },
      { format: 'pt' },
    );
    for (let length = 0; length < file.length; length++) {
      expect(() => decodeSafetensors(file.subarray(0, length))).toThrow(SafetensorsError);
    }
    const random = new Random(7);
    for (let trial = 0; trial < 2000; trial++) {
      const corrupted = file.slice();
      corrupted[random.int(corrupted.length)] = random.int(256);
      try {
        decodeSafetensors(corrupted);
      } catch (error) {
        expect(error).toBeInstanceOf(SafetensorsError);
      }
    }
  });
});

describe('invalid input to encode throws SafetensorsError', () => {
  test('data length not matching the shape', () => {
    const tensor: SafeTensor = { dtype: 'F32', shape: [2, 2], data: new Float32Array(3) };
    expectSafetensorsError(() => encodeSafetensors({ w: tensor }), /tensor 'w': shape \[2, 2\] holds 4 elements but data has 3/);
  });

  test('data array of the wrong kind for the dtype', () => {
    expectSafetensorsError(
      () => encodeSafetensors({ n: { dtype: 'I32', shape: [1], data: new Float32Array(1) } }),
      /tensor 'n': I32 data must be a Int32Array/,
    );
    expectSafetensorsError(
      () => encodeSafetensors({ h: { dtype: 'F16', shape: [1], data: new Int32Array(1) } }),
      /tensor 'h': F16 data must be a Float32Array/,
    );
  });

  test('unknown dtype, bad shape, reserved name, non-string metadata', () => {
    const bad = { dtype: 'F64', shape: [1], data: new Float32Array(1) } as unknown as SafeTensor;
    expectSafetensorsError(() => encodeSafetensors({ w: bad }), /tensor 'w': unsupported dtype 'F64'/);
    expectSafetensorsError(
      () => encodeSafetensors({ w: { dtype: 'F32', shape: [-1], data: new Float32Array(0) } }),
      /tensor 'w': shape must be/,
    );
    expectSafetensorsError(
      () => encodeSafetensors({ __metadata__: { dtype: 'F32', shape: [], data: new Float32Array(1) } }),
      /'__metadata__' is reserved/,
    );
    expectSafetensorsError(() => encodeSafetensors({}, { step: 3 as unknown as string }), /metadata 'step' must be a string/);
  });
});

describe('float16 conversion', () => {
  test('known bit patterns', () => {
    expect(half(1)).toBe(0x3c00);
    expect(half(-2)).toBe(0xc000);
    expect(half(65504)).toBe(0x7bff);
    expect(half(65520)).toBe(0x7c00);
    expect(half(2 ** -24)).toBe(0x0001);
    expect(half(0.1)).toBe(0x2e66);
    expect(half(0)).toBe(0x0000);
    expect(half(-0)).toBe(0x8000);
    expect(half(Infinity)).toBe(0x7c00);
    expect(half(-Infinity)).toBe(0xfc00);
    expect(half(2 ** -14)).toBe(0x0400);
    expect(half(1023 * 2 ** -24)).toBe(0x03ff);
    expect(half(-1e6)).toBe(0xfc00);
    expect(half(1e-10)).toBe(0x0000);
  });

  test('rounds to nearest, ties to even', () => {
    expect(half(65519)).toBe(0x7bff);
    expect(half(1 + 2 ** -11)).toBe(0x3c00);
    expect(half(1 + 3 * 2 ** -11)).toBe(0x3c02);
    expect(half(1 + 2 ** -11 + 2 ** -20)).toBe(0x3c01);
    expect(half(2 ** -25)).toBe(0x0000);
    expect(half(2 ** -25 + 2 ** -35)).toBe(0x0001);
    expect(half(3 * 2 ** -25)).toBe(0x0002);
    expect(half(2 ** -14 - 2 ** -25)).toBe(0x0400);
  });

  test('NaN stays NaN, even when its payload is in the dropped bits', () => {
    const payloadInLowBits = new Float32Array(new Uint32Array([0x7f800001]).buffer);
    for (const bits of [half(NaN), toFloat16Bits(payloadInLowBits)[0]!]) {
      expect(bits & 0x7c00).toBe(0x7c00);
      expect(bits & 0x03ff).not.toBe(0);
      expect(fromHalf(bits)).toBeNaN();
    }
  });

  test('decodes known bit patterns', () => {
    expect(fromHalf(0x3c00)).toBe(1);
    expect(fromHalf(0xc000)).toBe(-2);
    expect(fromHalf(0x7bff)).toBe(65504);
    expect(fromHalf(0x0001)).toBe(2 ** -24);
    expect(fromHalf(0x8001)).toBe(-(2 ** -24));
    expect(fromHalf(0x8000)).toBe(-0);
    expect(fromHalf(0x7c00)).toBe(Infinity);
    expect(fromHalf(0xfc00)).toBe(-Infinity);
    expect(fromHalf(0x7e00)).toBeNaN();
  });

  test('every half value survives float32 and back', () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    const back = toFloat16Bits(fromFloat16Bits(all));
    for (let i = 0; i < all.length; i++) {
      const isNaN = (i & 0x7c00) === 0x7c00 && (i & 0x03ff) !== 0;
      if (!isNaN) expect(back[i]).toBe(i);
      else expect(back[i]! & 0xfe00).toBe((i & 0xfe00) | 0x0200);
    }
  });

  test('round trip error is within half a unit in the last place', () => {
    const random = new Random(1);
    const values = new Float32Array(10000).map(() => random.normal() * 10 ** (random.int(8) - 4));
    const back = fromFloat16Bits(toFloat16Bits(values));
    for (let i = 0; i < values.length; i++) {
      const x = values[i]!;
      // Normal halves have 11 significant bits; below 2^-14 the spacing is fixed at 2^-24.
      const tolerance = Math.abs(x) >= 2 ** -14 ? Math.abs(x) * 2 ** -11 : 2 ** -25;
      expect(Math.abs(back[i]! - x)).toBeLessThanOrEqual(tolerance);
    }
  });
});
