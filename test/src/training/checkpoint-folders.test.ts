import { describe, expect, test } from 'bun:test';
import { mkdir, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { checkpointFolder, pruneCheckpoints } from '../../../src/training/checkpoint-folders.ts';
import { tempDir } from './helpers.ts';

async function outFolder(steps: number[]): Promise<string> {
  const dir = await tempDir();
  for (const step of steps) await mkdir(join(dir, checkpointFolder(step)));
  await mkdir(join(dir, 'vision-pretrained'));
  return dir;
}

describe('pruneCheckpoints', () => {
  test('keeps the K latest up to the checkpoint just recorded, and every folder above it, written and not yet recorded', async () => {
    const dir = await outFolder([1, 2, 3, 4, 5, 6]);
    await pruneCheckpoints(join(dir, 'step-000004'), 2);
    expect((await readdir(dir)).sort()).toEqual(['step-000003', 'step-000004', 'step-000005', 'step-000006', 'vision-pretrained']);
  });

  test('past step 999,999 the K kept are still the latest by step, not by name', async () => {
    const dir = await outFolder([999_999, 1_000_000, 1_000_001]);
    await pruneCheckpoints(join(dir, 'step-1000001'), 2);
    expect((await readdir(dir)).sort()).toEqual(['step-1000000', 'step-1000001', 'vision-pretrained']);
  });
});
