/**
 * User-given data paths resolve inside one base folder (DATA_DIR for the API, the config file's
 * folder for the CLI). A path that escapes it, or names a file that cannot be read, is refused with
 * the field it came from, so that the API can answer 400 naming it.
 */
import { access, constants } from 'node:fs/promises';
import { isAbsolute, relative, resolve, sep } from 'node:path';

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
  const rel = relative(root, full);
  if (rel === '..' || rel.startsWith(`..${sep}`) || isAbsolute(rel)) {
    throw new DataPathError(field, `${field} '${path}' is outside the data folder`);
  }
  return full;
}

/** Throws a DataPathError naming the field and the file when it does not exist or cannot be read. */
export async function requireReadable(path: string, field: string): Promise<void> {
  try {
    await access(path, constants.R_OK);
  } catch (error) {
    const reason = (error as NodeJS.ErrnoException).code === 'ENOENT' ? 'does not exist' : 'cannot be read';
    throw new DataPathError(field, `${field}: ${path} ${reason}`);
  }
}
