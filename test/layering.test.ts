/**
 * The dependency rule (README, "Layout"): `routes -> src -> model` and `workers -> src -> model`.
 * model/ is the network alone (TensorFlow.js, node: modules and its own files); src/http/ is the HTTP
 * boundary, which the domain folders of src/ never import; workers are started by URL, never
 * imported. The one module below routes/ that imports it is src/http/app.ts, which mounts the routers.
 */
import { describe, expect, test } from 'bun:test';
import { readFile } from 'node:fs/promises';
import { dirname, join, relative, resolve } from 'node:path';
import { Glob } from 'bun';

const ROOT = join(import.meta.dir, '..');
const SPECIFIER = /(?:^|\n)\s*(?:import|export)\s[^;]*?from\s+['"]([^'"]+)['"]|(?:^|\n)\s*import\s+['"]([^'"]+)['"]|\bimport\(\s*['"]([^'"]+)['"]\s*\)/g;

interface Import {
  file: string;
  /** A repository path for a relative specifier, the package name otherwise. */
  target: string;
}

/** Every import of every .ts file under `folder`, relative ones resolved to repository paths. */
async function importsUnder(folder: string): Promise<Import[]> {
  const found: Import[] = [];
  for await (const file of new Glob(`${folder}/**/*.ts`).scan(ROOT)) {
    const code = await readFile(join(ROOT, file), 'utf8');
    for (const match of code.matchAll(SPECIFIER)) {
      const specifier = match[1] ?? match[2] ?? match[3]!;
      const target = specifier.startsWith('.') ? relative(ROOT, resolve(ROOT, dirname(file), specifier)) : specifier;
      found.push({ file, target });
    }
  }
  return found;
}

const show = (imports: Import[]) => imports.map(({ file, target }) => `${file} -> ${target}`);

describe('the dependency rule', () => {
  test('model/ imports only TensorFlow.js, node: modules and its own files', async () => {
    const imports = await importsUnder('model');
    expect(imports.length).toBeGreaterThan(20);
    const outside = imports.filter(({ target }) => !target.startsWith('model/') && !target.startsWith('@tensorflow/') && !target.startsWith('node:'));
    expect(show(outside)).toEqual([]);
  });

  test('src/ imports neither routes/ nor workers/, except app.ts mounting the routers', async () => {
    const imports = await importsUnder('src');
    const upward = imports.filter(({ file, target }) => target.startsWith('workers/') || (target.startsWith('routes/') && file !== 'src/http/app.ts'));
    expect(show(upward)).toEqual([]);
    expect(imports.some(({ file, target }) => file === 'src/http/app.ts' && target.startsWith('routes/'))).toBe(true);
  });

  test('the domain folders of src/ do not import the HTTP boundary (src/http/) or hono', async () => {
    const domain = ['src/backend', 'src/data', 'src/inference', 'src/jobs', 'src/schema', 'src/training'];
    const loose = ['src/index.ts', 'src/multimodal-mac.ts', 'src/image.ts', 'src/image-format.ts'];
    const imports = [...(await Promise.all(domain.map(importsUnder))).flat(), ...(await importsUnder('src')).filter(({ file }) => loose.includes(file))];
    const http = imports.filter(({ target }) => target.startsWith('src/http/') || target === 'hono' || target.startsWith('hono/'));
    expect(show(http)).toEqual([]);
  });

  test('routes/ and workers/ do not import each other, and workers/ not the HTTP boundary', async () => {
    const routes = (await importsUnder('routes')).filter(({ target }) => target.startsWith('workers/'));
    const workers = (await importsUnder('workers')).filter(({ target }) => target.startsWith('routes/') || target.startsWith('src/http/') || target === 'hono');
    expect(show([...routes, ...workers])).toEqual([]);
  });
});
