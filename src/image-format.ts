/**
 * What an upload is, told from its first bytes before any decoder sees it, and whether it was cut
 * short. Hand-written rather than a package such as file-type: six fixed signatures (one of them
 * the ISO-BMFF brand list of AVIF) are a few lines, and nothing here parses more than a fixed prefix,
 * an end marker, or the sizes and offsets that say where a file's data ends, so an SVG, an XML entity
 * or a PDF never reaches a parser at all.
 */

/** The formats the ImageProcessor decodes, as sharp names them. */
export type AcceptedFormat = 'jpeg' | 'png' | 'webp' | 'gif' | 'avif' | 'tiff';

export const ACCEPTED_NAMES: Record<AcceptedFormat, string> = { jpeg: 'JPEG', png: 'PNG', webp: 'WebP', gif: 'GIF', avif: 'AVIF', tiff: 'TIFF' };

export type Sniffed = { accepted: AcceptedFormat } | { accepted: null; name: string | null };

// Formats that are refused, named so that the 415 can say what was sent.
const REFUSED: ReadonlyArray<[name: string, latin1Prefix: string]> = [
  ['PDF', '%PDF-'],
  ['Photoshop', '8BPS'],
  ['BMP', 'BM'],
  ['ICO', '\0\0\x01\0'],
  ['JPEG XL', '\xff\x0a'],
  ['JPEG XL', '\0\0\0\x0cJXL '],
  ['JPEG 2000', '\0\0\0\x0cjP  '],
];

export function sniffFormat(bytes: Uint8Array): Sniffed {
  const head = latin1(bytes, 0, 64);
  if (head.startsWith('\xff\xd8\xff')) return { accepted: 'jpeg' };
  if (head.startsWith('\x89PNG\r\n\x1a\n')) return { accepted: 'png' };
  if (head.startsWith('GIF87a') || head.startsWith('GIF89a')) return { accepted: 'gif' };
  if (head.startsWith('RIFF') && head.slice(8, 12) === 'WEBP') return { accepted: 'webp' };
  if (['II*\0', 'MM\0*', 'II+\0', 'MM\0+'].some((magic) => head.startsWith(magic))) return { accepted: 'tiff' };
  if (head.slice(4, 8) === 'ftyp') {
    // ISO-BMFF: a major brand, then compatible brands to the end of the ftyp box.
    const boxEnd = Math.min(readUint32BE(bytes, 0), 64);
    const brands = [head.slice(8, 12)];
    for (let at = 16; at + 4 <= boxEnd; at += 4) brands.push(head.slice(at, at + 4));
    if (brands.some((brand) => brand === 'avif' || brand === 'avis')) return { accepted: 'avif' };
    return { accepted: null, name: 'HEIC' };
  }
  const known = REFUSED.find(([, prefix]) => head.startsWith(prefix));
  if (known) return { accepted: null, name: known[0] };
  // SVG and other XML, after an optional byte-order mark and white space.
  if (/^(\xef\xbb\xbf)?\s*</.test(head)) return { accepted: null, name: /<svg/i.test(latin1(bytes, 0, 4096)) ? 'SVG' : 'XML or HTML' };
  return { accepted: null, name: null };
}

/**
 * True when the file visibly ends before its format says it does: a JPEG without the end-of-image
 * marker after its first scan, a PNG without its whole IEND chunk, a WebP shorter than its RIFF header
 * declares, a TIFF whose first directory or the image data it points to lies past the end, an AVIF
 * whose last box does. Decoders tolerate some of these (libpng stops happily at the last IDAT) and
 * word others as corrupt data (a TIFF's JPEG strips cut short), so they are checked here first.
 */
export function looksTruncated(format: AcceptedFormat, bytes: Uint8Array): boolean {
  const buffer = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  switch (format) {
    case 'jpeg': {
      const scan = buffer.indexOf(Buffer.from([0xff, 0xda]));
      return scan < 0 || buffer.lastIndexOf(Buffer.from([0xff, 0xd9])) < scan;
    }
    case 'png':
      return pngTruncated(buffer);
    case 'webp':
      return bytes.length < 12 || buffer.readUInt32LE(4) + 8 > bytes.length;
    case 'tiff':
      return tiffTruncated(buffer);
    case 'avif':
      return boxesTruncated(buffer);
    default:
      return false;
  }
}

/**
 * A PNG whose chunks (each its length, type, data and CRC) run out before a whole IEND chunk. They
 * are walked from the signature on: the letters IEND may stand anywhere inside an earlier chunk.
 */
function pngTruncated(buffer: Buffer): boolean {
  for (let at = 8; at + 8 <= buffer.length; ) {
    const end = at + 12 + buffer.readUInt32BE(at);
    if (end > buffer.length) return true;
    if (buffer.toString('latin1', at + 4, at + 8) === 'IEND') return false;
    at = end;
  }
  return true;
}

