import { describe, expect, test } from 'bun:test';
import { readCheckpointConfig } from '../../../model/checkpoint.ts';
import { changedOptions, resolveConfig } from '../../../model/config.ts';
import { widenImagePlaceholders } from '../../../model/multimodal.ts';
import { ByteTokenizer } from '../../../model/tokenizer.ts';
import { COLORS, SHAPES, sceneCaption, type Scene, type SceneObject } from '../../../src/data/shapes.ts';
import { DEFAULT_PROMPT } from '../../../src/inference/generation.ts';
import { PASSKEY_SEGMENTS } from '../../../src/evaluation/passkey-eval.ts';
import { PRESETS } from '../../../src/training/presets.ts';
import { DEFAULT_PROMPTS, parseJobSpec } from '../../../src/training/spec.ts';

const tokenizer = new ByteTokenizer();
const shapes = resolveConfig(PRESETS.shapes!.model as object);

/** Every two-object caption there is: both relations, every size, colour and shape of each object. */
function twoObjectScenes(): Scene[] {
  const objects: SceneObject[] = [];
  for (const size of ['small', 'large'] as const) {
    for (const color of Object.keys(COLORS)) {
      for (const shape of SHAPES) objects.push({ shape, color, size, rgb: COLORS[color]!, cx: 0, cy: 0, extent: 0, innerRatio: 0.45 });
    }
  }
  const base = { width: 64, height: 64, background: [255, 255, 255] as [number, number, number], noise: 0, noiseSeed: 0 };
  return objects.flatMap((first) => objects.flatMap((second) =>
    (['left of', 'above'] as const).map((relation) => ({ ...base, objects: [first, second], relation }))));
}

/** The position of the caption's first byte, after the default prompt and the image's placeholders. */
function captionStart(): number {
  const head = tokenizer.encode(DEFAULT_PROMPT);
  const { tokens } = widenImagePlaceholders([...head, tokenizer.imageTokenId], [head.length], shapes.numImageTokens, tokenizer.imageTokenId);
  return tokens.length;
}

describe('the shapes preset', () => {
  test('puts the image and the first object in the first segment and the second object in the next', () => {
    const start = captionStart();
    const segmentOf = (position: number) => Math.floor(position / shapes.segmentLen);
    expect(segmentOf(start - 1)).toBe(0); // the last image token
    const scenes = twoObjectScenes();
    expect(scenes.length).toBe(2 * 48 * 48);
    for (const scene of scenes) {
      const caption = sceneCaption(scene);
      const [first, second] = [...caption.matchAll(/a (small|large) \w+ \w+/g)];
      expect(segmentOf(start + first!.index! + first![0].length - 1)).toBe(0);
      // From the second object's size word on, the caption lies in segment 1.
      expect(segmentOf(start + second!.index! + 2)).toBe(1);
    }
  });

  test('every image of its own prompts starts in the first segment, within maxImageOffset: neither moving images nor the memory\'s reset at images changes a step of the recipe', () => {
    for (const prompt of DEFAULT_PROMPTS) expect(tokenizer.encode(prompt).length).toBeLessThanOrEqual(shapes.maxImageOffset);
    expect(shapes.maxImageOffset).toBe(Math.max(...DEFAULT_PROMPTS.map((p) => p.length)));
    expect(shapes.maxImageOffset).toBeLessThan(shapes.segmentLen);
    expect(shapes.neuralMemResetAtImages).toBe(true);
  });

  test('the attention-only ablation differs only by having no neural memory', () => {
    const ablation = PRESETS['shapes-attention-only']!;
    expect(ablation.model).toEqual({ ...(PRESETS.shapes!.model as object), neuralMemoryLayers: [] });
    expect(ablation.data).toEqual(PRESETS.shapes!.data);
    expect(ablation.vision_pretraining).toEqual(PRESETS.shapes!.vision_pretraining);
    expect(ablation.train).toEqual(PRESETS.shapes!.train);
    expect(resolveConfig(ablation.model as object).neuralMemoryLayers).toEqual([]);
  });
});

describe('the passkey preset', () => {
  const passkey = PRESETS.passkey!;
  const config = resolveConfig(passkey.model as object);

  test('is a valid job whose memory convolves its keys, and whose ablation differs only by having no neural memory', () => {
    const job = parseJobSpec(passkey);
    expect(job.data.type).toBe('passkey');
    expect(config.neuralMemoryKwargs.convKernel).toBeGreaterThan(0);
    const ablation = PRESETS['passkey-attention-only']!;
    expect(ablation.model).toEqual({ ...(passkey.model as object), neuralMemoryLayers: [] });
    expect({ ...ablation, model: null }).toEqual({ ...passkey, model: null });
  });

  test('trains on filler longer than 8 segments, up to the evaluation\'s middle length', () => {
    const { filler_tokens } = parseJobSpec(passkey).data.passkey!;
    expect(filler_tokens[1] / config.segmentLen).toBeGreaterThan(8);
    expect(filler_tokens[1]).toBeGreaterThanOrEqual(PASSKEY_SEGMENTS[1]! * config.segmentLen);
  });
});

