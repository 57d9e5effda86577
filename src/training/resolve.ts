/**
 * Turns the user's relative paths of a job spec into absolute ones inside a base folder (DATA_DIR,
 * or the CLI config's folder), checking that each is a readable file (a folder for image_dir) there
 * and none of the reserved paths (the server's job store and checkpoints). Errors are DataPathErrors
 * that name the field.
 */
import { join } from 'node:path';
import { requirePath, resolveInside } from '../data/paths.ts';
import type { JobSpec } from './spec.ts';

const DATA_PATHS = ['annotations_file', 'captions_file', 'image_dir', 'text_data_path'] as const;

export async function resolveJobPaths(spec: JobSpec, base: string, reserved: readonly string[] = []): Promise<JobSpec> {
  const data = { ...spec.data };
  if ((data.type === 'annotations' || data.type === 'coco') && data.image_dir === undefined) data.image_dir = '.';
  for (const field of DATA_PATHS) {
    const given = data[field];
    if (given === undefined) continue;
    data[field] = resolveInside(base, given, `data.${field}`);
    await requirePath(base, data[field]!, given, `data.${field}`, { kind: field === 'image_dir' ? 'folder' : 'file', reserved });
  }
  const resolved: JobSpec = { ...spec, data };
  if (spec.base_checkpoint !== undefined) {
    // Another job's checkpoint is what a base checkpoint usually is: only data paths are kept out of them.
    resolved.base_checkpoint = resolveInside(base, spec.base_checkpoint, 'base_checkpoint');
    await requirePath(base, join(resolved.base_checkpoint, 'config.json'), spec.base_checkpoint, 'base_checkpoint', { kind: 'file' });
  }
  return resolved;
}