// A TIFF directory's tags that locate its image data.
const [STRIP_OFFSETS, STRIP_BYTE_COUNTS, TILE_OFFSETS, TILE_BYTE_COUNTS] = [273, 279, 324, 325];
const LOCATING = [STRIP_OFFSETS, STRIP_BYTE_COUNTS, TILE_OFFSETS, TILE_BYTE_COUNTS];
// The bytes of a value of each TIFF field type, by its number (BYTE, ASCII, SHORT, LONG, RATIONAL, ...;
// BigTIFF's LONG8, SLONG8 and IFD8 are 16-18).
const FIELD_BYTES = [0, 1, 1, 2, 4, 8, 1, 1, 2, 4, 8, 4, 8, 4, 0, 0, 8, 8, 8];

/**
 * A TIFF (classic, or BigTIFF with its 8-byte offsets) whose first directory, the values of one of
 * its fields (a JPEG-compressed TIFF's tables), or a strip or tile of its image lies past the end.
 * Each field's values are read at most once (a tag given twice counts once): the work is bounded by
 * the file's size, whatever its counts say.
 */
function tiffTruncated(buffer: Buffer): boolean {
  if (buffer.length < 8) return true;
  const little = buffer[0] === 0x49;
  const u16 = (at: number) => (little ? buffer.readUInt16LE(at) : buffer.readUInt16BE(at));
  const u32 = (at: number) => (little ? buffer.readUInt32LE(at) : buffer.readUInt32BE(at));
  const u64 = (at: number) => Number(little ? buffer.readBigUInt64LE(at) : buffer.readBigUInt64BE(at));
  const version = u16(2);
  if (version !== 42 && version !== 43) return false;
  const big = version === 43;
  if (big && buffer.length < 16) return true;
  // Classic: a 2-byte entry count, 12-byte entries of a 4-byte count and value; BigTIFF: 8, 20 and 8.
  const [offset, countBytes, entryBytes, valueBytes] = big ? [u64, 8, 20, 8] : [u32, 2, 12, 4];
  const directory = offset(big ? 8 : 4);
  if (directory + countBytes > buffer.length) return true;
  const entries = big ? u64(directory) : u16(directory);
  const first = directory + countBytes;
  if (first + entryBytes * entries > buffer.length) return true;
  /** Where the values of the fields that locate the image lie: the first entry of each tag. */
  const fields = new Map<number, { at: number; count: number; bytes: number }>();
  for (let entry = first; entry < first + entryBytes * entries; entry += entryBytes) {
    const [tag, bytes, count] = [u16(entry), FIELD_BYTES[u16(entry + 2)] ?? 0, offset(entry + 4)];
    // Values that fit sit in the entry itself.
    const at = count * bytes <= valueBytes ? entry + 4 + (big ? 8 : 4) : offset(entry + 4 + (big ? 8 : 4));
    if (at + count * bytes > buffer.length) return true;
    if (LOCATING.includes(tag) && (bytes === 2 || bytes === 4 || bytes === 8) && !fields.has(tag)) fields.set(tag, { at, count, bytes });
  }
  const [offsets, counts] = fields.has(STRIP_OFFSETS) ? [fields.get(STRIP_OFFSETS), fields.get(STRIP_BYTE_COUNTS)] : [fields.get(TILE_OFFSETS), fields.get(TILE_BYTE_COUNTS)];
  if (!offsets || !counts || counts.count !== offsets.count) return false;
  const value = ({ at, bytes }: { at: number; bytes: number }, i: number) => (bytes === 2 ? u16(at + 2 * i) : bytes === 4 ? u32(at + 4 * i) : u64(at + 8 * i));
  for (let i = 0; i < offsets.count; i++) if (value(offsets, i) + value(counts, i) > buffer.length) return true;
  return false;
}

/**
 * An ISO-BMFF file (AVIF) whose top-level boxes, each its size then its type, run past the end. What
 * follows the last box and does not read as one (a few bytes, a type that is not four letters) is
 * left to the decoder, as the other formats' trailing bytes are.
 */
function boxesTruncated(buffer: Buffer): boolean {
  let at = 0;
  while (at + 8 <= buffer.length) {
    if (!/^[\x20-\x7e]{4}$/.test(buffer.toString('latin1', at + 4, at + 8))) return false;
    const size = buffer.readUInt32BE(at);
    // 0: to the end of the file; 1: a 64-bit size follows the type.
    if (size === 0) return false;
    const boxSize = size === 1 ? (at + 16 > buffer.length ? Infinity : Number(buffer.readBigUInt64BE(at + 8))) : size;
    if (boxSize < 8) return false;
    at += boxSize;
  }
  return at > buffer.length;
}

function latin1(bytes: Uint8Array, start: number, end: number): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('latin1', start, Math.min(end, bytes.length));
}

function readUint32BE(bytes: Uint8Array, at: number): number {
  return bytes.length >= at + 4 ? Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).readUInt32BE(at) : 0;
}
