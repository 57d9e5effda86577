/**
 * GET /v1/models (OpenAI's list shape, with this server's details on the entry), GET /v1/models/:id
 * (or /v1/models/current), and PUT /v1/models/current to serve another checkpoint without a restart.
 * A checkpoint is named relative to DATA_DIR or to the folder that holds MODEL_DIR (the models
 * folder), as PUT takes it: absolute server paths are not shown. Each model comes with its card.
 */
import { Hono } from 'hono';
import { z } from 'zod';
import { existsSync } from 'node:fs';
import { dirname, resolve, sep } from 'node:path';
import { requireApiKey } from '../src/http/auth.ts';
import { ApiError, invalidField } from '../src/http/errors.ts';
import type { ServedModel } from '../src/inference/pool.ts';
import { readModelCard } from '../src/training/model-card.ts';
import { PathNames } from '../src/data/path-names.ts';
import { requireFolderInside } from '../src/data/paths.ts';
import { acceptBodies, controlBodyLimit, readJsonObject } from '../src/http/request-body.ts';
import type { Services } from '../src/http/services.ts';
import type { RouteDoc } from '../src/http/openapi.ts';
import { parseFields } from '../src/http/validation.ts';
import { failsWith } from '../src/schema/issues.ts';

const notACheckpoint = failsWith(() => 'must be the path of a checkpoint folder on the server');
export const loadModelSchema = z.object({
  checkpoint: z.string(notACheckpoint).trim().min(1, notACheckpoint).meta({ description: 'a folder inside DATA_DIR or beside MODEL_DIR, as GET /v1/models names it' }),
});

export const MODELS_DOCS: RouteDoc[] = [
  { method: 'get', path: '/', summary: "The served model, in OpenAI's list shape, with its config, card, backend and parameter count", responses: { 200: 'the list' } },
  {
    method: 'put',
    path: '/current',
    summary: 'Serve another checkpoint without a restart; running generations finish on the old one',
    body: { 'application/json': loadModelSchema },
    auth: true,
    responses: { 200: 'the model now served', 400: 'the checkpoint cannot be read or is outside the allowed folders', 401: 'API_KEY missing or wrong', 409: 'another model is being loaded', 413: 'the body is over 64 KiB', 415: 'not application/json' },
  },
  // A route of its own, not an id: OpenAPI matches /current before the template /{id}.
  { method: 'get', path: '/current', summary: 'The served model, whatever its id', responses: { 200: 'the model' } },
  { method: 'get', path: '/:id', summary: 'The served model by its id', responses: { 200: 'the model', 404: 'not the served model' } },
];

export function modelsRouter({ pool, config }: Services): Hono {
  const router = new Hono();
  const roots = [resolve(config.dataDir), dirname(resolve(config.modelDir))];
  const names = new PathNames(roots);
  router.get('/', async (c) => c.json({ object: 'list', data: [await describeModel(pool.model, names)] }));
  router.put('/current', requireApiKey(config.apiKey), acceptBodies(['json']), controlBodyLimit(), async (c) => {
    const { checkpoint } = parseFields(loadModelSchema, await readJsonObject(c));
    return c.json(await describeModel(await pool.loadModel(await servableCheckpoint(checkpoint, roots)), names));
  });
  router.get('/current', async (c) => c.json(await describeModel(pool.model, names)));
  router.get('/:id', async (c) => {
    const model = pool.model;
    if (c.req.param('id') !== model.id) throw new ApiError(404, 'not_found', `no model '${c.req.param('id')}'; this server serves '${model.id}'`);
    return c.json(await describeModel(model, names));
  });
  return router;
}

/**
 * Checkpoints load from DATA_DIR (where training jobs write them) or from the folder that holds
 * MODEL_DIR, never from anywhere else on the server, symbolic links followed. A relative path is
 * looked up in DATA_DIR first, then in the models folder: the names GET /v1/models shows.
 */
async function servableCheckpoint(path: string, roots: string[]): Promise<string> {
  const inside = (root: string, full: string) => full === root || full.startsWith(root + sep);
  for (const root of roots) {
    const full = resolve(root, path);
    if (!inside(root, full) || !existsSync(full)) continue;
    // Throws, naming the field, when a link leads out of the folder it was found in.
    await requireFolderInside(root, full, path, 'checkpoint');
    return full;
  }
  const full = resolve(roots[0]!, path);
  if (roots.some((root) => inside(root, full))) {
    throw invalidField('checkpoint', `'${path}' is in neither DATA_DIR nor the folder that holds MODEL_DIR: a checkpoint is named relative to one of them, as GET /v1/models names the served one`);
  }
  throw invalidField('checkpoint', `must be a folder inside DATA_DIR or beside MODEL_DIR, got '${path}'`);
}

/** The model with its card: what it was trained on and what it does not know (src/training/model-card.ts). */
async function describeModel(model: ServedModel, names: PathNames) {
  const { imageSize, mean, std, resize } = model.imageProcessor.options;
  return {
    id: model.id,
    object: 'model',
    created: model.loadedAt,
    owned_by: 'titans-mm',
    checkpoint: model.checkpoint && names.show(model.checkpoint),
    card: await readModelCard(model.checkpoint),
    untrained: model.untrained,
    parameter_count: model.parameterCount,
    backend: model.backend,
    image_processor: { image_size: imageSize, mean, std, resize },
    config: model.config,
  };
}
