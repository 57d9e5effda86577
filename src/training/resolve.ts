/**
 * Turns the user's relative paths of a job spec into absolute ones inside a base folder (DATA_DIR,
 * or the CLI config's folder), checking that each exists and can be read. Errors are DataPathErrors
 * that name the field.
 */
import { join } from 'node:path';
import { requireReadable, resolveInside } from '../data/paths.ts';
import type { JobSpec } from './spec.ts';

const DATA_PATHS = ['annotations_file', 'captions_file', 'image_dir', 'text_data_path'] as const;

export async function resolveJobPaths(spec: JobSpec, base: string): Promise<JobSpec> {
  const data = { ...spec.data };
  for (const field of DATA_PATHS) {
    const path = data[field];
    if (path === undefined) continue;
    data[field] = resolveInside(base, path, `data.${field}`);
    await requireReadable(data[field]!, `data.${field}`);
  }
  if ((data.type === 'annotations' || data.type === 'coco') && data.image_dir === undefined) data.image_dir = resolveInside(base, '.', 'data.image_dir');
  const resolved: JobSpec = { ...spec, data };
  if (spec.base_checkpoint !== undefined) {
    resolved.base_checkpoint = resolveInside(base, spec.base_checkpoint, 'base_checkpoint');
    await requireReadable(join(resolved.base_checkpoint, 'config.json'), 'base_checkpoint');
  }
  return resolved;
}
