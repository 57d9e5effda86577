import { describe, expect, test } from 'bun:test';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Glob } from 'bun';
import { ConfigError, changedOptions, resolveConfig, serializableConfig, type MultimodalMACOptions } from '../../model/config.ts';
import { TINY } from './helpers.ts';

const ROOT = join(import.meta.dir, '../..');

function errorOf(options: unknown): string {
  try {
    resolveConfig(options as MultimodalMACOptions);
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return (error as Error).message;
  }
  throw new Error(`accepted ${JSON.stringify(options)}`);
}

describe('defaults', () => {
  test('are the original extension\'s, and the memory layout follows from the transformer', () => {
    const c = resolveConfig();
    expect(c).toMatchObject({ imageSize: 224, patchSize: 16, visionDim: 768, visionDepth: 12, textDim: 384, depth: 8, segmentLen: 32, heads: 8, dimHead: 64 });
    expect(c.neuralMemoryLayers).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(c.neuralMemorySegmentLen).toBe(32 + 4); // a segment and its long-term memory tokens
    expect(c.neuralMemoryBatchSize).toBe(36);
    expect(c.neuralMemoryKwargs).toEqual({
      depth: 2, expansionFactor: 4, heads: 8, dimHead: 64, momentum: true, maxLr: 0.1, qkNorm: true, maxGradNorm: 1,
      convKernel: 0, memModelNormAddResidual: true, spectralNormSurprises: false, initDecayBias: -4, minStepSize: 0,
    });
  });

  test('derived defaults follow the options given, and given values win', () => {
    const c = resolveConfig({ depth: 3, segmentLen: 10, numLongtermMemTokens: 2, heads: 2, dimHead: 16, neuralMemoryKwargs: { dimHead: 8 } });
    expect(c.neuralMemoryLayers).toEqual([1, 2, 3]);
    expect([c.neuralMemorySegmentLen, c.neuralMemoryBatchSize]).toEqual([12, 12]);
    expect(resolveConfig({ neuralMemorySegmentLen: 6 }).neuralMemoryBatchSize).toBe(6);
    expect([c.neuralMemoryKwargs.heads, c.neuralMemoryKwargs.dimHead]).toEqual([2, 8]);
  });

  test('an option given as undefined takes its default; no two configs share a default list', () => {
    expect(resolveConfig({ imageSize: undefined, neuralMemoryKwargs: { maxLr: undefined } })).toEqual(resolveConfig());
    const a = resolveConfig();
    a.visionStem.push(8);
    a.imageMean[0] = 0;
    expect(resolveConfig()).toMatchObject({ visionStem: [], imageMean: [0.5, 0.5, 0.5] });
  });
});

