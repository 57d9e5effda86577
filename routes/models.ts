/**
 * GET /v1/models (OpenAI's list shape, with this server's details on the entry), GET /v1/models/:id
 * (or /v1/models/current), and PUT /v1/models/current to serve another checkpoint without a restart.
 */
import { Hono } from 'hono';
import { dirname, resolve, sep } from 'node:path';
import { requireApiKey } from '../src/auth.ts';
import { ApiError, invalidField } from '../src/errors.ts';
import type { ServedModel } from '../src/inference/pool.ts';
import { bodyKind, CONTROL_BODY_BYTES, readJsonObject, uploadLimit } from '../src/request-body.ts';
import type { Services } from '../src/services.ts';

export function modelsRouter({ pool, config }: Services): Hono {
  const router = new Hono();
  router.get('/', (c) => c.json({ object: 'list', data: [describeModel(pool.model)] }));
  router.put('/current', requireApiKey(config.apiKey), uploadLimit(CONTROL_BODY_BYTES), async (c) => {
    bodyKind(c, ['json']);
    const { checkpoint } = await readJsonObject(c);
    if (typeof checkpoint !== 'string' || checkpoint.trim() === '') throw invalidField('checkpoint', 'must be the path of a checkpoint folder on the server');
    return c.json(describeModel(await pool.loadModel(servableCheckpoint(checkpoint, config))));
  });
  router.get('/:id', (c) => {
    const model = pool.model;
    if (c.req.param('id') !== model.id && c.req.param('id') !== 'current') throw new ApiError(404, 'not_found', `no model '${c.req.param('id')}'; this server serves '${model.id}'`);
    return c.json(describeModel(model));
  });
  return router;
}

/**
 * Checkpoints load from DATA_DIR (where training jobs write them; a relative path starts there) or
 * from the folder that holds MODEL_DIR, never from anywhere else on the server.
 */
function servableCheckpoint(path: string, config: Services['config']): string {
  const full = resolve(config.dataDir, path);
  const roots = [resolve(config.dataDir), dirname(resolve(config.modelDir))];
  if (roots.some((root) => full === root || full.startsWith(root + sep))) return full;
  throw invalidField('checkpoint', `must be a folder inside DATA_DIR or beside MODEL_DIR (${roots.join(' or ')}), got '${path}'`);
}

function describeModel(model: ServedModel) {
  const { imageSize, mean, std, resize } = model.imageProcessor.options;
  return {
    id: model.id,
    object: 'model',
    created: model.loadedAt,
    owned_by: 'titans-mm',
    checkpoint: model.checkpoint,
    untrained: model.untrained,
    parameter_count: model.parameterCount,
    backend: model.backend,
    image_processor: { image_size: imageSize, mean, std, resize },
    config: model.config,
  };
}