describe('the passkey-depth and passkey-long presets', () => {
  const depth = PRESETS['passkey-depth']!;
  const long = PRESETS['passkey-long']!;

  test('go on from models/passkey, whose options are the passkey preset\'s once its version 1 config is read', async () => {
    expect(depth.base_checkpoint).toBe('models/passkey');
    expect(long.base_checkpoint).toStartWith('checkpoints/passkey-depth/');
    const bundled = resolveConfig((await readCheckpointConfig('models/passkey')).model);
    const preset = resolveConfig(PRESETS.passkey!.model as object);
    expect({ ...bundled, neuralMemoryKwargs: { ...bundled.neuralMemoryKwargs, maxLr: 0 } }).toEqual({ ...preset, neuralMemoryKwargs: { ...preset.neuralMemoryKwargs, maxLr: 0 } });
    expect(bundled.neuralMemoryKwargs.maxLr).toBeCloseTo(preset.neuralMemoryKwargs.maxLr, 6);
  });

  test('put the key at any depth of the mixed haystack, first behind short filler, then in examples of at most 2,048 tokens', () => {
    for (const preset of [depth, long]) expect(parseJobSpec(preset).data.passkey).toMatchObject({ depth: [0, 1], haystack: 'mixed' });
    expect(parseJobSpec(depth).data.passkey!.filler_tokens[1]).toBe(256);
    expect(parseJobSpec(long).data.max_tokens).toBeLessThanOrEqual(2048);
  });
});

describe('the needle model\'s presets, after passkey-long', () => {
  const stages = ['passkey-answer', 'passkey-priced', 'passkey-short', 'passkey-hold', 'passkey-polish', 'passkey-boundary'];

  test('each goes on from the one before, learning the key alone in examples of at most 2,048 tokens', () => {
    expect(PRESETS['passkey-answer']!.base_checkpoint).toStartWith('checkpoints/passkey-long/');
    stages.slice(1).forEach((stage, i) => expect(PRESETS[stage]!.base_checkpoint).toStartWith(`checkpoints/${stages[i]}/`));
    for (const stage of stages) {
      const job = parseJobSpec(PRESETS[stage]!);
      expect(job.data.max_tokens).toBeLessThanOrEqual(2048);
      expect(job.data.passkey).toMatchObject({ depth: [0, 1], haystack: 'mixed', answer_only: true });
    }
  });

  test('price every change of the memory, more at later stages', () => {
    const prices = stages.map((stage) => parseJobSpec(PRESETS[stage]!).train.memory_update_cost);
    expect(prices).toEqual([1, 3, 3, 30, 30, 30]);
  });

  test('end in models/passkey-long: the passkey model with the last stage\'s changes, its convolution past the memory tokens', async () => {
    const bundled = resolveConfig((await readCheckpointConfig('models/passkey-long')).model);
    const trained = resolveConfig(changedOptions(PRESETS.passkey!.model as object, PRESETS['passkey-boundary']!.model as object));
    expect(bundled.neuralMemConvSkipsMemTokens).toBe(true);
    expect(bundled.neuralMemoryKwargs.minStepSize).toBe(0.01);
    expect({ ...bundled.neuralMemoryKwargs, maxLr: 0 }).toEqual({ ...trained.neuralMemoryKwargs, maxLr: 0 });
  });
});

describe('the needle model\'s attention-only twin', () => {
  const stages = ['passkey-depth', 'passkey-long', 'passkey-answer', 'passkey-priced', 'passkey-short', 'passkey-hold', 'passkey-polish', 'passkey-boundary'];

  test('runs every stage again from the twin\'s stage before, the passkey ablation first, with the same data and steps', () => {
    expect(PRESETS['passkey-depth-attention-only']!.base_checkpoint).toBe('models/ablation/passkey-attention-only');
    stages.slice(1).forEach((stage, i) => {
      const twin = PRESETS[`${stage}-attention-only`]!;
      expect(twin.base_checkpoint).toBe((PRESETS[stage]!.base_checkpoint as string).replace(`checkpoints/${stages[i]}/`, `checkpoints/${stages[i]}-attention-only/`));
      expect({ ...twin, base_checkpoint: null }).toEqual({ ...PRESETS[stage]!, base_checkpoint: null });
    });
  });

  test('ends in models/ablation/passkey-long-attention-only, a model with no neural memory', async () => {
    const twin = resolveConfig((await readCheckpointConfig('models/ablation/passkey-long-attention-only')).model);
    const needle = resolveConfig((await readCheckpointConfig('models/passkey-long')).model);
    expect(twin.neuralMemoryLayers).toEqual([]);
    expect({ ...twin, neuralMemoryLayers: [], neuralMemoryKwargs: null }).toEqual({ ...needle, neuralMemoryLayers: [], neuralMemoryKwargs: null });
  });
});
