/**
 * The Hugging Face safetensors layout, written and read exactly, with no TensorFlow in sight so a
 * checkpoint can be inspected or produced by any tool that speaks the format.
 *
 * Reference: https://github.com/huggingface/safetensors (its README, "Format"):
 *   [8 bytes: header length N, little-endian u64][N bytes: UTF-8 JSON header][data bytes]
 * The header maps each tensor name to `{ dtype, shape, data_offsets: [begin, end] }`, offsets relative
 * to the first data byte, plus an optional `__metadata__` of string to string. Data is little-endian
 * and the tensors tile the data section with no hole and no overlap.
 */

export type SafeDType = 'F32' | 'F16' | 'I32';

/** F16 tensors travel as Float32Array in memory, the dtype TensorFlow.js computes in; only the file holds halves. */
export interface SafeTensor {
  dtype: SafeDType;
  shape: number[];
  data: Float32Array | Int32Array;
}

export interface DecodedSafetensors {
  tensors: Record<string, SafeTensor>;
  metadata: Record<string, string>;
}

export class SafetensorsError extends Error {
  override name = 'SafetensorsError';
}

const METADATA_KEY = '__metadata__';
const BYTES_PER_ELEMENT: Record<SafeDType, number> = { F32: 4, F16: 2, I32: 4 };
// The same cap as the reference reader, so a corrupt length cannot make us decode gigabytes as JSON.
const MAX_HEADER_BYTES = 100_000_000;

// Typed arrays use the host's byte order and safetensors stores little-endian, so data is copied as raw
// bytes only on a little-endian host (every platform Bun ships for); elsewhere we refuse rather than
// silently swap every value.
const HOST_IS_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function requireLittleEndianHost(): void {
  if (!HOST_IS_LITTLE_ENDIAN) throw new SafetensorsError('big-endian hosts are not supported');
}

