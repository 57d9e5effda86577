/**
 * Turns the user's relative paths of a job spec into absolute ones inside a base folder (DATA_DIR,
 * or the CLI config's folder), checking that each is a readable file (a folder for image_dir) there
 * and none of the reserved paths (the server's job store and checkpoints). Errors are DataPathErrors
 * that name the field.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { CheckpointError, readCheckpointConfig } from '../../model/checkpoint.ts';
import { ConfigError, changedOptions, resolveConfig, type MultimodalMACOptions } from '../../model/config.ts';
import { DataPathError, requireFolderInside, requirePath, resolveInside } from '../data/paths.ts';
import { modelOptionError, type JobSpec } from './spec.ts';

const DATA_PATHS = ['annotations_file', 'captions_file', 'image_dir', 'text_data_path'] as const;

/**
 * `resumeFrom`: the checkpoint a resumed run continues, which holds the model it trains; its base
 * checkpoint is not read, and may be gone or replaced by then (pruned by another job, deleted).
 */
export async function resolveJobPaths(spec: JobSpec, base: string, reserved: readonly string[] = [], resumeFrom?: string): Promise<JobSpec> {
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
    if (resumeFrom !== undefined) return resolved;
    await requireFolderInside(base, resolved.base_checkpoint, spec.base_checkpoint, 'base_checkpoint');
    const config = join(resolved.base_checkpoint, 'config.json');
    if (!existsSync(config)) throw new DataPathError('base_checkpoint', `base_checkpoint '${spec.base_checkpoint}' is a folder but not a checkpoint: it has no config.json`);
    await requirePath(base, config, spec.base_checkpoint, 'base_checkpoint', { kind: 'file' });
    if (spec.model) await requireChangeable(resolved, spec.base_checkpoint);
  }
  return resolved;
}

/**
 * The options of the model a resolved spec trains: its base checkpoint's with the spec's changes, or
 * the spec's own. `given`: the base checkpoint as the user named it, for the error. A resumed run
 * reads them from the checkpoint it resumes instead, which holds the same ones.
 */
export async function jobModelOptions(resolved: JobSpec, given: string | undefined, fallback: MultimodalMACOptions, resumeFrom?: string): Promise<MultimodalMACOptions> {
  if (!resolved.base_checkpoint) return resolved.model ?? fallback;
  const source = resumeFrom ?? resolved.base_checkpoint;
  let base: MultimodalMACOptions;
  try {
    base = (await readCheckpointConfig(source)).model;
  } catch (error) {
    // A resume's own checkpoint says what is wrong with it; the base checkpoint was not read.
    if (error instanceof CheckpointError && resumeFrom === undefined) throw new DataPathError('base_checkpoint', `base_checkpoint '${given}' is not a readable checkpoint`);
    throw error;
  }
  return resolved.model ? changedOptions(base, resolved.model) : base;
}

/** Options changed in a base checkpoint must still make a valid model; the weights' shapes are checked when it loads. */
async function requireChangeable(resolved: JobSpec, given: string): Promise<void> {
  try {
    resolveConfig(await jobModelOptions(resolved, given, {}));
  } catch (error) {
    if (error instanceof ConfigError) throw modelOptionError(error, resolved.model);
    throw error;
  }
}
