/**
 * The names of a run's checkpoint folders in its out folder: step-NNNNNN, the step padded to six
 * digits (and longer past step 999,999, so their text order is not their step order), and which of
 * them a run keeps; and the folder of its vision pretraining's model.
 */
import { readdir, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

const FOLDER = /^step-(\d+)$/;

/** Where a run keeps the model that vision pretraining left, for the caption stage to start from. */
export const PRETRAINED_DIR = 'vision-pretrained';

export function checkpointFolder(step: number): string {
  return `step-${String(step).padStart(6, '0')}`;
}

/** The checkpoint folders among the names of an out folder's entries, oldest first. */
export function checkpointFolders(names: string[]): string[] {
  return names.filter((name) => FOLDER.test(name)).sort((a, b) => checkpointStep(a) - checkpointStep(b));
}

/** The step of the checkpoint at `path` (a folder checkpointFolder named, anywhere). */
export function checkpointStep(path: string): number {
  const match = FOLDER.exec(basename(path));
  if (!match) throw new Error(`'${path}' is not a checkpoint folder of a training run (step-NNNNNN)`);
  return Number(match[1]);
}

/**
 * Keeps the `keep` checkpoint folders of the highest steps up to `recorded`, the checkpoint whose
 * event its job has just recorded; called by whoever records them, not by the training loop. A job
 * resumes from the checkpoint its record names, and the loop goes on writing while that record
 * lags (a Redis outage, an event still in flight): so the recorded one is never removed, nor any
 * folder above it, written and not yet recorded.
 */
export async function pruneCheckpoints(recorded: string, keep: number): Promise<void> {
  const outDir = dirname(recorded);
  const step = checkpointStep(recorded);
  const older = checkpointFolders(await readdir(outDir)).filter((name) => checkpointStep(name) <= step);
  await Promise.all(older.slice(0, Math.max(0, older.length - keep)).map((name) => rm(join(outDir, name), { recursive: true, force: true })));
}
