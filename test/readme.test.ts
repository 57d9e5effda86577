/**
 * What the README and docs/ promise a new user (issue 20, item 10; issue 22): a job body that
 * POST /v1/training/jobs takes as it is, caption examples whose max_tokens fit a two-object caption,
 * the data set's specification in the repository (docs/shapes.md), cited under that name, and a
 * README short enough to read whose links to docs/ all lead somewhere.
 */
import { describe, expect, test } from 'bun:test';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { Glob } from 'bun';
import { parseJobSpec } from '../src/training/spec.ts';
import { makeCheckpoint, startTestServer } from './routes/helpers.ts';

const ROOT = join(import.meta.dir, '..');
const readme = await readFile(join(ROOT, 'README.md'), 'utf8');
const documents = new Map([['README.md', readme]]);
for await (const file of new Glob('docs/*.md').scan(ROOT)) documents.set(file, await readFile(join(ROOT, file), 'utf8'));
const codeBlocks = [...documents.values()].flatMap((text) => [...text.matchAll(/```\w*\n([\s\S]*?)```/g)].map((m) => m[1]!));

/** GitHub's heading anchors: lower case, punctuation but hyphens dropped, spaces as hyphens. */
function anchors(markdown: string): Set<string> {
  const headings = markdown.replace(/```[\s\S]*?```/g, '').matchAll(/^#{1,6} (.+)$/gm);
  return new Set([...headings].map((m) => m[1]!.trim().toLowerCase().replace(/[^\p{L}\p{N}\s-]/gu, '').replace(/\s/g, '-')));
}

describe('README', () => {
  test('has JSON bodies for POST /v1/training/jobs (README and docs/) that the real server accepts as they are', async () => {
    const blocks = codeBlocks.filter((b) => /curl[^\n]*\/v1\/training\/jobs[^\n]*-d '/.test(b));
    expect(blocks.length).toBeGreaterThan(0);
    expect(readme).toMatch(/curl[^\n]*\/v1\/training\/jobs[^\n]*-d '/);
    const bodies = blocks.map((block) => JSON.parse(/-d '([\s\S]*?)'/.exec(block)![1]!));
    for (const body of bodies) expect(() => parseJobSpec(body)).not.toThrow();
    const server = await startTestServer(await makeCheckpoint(), { INFERENCE_WORKERS: '1' });
    try {
      for (const body of bodies) {
        const response = await fetch(`${server.url}/v1/training/jobs`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
        expect(response.status).toBe(202);
        await fetch(`${server.url}${response.headers.get('location')}/cancel`, { method: 'POST' });
      }
    } finally {
      await server.shutdown();
    }
  }, 30_000);

  test('the library example, run as it is written (from the package), captions the example image it names', async () => {
    const block = /## The library\n\n```ts\n([\s\S]*?)```/.exec(readme)?.[1];
    expect(block).toBeDefined();
    const script = join(await mkdtemp(join(tmpdir(), 'titans-mm-readme-')), 'library.ts');
    await writeFile(script, block!.replace("from 'titans-mm'", `from '${join(ROOT, 'src/index.ts')}'`));
    const child = Bun.spawn([process.execPath, script], { cwd: ROOT, stdout: 'pipe', stderr: 'pipe' });
    const [stdout, stderr, code] = [await new Response(child.stdout).text(), await new Response(child.stderr).text(), await child.exited];
    expect({ code, stderr }).toEqual({ code: 0, stderr: '' });
    // What the example says it writes, in the comment on its last line.
    expect(stdout).toBe(/process\.stdout\.write\(t\.text\);\s+\/\/ (.+)$/m.exec(block!)![1]!);
  }, 30_000);

  test('caption examples ask for enough tokens for a two-object caption (63 bytes)', () => {
    const captioning = codeBlocks.filter((b) => /image/.test(b) && /max_tokens/.test(b));
    expect(captioning.length).toBeGreaterThan(0);
    for (const block of captioning) {
      for (const [, value] of block.matchAll(/max_tokens\W+(\d+)/g)) expect(Number(value)).toBeGreaterThanOrEqual(64);
    }
    const longest = 'a large purple triangle to the left of a large orange triangle.';
    expect(longest.length).toBe(63);
    expect(readme).toContain('63');
  });

  test('the data set is specified in docs/shapes.md, and nothing cites design/shapes.md', async () => {
    expect(existsSync(join(ROOT, 'docs', 'shapes.md'))).toBe(true);
    expect(readme).toContain('docs/shapes.md');
    const cited: string[] = [];
    for (const pattern of ['README.md', 'src/**/*.ts', 'routes/**/*.ts', 'workers/**/*.ts', 'model/**/*.ts', 'test/**/*.ts', 'docs/**/*.md']) {
      for await (const file of new Glob(pattern).scan(ROOT)) {
        if ((await readFile(join(ROOT, file), 'utf8')).includes('design/shapes.md') && !file.endsWith('readme.test.ts')) cited.push(file);
      }
    }
    expect(cited).toEqual([]);
  });

  test('README.md is at most 15,000 bytes (wc -c), and links to every document in docs/', async () => {
    expect(new TextEncoder().encode(readme).length).toBeLessThanOrEqual(15_000);
    for (const file of documents.keys()) if (file !== 'README.md') expect(readme).toContain(`](${file})`);
  });

  test('every relative link in README.md and docs/ leads to a file, and its #anchor to a heading there', () => {
    const broken: string[] = [];
    for (const [file, text] of documents) {
      for (const [, target] of text.matchAll(/\]\(([^)\s]+)\)/g)) {
        if (/^[a-z]+:/.test(target!)) continue;
        const [path, anchor] = target!.split('#') as [string, string | undefined];
        const resolved = path ? join(dirname(file), path) : file;
        const text = resolved === file ? documents.get(file) : existsSync(join(ROOT, resolved)) ? documents.get(resolved) ?? '' : undefined;
        if (text === undefined) broken.push(`${file}: ${target} (no such file)`);
        else if (anchor && !anchors(text).has(anchor)) broken.push(`${file}: ${target} (no such heading)`);
      }
    }
    expect(broken).toEqual([]);
  });

  test('every file README.md and docs/ cite by path is in the repository (a moved file is cited under its new path)', () => {
    const cited = [...documents.values()].flatMap((text) => [...text.matchAll(/`((?:src|model|routes|workers|bench|test|public|examples|models|docs)\/[\w./-]+\.\w+)`/g)].map((m) => m[1]!));
    expect(cited.length).toBeGreaterThan(5);
    expect(cited.filter((path) => !existsSync(join(ROOT, path)))).toEqual([]);
  });
});
