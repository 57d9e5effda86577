/** Whether an optional package (a GPU tier's) is installed here: its tests run only where it is. */
export function isInstalled(name: string): boolean {
  try {
    Bun.resolveSync(name, import.meta.dir);
    return true;
  } catch {
    return false;
  }
}
