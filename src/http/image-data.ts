/**
 * Images sent inside JSON: a `data:` URL or bare base64. A remote URL is refused rather than
 * fetched: the server makes no requests of its own on a client's behalf.
 */
import { invalidField } from './errors.ts';

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/** The image bytes in `value`; 400 naming `field` when it is not base64 image data. */
export function imageBytesFromJson(field: string, value: string, { bareBase64 }: { bareBase64: boolean }): Uint8Array {
  if (value.length === 0) throw invalidField(field, 'must be a data: URL (data:image/png;base64,...)');
  if (/^https?:/i.test(value)) {
    throw invalidField(field, 'remote image URLs are not fetched; send the image itself as a data: URL (data:image/jpeg;base64,...)');
  }
  let base64: string;
  // URL schemes are case-insensitive.
  if (/^data:/i.test(value)) {
    const comma = value.indexOf(',');
    if (comma < 0 || !/;base64$/i.test(value.slice(0, comma))) throw invalidField(field, 'must be a base64 data: URL (data:image/png;base64,...)');
    base64 = value.slice(comma + 1);
  } else if (bareBase64) {
    base64 = value;
  } else {
    throw invalidField(field, 'must be a data: URL (data:image/png;base64,...)');
  }
  base64 = base64.replace(/\s+/g, '');
  if (base64.length % 4 === 1 || !BASE64.test(base64)) throw invalidField(field, 'is not valid base64');
  return Buffer.from(base64, 'base64');
}
