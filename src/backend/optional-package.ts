/**
 * The GPU tiers' packages are optional dependencies (tfjs-node-gpu's install step downloads a native
 * library; Dawn's builds are large), so they are found and loaded by name at run time: the specifier
 * is a variable, which neither tsc nor a bundler requires to exist.
 */

/** Throws `package NAME is not installed` unless it resolves from here. */
export function requireInstalled(name: string): void {
  try {
    import.meta.resolve(name);
  } catch {
    throw new Error(`package ${name} is not installed`);
  }
}

/** The installed package's module, or the first line of why it would not load. */
export async function importInstalled<T>(name: string): Promise<T> {
  requireInstalled(name);
  try {
    return (await import(name)) as T;
  } catch (error) {
    throw new Error(`${name} failed to load: ${error instanceof Error ? error.message.split('\n')[0] : error}`);
  }
}
