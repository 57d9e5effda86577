/**
 * What the README promises a new user (issue 20, item 10): a job body that POST /v1/training/jobs
 * takes as it is, caption examples whose max_tokens fit a two-object caption, and the data set's
 * specification in the repository (docs/shapes.md), cited under that name.
 */
import { describe, expect, test } from 'bun:test';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Glob } from 'bun';
import { parseJobSpec } from '../src/training/spec.ts';
import { makeCheckpoint, startTestServer } from './routes/helpers.ts';

const ROOT = join(import.meta.dir, '..');
const readme = await readFile(join(ROOT, 'README.md'), 'utf8');
const codeBlocks = [...readme.matchAll(/```\w*\n([\s\S]*?)```/g)].map((m) => m[1]!);

describe('README', () => {
  test('has a JSON body for POST /v1/training/jobs that the real server accepts as it is', async () => {
    const block = codeBlocks.find((b) => /curl[^\n]*\/v1\/training\/jobs[^\n]*-d '/.test(b));
    expect(block).toBeDefined();
    const body = JSON.parse(/-d '([\s\S]*?)'/.exec(block!)![1]!);
    expect(() => parseJobSpec(body)).not.toThrow();
    const server = await startTestServer(await makeCheckpoint(), { INFERENCE_WORKERS: '1' });
    try {
      const response = await fetch(`${server.url}/v1/training/jobs`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
      expect(response.status).toBe(202);
      await fetch(`${server.url}${response.headers.get('location')}/cancel`, { method: 'POST' });
    } finally {
      await server.shutdown();
    }
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
});
