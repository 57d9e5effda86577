import { expect, test } from 'bun:test';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { readAnnotations, readCocoCaptions } from '../../../src/data/captions.ts';
import { tempDir } from '../training/helpers.ts';

async function file(name: string, content: string | Uint8Array): Promise<string> {
  const path = join(await tempDir(), name);
  await writeFile(path, content);
  return path;
}

test('annotations and COCO files are read as image/caption pairs, a byte order mark allowed', async () => {
  const annotations = await file('annotations.json', '\uFEFF' + JSON.stringify([{ image: 'a.png', text: 'a red circle.' }]));
  expect(await readAnnotations(annotations)).toEqual([{ image: 'a.png', text: 'a red circle.' }]);
  const coco = await file('coco.json', JSON.stringify({ images: [{ id: 1, file_name: 'a.png' }], annotations: [{ image_id: 1, caption: ' A cat. ' }, { image_id: 1, caption: 'A pet.' }] }));
  expect(await readCocoCaptions(coco)).toEqual([{ image: 'a.png', text: 'A cat.' }, { image: 'a.png', text: 'A pet.' }]);
});

test('what would train on the wrong thing is refused, naming the file and the entry', async () => {
  const coco = await file('coco.json', JSON.stringify({ images: [{ id: 1, file_name: 'cat.png' }, { id: 1, file_name: 'dog.png' }], annotations: [] }));
  await expect(readCocoCaptions(coco)).rejects.toThrow(`${coco}: images[1] repeats the id 1`);
  const blankCoco = await file('coco.json', JSON.stringify({ images: [{ id: 1, file_name: 'a.png' }], annotations: [{ image_id: 1, caption: '  ' }] }));
  await expect(readCocoCaptions(blankCoco)).rejects.toThrow(`${blankCoco}: annotations[0] has an empty caption`);
  const blank = await file('annotations.json', JSON.stringify([{ image: 'a.png', text: 'fine.' }, { image: 'b.png', text: '' }]));
  await expect(readAnnotations(blank)).rejects.toThrow(`${blank}: entry 1 has an empty caption`);
  // Latin-1, as an old export would write "café": not silently read as replacement characters.
  const latin1 = await file('annotations.json', Buffer.from('[{"image": "a.png", "text": "un caf\xe9."}]', 'latin1'));
  await expect(readAnnotations(latin1)).rejects.toThrow(`${latin1} is not UTF-8 text`);
});
