/**
 * Named training jobs, for `bun run train --preset NAME`: the recipe of a shipped model, kept in code
 * so that anyone can retrain it exactly.
 */
import type { MultimodalMACOptions } from '../../model/config.ts';

/**
 * The small model: served (untrained) when MODEL_DIR holds no checkpoint yet, and trained when a job
 * names no model. Small enough to generate about 150 tokens/s on one WASM thread.
 */
export const SMALL_MODEL: MultimodalMACOptions = Object.freeze({
  imageSize: 32,
  patchSize: 8,
  visionDim: 64,
  visionDepth: 2,
  visionHeads: 4,
  visionMlpDim: 128,
  projectionDim: 128,
  textDim: 128,
  depth: 2,
  segmentLen: 16,
  heads: 4,
  dimHead: 32,
  visionDropout: 0,
  fusionDropout: 0,
});

/**
 * The bundled default captioner (models/default): synthetic shape scenes (docs/shapes.md) on two
 * data-parallel workers, sized to train on two CPU cores within two hours.
 *
 * After the default prompt, the 16 image tokens (a 4 x 4 grid of patches pooled by their maximum, so
 * that two objects rarely share a token and a small one is not averaged away into the background) and
 * the first object fit in the first 60-token segment; the second object's words always lie in the
 * next one, where only the neural memory and the long-term memory tokens can carry what the image
 * showed. One memory layer, the last, halves the cost of two and reads tokens that attention has
 * already mixed with the image. The convolutional stem is what lets the ViT see shapes in so few
 * images. Scenes are drawn at 128 x 128, where a small object's corners and points span enough pixels
 * to tell a square from a circle and a star from a triangle; the extra stride-2 convolution and the
 * 16-pixel patches keep the ViT's 8 x 8 patch grid as it was at 64 x 64.
 *
 * Two stages: the ViT first learns alone what each image token shows (a quarter of an hour on one
 * core), then captioning trains the rest with it frozen, which also makes a step a third cheaper.
 * Through captions alone the ViT learnt shape slowly, and captioning with it unfrozen undoes what it
 * learnt alone (docs/bundled-model.md).
 *
 * The memory's step: maxLr 3.2 is the 0.1 of a loss summed over the head's 32 features, the step the
 * recipe was first tuned with, and each head's surprise is clipped at 32, not 1. A two-object caption
 * takes one memory step before its second object, and at a clip of 1 that step is too weak to carry
 * the first segment: 94.4% exact, two objects 88.4%, against 98.3 and 96.4% here. The clip still
 * bounds what a long prompt can write.
 *
 * The memory starts afresh at the image's segment (neuralMemResetAtImages): after a long prompt, a
 * memory full of its text lost the second object (51% of captions exact after 4,000 bytes, second
 * objects 0-14%, even with a stage of long prompts); starting afresh it is 97.7% exact there
 * (docs/bundled-model.md, "Long prompts"). Every image of this recipe's prompts is in the first
 * segment, where the memory is fresh anyway, so the option changes no step of it.
 */
const SHAPES = {
  model: {
    imageSize: 128, patchSize: 16, visionStem: [16, 32, 64, 64, 64], visionDim: 128, visionDepth: 4, visionHeads: 4, visionMlpDim: 256, visionDropout: 0,
    textDim: 128, depth: 2, segmentLen: 60, heads: 4, dimHead: 32, ffMult: 4, numPersistMemTokens: 4, numLongtermMemTokens: 4,
    neuralMemoryLayers: [2], neuralMemResetAtImages: true, projectionDim: 128, fusionDropout: 0, numImageTokens: 16, imageTokenPool: 'max', maxImageOffset: 20, seed: 0,
    neuralMemoryKwargs: { maxLr: 3.2, maxGradNorm: 32 },
  },
  data: { type: 'synthetic-shapes', max_tokens: 96, val_size: 64 },
  vision_pretraining: { steps: 500, batch_size: 32, lr: 0.002, warmup: 50, eval_every: 100 },
  train: { steps: 6500, batch_size: 16, lr: 0.002, warmup: 200, weight_decay: 0.01, clip: 1, eval_every: 500, checkpoint_every: 500, keep_checkpoints: 10, workers: 2, seed: 1 },
};

/** The ablation of the Titans claim: the same recipe with attention alone, no neural memory. */
const SHAPES_ATTENTION_ONLY = { ...SHAPES, model: { ...SHAPES.model, neuralMemoryLayers: [] } };

