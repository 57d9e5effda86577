/**
 * Readers of image/caption lists: the original extension's annotations (a JSON list of
 * `{image, text}`) and COCO captions (`{images: [{id, file_name}], annotations: [{image_id, caption}]}`,
 * one pair per caption). Errors name the file and the entry.
 */
import { readFile } from 'node:fs/promises';

export interface CaptionedFile {
  /** Image file name, relative to the image folder. */
  image: string;
  text: string;
}

export class DataFormatError extends Error {
  override name = 'DataFormatError';
}

export async function readAnnotations(path: string): Promise<CaptionedFile[]> {
  const list = await readJson(path);
  if (!Array.isArray(list)) throw new DataFormatError(`${path}: expected a JSON list of {"image", "text"} objects`);
  return list.map((entry, i) => {
    if (typeof entry?.image !== 'string' || typeof entry?.text !== 'string') {
      throw new DataFormatError(`${path}: entry ${i} needs string fields "image" and "text"`);
    }
    return { image: entry.image, text: captionText(entry.text, `${path}: entry ${i}`) };
  });
}

export async function readCocoCaptions(path: string): Promise<CaptionedFile[]> {
  const coco = await readJson(path);
  if (!Array.isArray(coco?.images) || !Array.isArray(coco?.annotations)) {
    throw new DataFormatError(`${path}: expected COCO captions JSON with "images" and "annotations" lists`);
  }
  const files = new Map<unknown, string>();
  coco.images.forEach((image: { id?: unknown; file_name?: unknown }, i: number) => {
    if (typeof image?.file_name !== 'string') throw new DataFormatError(`${path}: images[${i}] has no "file_name"`);
    if (files.has(image.id)) throw new DataFormatError(`${path}: images[${i}] repeats the id ${JSON.stringify(image.id)}`);
    files.set(image.id, image.file_name);
  });
  return coco.annotations.map((annotation: { image_id?: unknown; caption?: unknown }, i: number) => {
    const image = files.get(annotation?.image_id);
    if (image === undefined) throw new DataFormatError(`${path}: annotations[${i}] refers to unknown image_id ${JSON.stringify(annotation?.image_id)}`);
    if (typeof annotation.caption !== 'string') throw new DataFormatError(`${path}: annotations[${i}] has no "caption"`);
    return { image, text: captionText(annotation.caption.trim(), `${path}: annotations[${i}]`) };
  });
}

/** A caption of nothing would teach the model to stop at once. */
function captionText(text: string, entry: string): string {
  if (text.trim() === '') throw new DataFormatError(`${entry} has an empty caption`);
  return text;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

// `any`: the callers check the JSON field by field.
async function readJson(path: string): Promise<any> {
  const bytes = await readFile(path).catch((error: NodeJS.ErrnoException) => {
    throw new DataFormatError(`cannot read ${path}: ${error.code === 'ENOENT' ? 'no such file' : error.message}`);
  });
  let text: string;
  try {
    // The decoder drops a byte order mark, which some editors write.
    text = utf8.decode(bytes);
  } catch {
    throw new DataFormatError(`${path} is not UTF-8 text`);
  }
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new DataFormatError(`${path} is not valid JSON: ${(error as Error).message}`);
  }
}
