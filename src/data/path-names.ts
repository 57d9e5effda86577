/**
 * How the API names files on the server: relative to the folders a client works with (DATA_DIR, the
 * folder that holds MODEL_DIR), never as absolute paths, which would tell anyone who asks how the
 * server's disk is laid out. The first root that holds a path names it.
 */
import { relative, resolve, sep } from 'node:path';

export class PathNames {
  private readonly roots: string[];

  constructor(roots: string[]) {
    // Longest first, so that a root inside another names its own paths.
    this.roots = [...new Set(roots.map((root) => resolve(root)))].sort((a, b) => b.length - a.length);
  }

  /** `path` relative to the root that holds it ('.' for a root itself); its last folder name when none does. */
  show(path: string): string {
    const full = resolve(path);
    const root = this.roots.find((r) => full === r || full.startsWith(r + sep));
    return root === undefined ? (full.split(sep).at(-1) ?? '') : relative(root, full) || '.';
  }

  /** `text` with every absolute path inside a root written relative to it. */
  scrub(text: string): string {
    return this.roots.reduce((out, root) => out.split(root + sep).join('').split(root).join('.'), text);
  }
}