/**
 * The passkey half of the Titans claim (models/passkey): a small text model that learns to carry a
 * key through its neural memory. 16-token segments keep the sequences short enough to train here:
 * filler of 10 segments is 160 tokens. The vision encoder is there only because every model has one;
 * no step reads an image.
 *
 * Copying a key back through the memory is learned abruptly, after a long flat stretch, and only
 * with short filler first (docs/titans-claim.md, "The passkey"): for 2000 steps the filler is at
 * most 32 tokens, then it grows to 256 by step 3500. Keys of one to five digits: a one-digit key is
 * the simplest thing to carry. The convolution before the memory's queries, keys and values lets a
 * key hold the tokens just before its own, so that a query made of what was just written recalls
 * what came next there. Linear memory: the simplest fast-weight store, and the cheapest; its
 * surprise is clipped, since an example takes up to 21 memory steps. It was trained before the
 * residual norm and the mean inner loss: maxLr 3.2 is its 0.1 of a summed loss over 32 features.
 */
const PASSKEY = {
  model: {
    imageSize: 16, patchSize: 8, visionDim: 16, visionDepth: 1, visionHeads: 1, visionMlpDim: 16, projectionDim: 16,
    textDim: 64, depth: 2, segmentLen: 16, heads: 2, dimHead: 32, ffMult: 4, numPersistMemTokens: 2, numLongtermMemTokens: 2,
    neuralMemoryLayers: [2], neuralMemoryModel: 'linear',
    neuralMemoryKwargs: { maxLr: 3.2, maxGradNorm: 1, convKernel: 4, memModelNormAddResidual: false },
    seed: 0,
  },
  data: { type: 'passkey', max_tokens: 400, val_size: 32, passkey: { filler_tokens: [0, 256], key_digits: [1, 5], filler_schedule: [[0, 32], [2000, 32], [3500, 256]] } },
  train: { steps: 5000, batch_size: 16, lr: 0.003, warmup: 100, weight_decay: 0.01, clip: 1, eval_every: 250, checkpoint_every: 250, keep_checkpoints: 4, workers: 2, seed: 1 },
};

/**
 * The passkey model taken on to keys anywhere, in two stages from models/passkey (which copies a key
 * that comes first, behind at most 256 tokens of filler). First passkey-depth: the same short filler,
 * the key at any depth of a mixed haystack (src/data/passkey.ts: the passkey sentences and scene
 * captions, none of the needle evaluation's English). Then passkey-long, from passkey-depth's last
 * checkpoint: the filler grows to 1,960 tokens (2,041 with the key and the question) over 150 steps,
 * in micro-batches of 4 per worker (8 examples of 2K tokens a worker outgrew the WASM heap).
 * Going to long filler straight from models/passkey undid its copy (docs/long-context.md).
 */
const PASSKEY_DEPTH = {
  base_checkpoint: 'models/passkey',
  data: { type: 'passkey', max_tokens: 400, val_size: 32, passkey: { filler_tokens: [0, 256], key_digits: [1, 5], depth: [0, 1], haystack: 'mixed' } },
  train: { steps: 600, batch_size: 16, lr: 0.001, warmup: 20, weight_decay: 0.01, clip: 1, eval_every: 200, checkpoint_every: 200, keep_checkpoints: 3, workers: 2, seed: 3 },
};

const PASSKEY_LONG = {
  base_checkpoint: 'checkpoints/passkey-depth/step-000600',
  data: {
    type: 'passkey', max_tokens: 2048, val_size: 32,
    passkey: { filler_tokens: [0, 1960], key_digits: [1, 5], depth: [0, 1], haystack: 'mixed', filler_schedule: [[0, 256], [150, 1960]] },
  },
  train: { steps: 300, batch_size: 8, grad_accum: 2, lr: 0.0003, warmup: 20, weight_decay: 0.01, clip: 1, eval_every: 300, checkpoint_every: 50, keep_checkpoints: 6, workers: 2, seed: 4 },
};

/**
 * The needle model (models/passkey-long): six more stages from passkey-long, in examples of at most
 * 2,048 tokens, that teach the memory to change only for the key, so that it holds the key over any
 * length of text after it (docs/long-context.md). Every stage learns the answer alone (answer_only:
 * the haystack and the question are context) and prices each change of the memory
 * (memory_update_cost): the mean step size of its rows and its forgetting per chunk. A write of
 * filler is harmless at 2K tokens; at 64K, repeated 32 times over, it wipes the key out.
 * - passkey-answer: 2K haystacks, a price of 1 (this run priced the step sizes alone: forgetting
 *   joined the price after it);
 * - passkey-priced: 2K haystacks, a price of 3;
 * - passkey-short: haystacks of 16 to 512 tokens, four times the examples a second, for the
 *   precision of the five digits: what the memory holds no longer depends on the haystack's length;
 * - passkey-hold: the same at a price of 30, which takes the writes of filler to near zero;
 * - passkey-polish: five-digit keys alone, at a lower learning rate, for longer;
 * - passkey-boundary (below): drops writes under 1% of the largest step (minStepSize 0.01), which the
 *   stages before did not: a write of 1e-4 on every row of a repeated filler still adds up over 16K tokens.
 */