describe('every option is checked, and the error names it', () => {
  const defaults = resolveConfig();
  const topLevel = Object.keys(defaults).filter((key) => key !== 'neuralMemoryKwargs');

  test.each(topLevel)('%s refuses a value of the wrong kind', (key) => {
    expect(errorOf({ [key]: { nonsense: true } })).toStartWith(`option '${key}' must be `);
  });

  test.each(Object.keys(defaults.neuralMemoryKwargs))('neuralMemoryKwargs.%s refuses a value of the wrong kind', (key) => {
    expect(errorOf({ neuralMemoryKwargs: { [key]: 'nonsense' } })).toStartWith(`option 'neuralMemoryKwargs.${key}' must be `);
  });

  test('an unknown option is rejected by name, also one that only an object\'s prototype has', () => {
    expect(errorOf({ ...TINY, segmentLength: 4 })).toBe("unknown option 'segmentLength'");
    expect(errorOf({ toString: 1 })).toBe("unknown option 'toString'");
    expect(errorOf({ neuralMemoryKwargs: { lr: 1 } })).toBe("unknown option 'neuralMemoryKwargs.lr'");
    expect(errorOf({ neuralMemoryKwargs: [1] })).toStartWith("option 'neuralMemoryKwargs' must be an object");
  });

  test('experimental switches accept only their neutral value', () => {
    expect(() => resolveConfig({ ...TINY, numResidualStreams: 1, useFlexAttn: false })).not.toThrow();
    expect(resolveConfig({ numResidualStreams: 1 })).not.toHaveProperty('numResidualStreams');
    expect(errorOf({ ...TINY, numResidualStreams: 4 })).toBe("option 'numResidualStreams' = 4 is not supported (only 1)");
  });

  test('values out of range say what a valid one is', () => {
    expect(errorOf({ imageSize: 0 })).toBe("option 'imageSize' must be a whole number >= 1, got 0");
    expect(errorOf({ numPersistMemTokens: -1 })).toBe("option 'numPersistMemTokens' must be a whole number >= 0, got -1");
    expect(errorOf({ visionDropout: 1 })).toBe("option 'visionDropout' must be a rate in [0, 1), got 1");
    expect(errorOf({ numTokens: 300 })).toBe("option 'numTokens' must be 256 (the byte tokenizer), got 300");
    expect(errorOf({ dimHead: 7 })).toBe("option 'dimHead' must be even (rotary embeddings rotate pairs), got 7");
    expect(errorOf({ dimHead: 0 })).toBe("option 'dimHead' must be a whole number >= 1, got 0");
    expect(errorOf({ imageStd: [1, 0, 1] })).toBe("option 'imageStd' must be three positive numbers, got [1,0,1]");
    expect(errorOf({ imageStd: 'x' })).toBe("option 'imageStd' must be three numbers, got \"x\"");
    expect(errorOf({ imageTokenPool: 'median' })).toBe("option 'imageTokenPool' must be 'mean' or 'max', got \"median\"");
    expect(errorOf({ neuralMemoryModel: 'rnn' })).toBe("option 'neuralMemoryModel' must be 'mlp', 'linear', 'swiglu' or a memory network object, got \"rnn\"");
    expect(errorOf({ neuralMemoryKwargs: { maxGradNorm: -1 } })).toBe("option 'neuralMemoryKwargs.maxGradNorm' must be a number >= 0 (0 = off), got -1");
    expect(errorOf({ neuralMemoryKwargs: { convKernel: 1.5 } })).toBe("option 'neuralMemoryKwargs.convKernel' must be a whole number >= 0 (0 = none), got 1.5");
  });

  test('the error names the option at fault, as the config spells it, for a job error to name its field', () => {
    const optionOf = (options: Record<string, unknown>) => {
      try {
        resolveConfig(options as MultimodalMACOptions);
      } catch (error) {
        return (error as ConfigError).option;
      }
    };
    expect(optionOf({ imageSize: 0 })).toBe('imageSize');
    expect(optionOf({ neuralMemoryKwargs: { maxGradNorm: -1 } })).toBe('neuralMemoryKwargs.maxGradNorm');
    expect(optionOf({ wings: 2 })).toBe('wings');
    expect(optionOf({ ...TINY, patchSize: 5 })).toBe('patchSize');
  });

  test('inconsistent values name the option', () => {
    expect(errorOf({ ...TINY, patchSize: 5 })).toBe("option 'patchSize' must be a divisor of imageSize (16), got 5");
    expect(errorOf({ visionHeads: 5 })).toBe("option 'visionHeads' must be a divisor of visionDim (768), got 5");
    expect(errorOf({ ...TINY, neuralMemoryLayers: [3] })).toBe("option 'neuralMemoryLayers' must be layer numbers from 1 to depth (2), got [3]");
    expect(errorOf({ ...TINY, neuralMemoryBatchSize: 5 })).toBe("option 'neuralMemoryBatchSize' must be a multiple of neuralMemorySegmentLen (6), got 5");
    expect(errorOf({ ...TINY, neuralMemResetAtImages: true, neuralMemorySegmentLen: 4, neuralMemoryBatchSize: 4 })).toStartWith(
      "option 'neuralMemoryBatchSize' must be a divisor of segmentLen + numLongtermMemTokens (6) with neuralMemResetAtImages");
    // 3 regions are a 1 x 3 row of cells: wider than TINY's 2 x 2 patch grid.
    expect(errorOf({ ...TINY, numImageTokens: 3 })).toBe("option 'numImageTokens' must be a number of regions that fits the 2 x 2 patch grid, got 3");
    expect(errorOf({ ...TINY, numImageTokens: 4, segmentLen: 3 })).toStartWith("option 'numImageTokens' must be at most segmentLen (3)");
  });
});

