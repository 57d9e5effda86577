/**
 * User-given data paths resolve inside one base folder (DATA_DIR for the API, the config file's
 * folder for the CLI). A path that escapes it (by `..`, an absolute path or a symbolic link), names
 * the wrong kind of thing (a folder where a file is meant, or the reverse), cannot be read, or is
 * one of the server's own files is refused with the field it came from, so that the API can answer
 * 400 naming it. Messages show the path as the user gave it, never the server's absolute one.
 */
import { access, constants, readdir, realpath, stat } from 'node:fs/promises';
import { isAbsolute, join, relative, resolve, sep } from 'node:path';

export class DataPathError extends Error {
  override name = 'DataPathError';

  constructor(
    readonly field: string,
    message: string,
  ) {
    super(message);
  }
}

/** `path` (relative to base, or absolute inside it) as an absolute path; throws when it escapes base. */
export function resolveInside(base: string, path: string, field: string): string {
  const root = resolve(base);
  const full = resolve(root, path);
  if (!isInside(root, full)) throw new DataPathError(field, `${field} '${path}' is outside the data folder`);
  return full;
}

export interface RequiredPath {
  /** A regular file (a data file, a checkpoint's config.json) or a folder (image_dir). */
  kind: 'file' | 'folder';
  /**
   * Absolute paths that this one may neither be nor lie inside: the server's own files (its job
   * store, the jobs' checkpoints).
   */
  reserved?: readonly string[];
}

/**
 * Checks that `full` (from resolveInside(base, given)) is a readable file or folder inside base once
 * symbolic links are followed, and none of the reserved paths. Throws a DataPathError naming `field`.
 */
export async function requirePath(base: string, full: string, given: string, field: string, { kind, reserved = [] }: RequiredPath): Promise<void> {
  let real: string;
  try {
    real = await realpath(full);
  } catch (error) {
    const reason = (error as NodeJS.ErrnoException).code === 'ENOENT' ? 'does not exist' : 'cannot be read';
    throw new DataPathError(field, `${field}: '${given}' ${reason}`);
  }
  if (!isInside(await realpath(resolve(base)), real)) throw new DataPathError(field, `${field} '${given}' leads outside the data folder`);
  const reservedReal = await Promise.all(reserved.map((path) => realpath(path).catch(() => resolve(path))));
  if (reservedReal.some((path) => real === path || isInside(path, real))) {
    throw new DataPathError(field, `${field} '${given}' is one of the server's own files (its job store or the jobs' checkpoints), not training data`);
  }
  const found = await stat(real);
  if (kind === 'file' && !found.isFile()) throw new DataPathError(field, `${field} '${given}' must be a file, but it is ${found.isDirectory() ? 'a folder' : 'not a regular file'}`);
  if (kind === 'folder' && !found.isDirectory()) throw new DataPathError(field, `${field} '${given}' must be a folder, but it is a file`);
  try {
    await access(real, kind === 'folder' ? constants.R_OK | constants.X_OK : constants.R_OK);
  } catch {
    throw new DataPathError(field, `${field}: '${given}' cannot be read`);
  }
}

/**
 * The folder at `full` (a checkpoint, whose files are read by name) checked as requirePath checks
 * it, and each symbolic link in it too: a link to a file elsewhere on the server must not be read
 * through it, whose errors would quote it.
 */
export async function requireFolderInside(base: string, full: string, given: string, field: string): Promise<void> {
  await requirePath(base, full, given, field, { kind: 'folder' });
  for (const entry of await readdir(full, { withFileTypes: true })) {
    if (entry.isSymbolicLink()) await requirePath(base, join(full, entry.name), `${given}/${entry.name}`, field, { kind: 'file' });
  }
}

function isInside(root: string, full: string): boolean {
  const rel = relative(root, full);
  return !(rel === '..' || rel.startsWith(`..${sep}`) || isAbsolute(rel));
}