const PASSKEY_ANSWER = {
  base_checkpoint: 'checkpoints/passkey-long/step-000300',
  data: { type: 'passkey', max_tokens: 2048, val_size: 32, passkey: { filler_tokens: [0, 1960], key_digits: [3, 5], depth: [0, 1], haystack: 'mixed', answer_only: true } },
  train: { steps: 250, batch_size: 8, grad_accum: 2, lr: 0.0003, warmup: 10, weight_decay: 0.01, clip: 1, memory_update_cost: 1, eval_every: 125, checkpoint_every: 50, keep_checkpoints: 6, workers: 2, seed: 6 },
};

const PASSKEY_PRICED = {
  ...PASSKEY_ANSWER,
  base_checkpoint: 'checkpoints/passkey-answer/step-000250',
  train: { ...PASSKEY_ANSWER.train, steps: 300, lr: 0.0005, memory_update_cost: 3, eval_every: 150, seed: 7 },
};

const PASSKEY_SHORT = {
  base_checkpoint: 'checkpoints/passkey-priced/step-000300',
  data: { type: 'passkey', max_tokens: 600, val_size: 32, passkey: { filler_tokens: [16, 512], key_digits: [4, 5], depth: [0, 1], haystack: 'mixed', answer_only: true } },
  train: { steps: 800, batch_size: 16, lr: 0.0005, warmup: 10, weight_decay: 0.01, clip: 1, memory_update_cost: 3, eval_every: 200, checkpoint_every: 100, keep_checkpoints: 8, workers: 2, seed: 8 },
};

const PASSKEY_HOLD = {
  ...PASSKEY_SHORT,
  base_checkpoint: 'checkpoints/passkey-short/step-000800',
  train: { ...PASSKEY_SHORT.train, memory_update_cost: 30, seed: 9 },
};

const PASSKEY_POLISH = {
  base_checkpoint: 'checkpoints/passkey-hold/step-000800',
  data: { ...PASSKEY_SHORT.data, passkey: { ...PASSKEY_SHORT.data.passkey, key_digits: [5, 5] } },
  train: { ...PASSKEY_HOLD.train, steps: 1500, lr: 0.0003, eval_every: 250, checkpoint_every: 250, keep_checkpoints: 6, seed: 11 },
};

/**
 * The last stage: the memory's convolution passes over the long-term memory tokens
 * (neuralMemConvSkipsMemTokens), with writes under 1% of the largest step dropped (minStepSize). Until
 * this stage a key that crossed a segment boundary after its first or second digit was lost at every
 * length: the keys of the digits after the boundary were made of the two memory tokens, where the
 * question recalls them by the digits before (docs/long-context.md). Its last step is models/passkey-long.
 */
const PASSKEY_BOUNDARY = {
  ...PASSKEY_POLISH,
  base_checkpoint: 'checkpoints/passkey-polish/step-001500',
  model: { neuralMemConvSkipsMemTokens: true, neuralMemoryKwargs: { minStepSize: 0.01 } },
  train: { ...PASSKEY_POLISH.train, steps: 300, eval_every: 300, checkpoint_every: 100, seed: 14 },
};

/** Its ablation: the same recipe with attention alone. */
const PASSKEY_ATTENTION_ONLY = { ...PASSKEY, model: { ...PASSKEY.model, neuralMemoryLayers: [] } };

/** The stages from models/passkey to models/passkey-long, in order. */
const NEEDLE_STAGES = {
  'passkey-depth': PASSKEY_DEPTH,
  'passkey-long': PASSKEY_LONG,
  'passkey-answer': PASSKEY_ANSWER,
  'passkey-priced': PASSKEY_PRICED,
  'passkey-short': PASSKEY_SHORT,
  'passkey-hold': PASSKEY_HOLD,
  'passkey-polish': PASSKEY_POLISH,
  'passkey-boundary': PASSKEY_BOUNDARY,
};

/**
 * The needle model's attention-only twin: each stage again, named `<stage>-attention-only`, from the
 * twin's stage before (the first from models/ablation/passkey-attention-only), with the same data,
 * steps and seeds. With no neural memory the price and the memory options change nothing. The last
 * stage's last step is models/ablation/passkey-long-attention-only.
 */
function attentionOnlyTwin(stage: { base_checkpoint: string }): Record<string, unknown> {
  const base = stage.base_checkpoint === 'models/passkey'
    ? 'models/ablation/passkey-attention-only'
    : stage.base_checkpoint.replace(/^checkpoints\/([^/]+)\//, 'checkpoints/$1-attention-only/');
  return { ...stage, base_checkpoint: base };
}

export const PRESETS: Readonly<Record<string, Record<string, unknown>>> = {
  shapes: SHAPES,
  'shapes-attention-only': SHAPES_ATTENTION_ONLY,
  passkey: PASSKEY,
  'passkey-attention-only': PASSKEY_ATTENTION_ONLY,
  ...NEEDLE_STAGES,
  ...Object.fromEntries(Object.entries(NEEDLE_STAGES).map(([name, stage]) => [`${name}-attention-only`, attentionOnlyTwin(stage)])),
};
