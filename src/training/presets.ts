/**
 * Named training jobs, for `bun run train --preset NAME`: the recipe of a shipped model, kept in code
 * so that anyone can retrain it exactly.
 */

/**
 * The bundled default captioner (models/default): synthetic shape scenes (design/shapes.md) on two
 * data-parallel workers, sized to train on two CPU cores within two hours. The 32-byte segment is
 * shorter than a two-object caption, so its second half lies in a later segment than the image and
 * can only be written from the neural memory and the long-term memory tokens.
 */
const SHAPES = {
  model: {
    imageSize: 64, patchSize: 8, visionDim: 96, visionDepth: 3, visionHeads: 4, visionMlpDim: 192, visionDropout: 0,
    textDim: 128, depth: 2, segmentLen: 32, heads: 4, dimHead: 32, ffMult: 4, numPersistMemTokens: 4, numLongtermMemTokens: 4,
    projectionDim: 128, fusionDropout: 0, numImageTokens: 4, seed: 0,
  },
  data: { type: 'synthetic-shapes', max_tokens: 96, val_size: 64 },
  train: { steps: 3000, batch_size: 16, lr: 0.002, warmup: 100, weight_decay: 0.01, clip: 1, eval_every: 250, checkpoint_every: 250, keep_checkpoints: 4, workers: 2, seed: 1 },
};

export const PRESETS: Readonly<Record<string, Record<string, unknown>>> = { shapes: SHAPES };