function isSafeDType(value: unknown): value is SafeDType {
  return value === 'F32' || value === 'F16' || value === 'I32';
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isCount(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

/** Element count of a shape, or undefined when it is not a list of non-negative integers. */
function elementCount(shape: unknown): number | undefined {
  if (!isShape(shape)) return undefined;
  const count = shape.reduce((product, dim) => product * dim, 1);
  return Number.isSafeInteger(count) ? count : undefined;
}

function isShape(value: unknown): value is number[] {
  return Array.isArray(value) && value.every(isCount);
}

/** Float32 to IEEE half bits, rounding to nearest even; too large becomes Inf, too small ±0. */
export function toFloat16Bits(values: Float32Array): Uint16Array {
  return new Uint16Array(Float16Array.from(values).buffer);
}

/** IEEE half bits to float32; exact, since every half value is a float32 value. */
export function fromFloat16Bits(halves: Uint16Array): Float32Array {
  return Float32Array.from(new Float16Array(halves.buffer, halves.byteOffset, halves.length));
}

function checkTensor(name: string, tensor: SafeTensor): void {
  if (name === METADATA_KEY) throw new SafetensorsError(`'${METADATA_KEY}' is reserved and cannot name a tensor`);
  if (!isSafeDType(tensor.dtype)) {
    throw new SafetensorsError(`tensor '${name}': unsupported dtype '${String(tensor.dtype)}'`);
  }
  const count = elementCount(tensor.shape);
  if (count === undefined) {
    throw new SafetensorsError(`tensor '${name}': shape must be a list of non-negative integers`);
  }
  const expected = tensor.dtype === 'I32' ? Int32Array : Float32Array;
  if (!(tensor.data instanceof expected)) {
    throw new SafetensorsError(`tensor '${name}': ${tensor.dtype} data must be a ${expected.name}`);
  }
  if (tensor.data.length !== count) {
    throw new SafetensorsError(
      `tensor '${name}': shape [${tensor.shape.join(', ')}] holds ${count} elements but data has ${tensor.data.length}`,
    );
  }
}

function tensorBytes(tensor: SafeTensor): Uint8Array {
  const raw = tensor.dtype === 'F16' ? toFloat16Bits(tensor.data as Float32Array) : tensor.data;
  return new Uint8Array(raw.buffer, raw.byteOffset, raw.byteLength);
}

/** Tensors are laid out in name order; the header is space-padded so the data starts 8-aligned. */
export function encodeSafetensors(tensors: Record<string, SafeTensor>, metadata?: Record<string, string>): Uint8Array {
  requireLittleEndianHost();
  // No prototype, so a tensor named '__proto__' is stored as a key like any other.
  const header: Record<string, unknown> = Object.create(null);
  if (metadata !== undefined) {
    for (const [key, value] of Object.entries(metadata)) {
      if (typeof value !== 'string') throw new SafetensorsError(`metadata '${key}' must be a string`);
    }
    header[METADATA_KEY] = metadata;
  }
  const names = Object.keys(tensors).sort();
  const chunks: Uint8Array[] = [];
  let offset = 0;
  for (const name of names) {
    const tensor = tensors[name]!;
    checkTensor(name, tensor);
    const bytes = tensorBytes(tensor);
    chunks.push(bytes);
    header[name] = { dtype: tensor.dtype, shape: tensor.shape, data_offsets: [offset, offset + bytes.length] };
    offset += bytes.length;
  }

  const json = new TextEncoder().encode(JSON.stringify(header));
  const headerLength = Math.ceil(json.length / 8) * 8;
  const out = new Uint8Array(8 + headerLength + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerLength), true);
  out.set(json, 8);
  out.fill(0x20, 8 + json.length, 8 + headerLength);
  let position = 8 + headerLength;
  for (const chunk of chunks) {
    out.set(chunk, position);
    position += chunk.length;
  }
  return out;
}

interface Entry {
  name: string;
  dtype: SafeDType;
  shape: number[];
  begin: number;
  end: number;
}

function parseHeader(bytes: Uint8Array): { header: Record<string, unknown>; dataStart: number } {
  if (bytes.length < 8) {
    throw new SafetensorsError(`file is ${bytes.length} bytes, too short for the 8-byte header length`);
  }
  const headerLength = new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true);
  if (headerLength > BigInt(bytes.length - 8)) {
    throw new SafetensorsError(`header length ${headerLength} runs past the end of the ${bytes.length}-byte file`);
  }
  if (headerLength > BigInt(MAX_HEADER_BYTES)) {
    throw new SafetensorsError(`header length ${headerLength} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
  }
  const dataStart = 8 + Number(headerLength);
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(8, dataStart)));
  } catch (error) {
    throw new SafetensorsError(`header is not valid UTF-8 JSON: ${(error as Error).message}`);
  }
  if (!isRecord(header)) throw new SafetensorsError('header must be a JSON object');
  return { header, dataStart };
}

function parseMetadata(value: unknown): Record<string, string> {
  if (value === undefined) return {};
  if (!isRecord(value)) throw new SafetensorsError(`'${METADATA_KEY}' must be an object of strings`);
  for (const [key, item] of Object.entries(value)) {
    if (typeof item !== 'string') throw new SafetensorsError(`metadata '${key}' must be a string`);
  }
  return Object.fromEntries(Object.entries(value as Record<string, string>));
}

function parseEntry(name: string, value: unknown, dataLength: number): Entry {
  if (!isRecord(value)) throw new SafetensorsError(`tensor '${name}': header entry must be an object`);
  const { dtype, shape, data_offsets: offsets } = value;
  const extra = Object.keys(value).filter((key) => key !== 'dtype' && key !== 'shape' && key !== 'data_offsets');
  if (extra.length > 0) throw new SafetensorsError(`tensor '${name}': unexpected field '${extra[0]}'`);
  if (!isSafeDType(dtype)) {
    throw new SafetensorsError(`tensor '${name}': unsupported dtype ${JSON.stringify(dtype)} (expected F32, F16 or I32)`);
  }
  const count = elementCount(shape);
  if (!isShape(shape) || count === undefined) {
    throw new SafetensorsError(`tensor '${name}': shape must be a list of non-negative integers`);
  }
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isCount)) {
    throw new SafetensorsError(`tensor '${name}': data_offsets must be two non-negative integers`);
  }
  const [begin, end] = offsets as [number, number];
  if (begin > end) throw new SafetensorsError(`tensor '${name}': data_offsets [${begin}, ${end}] end before they begin`);
  if (end > dataLength) {
    throw new SafetensorsError(`tensor '${name}': data_offsets [${begin}, ${end}] out of range of the ${dataLength}-byte data`);
  }
  const size = count * BYTES_PER_ELEMENT[dtype];
  if (end - begin !== size) {
    throw new SafetensorsError(
      `tensor '${name}': ${dtype} shape [${shape.join(', ')}] needs ${size} bytes but data_offsets span ${end - begin}`,
    );
  }
  return { name, dtype, shape: [...shape], begin, end };
}

/** Writers may order tensors as they like, but together they must tile the data section exactly. */
function checkTiling(entries: Entry[], dataLength: number): void {
  const sorted = [...entries].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let cursor = 0;
  let previous: string | undefined;
  for (const entry of sorted) {
    if (entry.begin < cursor) {
      throw new SafetensorsError(`tensor '${entry.name}': data overlaps tensor '${previous}'`);
    }
    if (entry.begin > cursor) {
      throw new SafetensorsError(`tensor '${entry.name}': hole of ${entry.begin - cursor} bytes before its data at ${entry.begin}`);
    }
    cursor = entry.end;
    previous = entry.name;
  }
  if (cursor !== dataLength) {
    throw new SafetensorsError(`data section is ${dataLength} bytes but tensors cover ${cursor}`);
  }
}

function readData(entry: Entry, bytes: Uint8Array): Float32Array | Int32Array {
  // slice copies into a fresh, aligned buffer: a typed view at an odd file offset would throw.
  const buffer = bytes.slice(entry.begin, entry.end).buffer;
  if (entry.dtype === 'F16') return fromFloat16Bits(new Uint16Array(buffer));
  return entry.dtype === 'I32' ? new Int32Array(buffer) : new Float32Array(buffer);
}

export function decodeSafetensors(bytes: Uint8Array): DecodedSafetensors {
  requireLittleEndianHost();
  const { header, dataStart } = parseHeader(bytes);
  const data = bytes.subarray(dataStart);
  const metadata = parseMetadata(header[METADATA_KEY]);
  const entries = Object.entries(header)
    .filter(([name]) => name !== METADATA_KEY)
    .map(([name, value]) => parseEntry(name, value, data.length));
  checkTiling(entries, data.length);
  const tensors = Object.fromEntries(
    entries.map((entry): [string, SafeTensor] => [
      entry.name,
      { dtype: entry.dtype, shape: entry.shape, data: readData(entry, data) },
    ]),
  );
  return { tensors, metadata };
}