describe('checkpoints', () => {
  test('every bundled checkpoint\'s options resolve, and survive config.json unchanged', async () => {
    const files = [...new Glob('models/**/config.json').scanSync(ROOT)];
    expect(files.length).toBeGreaterThanOrEqual(5);
    for (const file of files) {
      const { model } = JSON.parse(await readFile(join(ROOT, file), 'utf8'));
      const config = resolveConfig(model);
      expect(config).toMatchObject(model);
      expect(resolveConfig(JSON.parse(JSON.stringify(serializableConfig(config))))).toEqual(config);
    }
  });

  test('a custom memory network is accepted, but cannot be saved', () => {
    const network = { kind: 'mine', weightSpecs: () => [], forward: (_: unknown, x: unknown) => x, trace: () => { throw new Error('unused'); } };
    const config = resolveConfig({ ...TINY, neuralMemoryModel: network as never });
    expect(config.neuralMemoryModel).toBe(network as never);
    expect(() => serializableConfig(config)).toThrow("neuralMemoryModel is a custom object ('mine') cannot be saved");
  });
});

describe('sizes', () => {
  test('a positive number is finite, and the feed-forward is at least one unit wide', () => {
    expect(errorOf({ ffMult: Infinity })).toBe("option 'ffMult' must be a positive number, got Infinity (not a finite number)");
    expect(errorOf({ neuralMemoryKwargs: { maxLr: Infinity } })).toBe("option 'neuralMemoryKwargs.maxLr' must be a positive number, got Infinity (not a finite number)");
    expect(errorOf({ textDim: 32, ffMult: 0.01 })).toBe("option 'ffMult' must be large enough that the feed-forward, round(ffMult x textDim) wide, has a unit (textDim 32), got 0.01");
    expect(resolveConfig({ textDim: 32, ffMult: 1 / 32 }).ffMult).toBe(1 / 32);
  });
});

describe('images', () => {
  test('are read as RGB, so inChannels takes only 3', () => {
    expect(resolveConfig({ inChannels: 3 }).inChannels).toBe(3);
    expect(errorOf({ inChannels: 1 })).toBe("option 'inChannels' must be 3 (images are read as RGB), got 1");
  });
});

describe('the reference\'s memory options (titans-pytorch NeuralMemory), in camelCase', () => {
  test('those that are ours under another name are accepted as aliases, checked under the name given', () => {
    const c = resolveConfig({ neuralMemoryKwargs: { qkRmsnorm: false, defaultStepTransformMaxLr: 0.3 } });
    expect(c.neuralMemoryKwargs).toMatchObject({ qkNorm: false, maxLr: 0.3 });
    expect(c.neuralMemoryKwargs).not.toHaveProperty('qkRmsnorm');
    expect(errorOf({ neuralMemoryKwargs: { defaultStepTransformMaxLr: -1 } })).toBe("option 'neuralMemoryKwargs.defaultStepTransformMaxLr' must be a positive number, got -1");
    expect(errorOf({ neuralMemoryKwargs: { qkRmsnorm: true, qkNorm: false } })).toStartWith(
      "options 'neuralMemoryKwargs.qkRmsnorm' and 'neuralMemoryKwargs.qkNorm' are one option under two names");
  });

  test('those whose feature is not implemented take only their default, and say so', () => {
    const neutral = { momentumOrder: 1, learnedMomentumCombine: false, attnPoolChunks: false, perParameterLrModulation: false, initAdaptiveStepBias: null, useAcceleratedScan: false };
    expect(resolveConfig({ neuralMemoryKwargs: neutral })).toEqual(resolveConfig());
    expect(errorOf({ neuralMemoryKwargs: { momentumOrder: 2 } })).toBe("option 'neuralMemoryKwargs.momentumOrder' = 2 is not supported (only 1)");
    expect(errorOf({ neuralMemoryKwargs: { attnPoolChunks: true } })).toBe("option 'neuralMemoryKwargs.attnPoolChunks' = true is not supported (only false)");
  });

  test('an alias in changes replaces its option in the options changed', () => {
    const changed = changedOptions({ neuralMemoryKwargs: { maxLr: 0.1 } }, { neuralMemoryKwargs: { defaultStepTransformMaxLr: 0.5 } });
    expect(resolveConfig(changed).neuralMemoryKwargs.maxLr).toBe(0.5);
  });
});
