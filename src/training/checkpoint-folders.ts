/**
 * The names of a run's checkpoint folders in its out folder: step-NNNNNN, the step padded to six
 * digits (and longer past step 999,999, so their text order is not their step order).
 */
import { basename } from 'node:path';

const FOLDER = /^step-(\d+)$/;

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
