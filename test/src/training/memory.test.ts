import { describe, expect, test } from 'bun:test';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { resolveConfig } from '../../../model/config.ts';
import { MultimodalMACNetwork } from '../../../model/multimodal.ts';
import { SMALL_MODEL } from '../../../src/training/presets.ts';
import { estimateJobMemory, parameterCounts } from '../../../src/training/memory.ts';
import { parseJobSpec } from '../../../src/training/spec.ts';
import { TINY_MODEL, tinyJob } from './helpers.ts';

const ROOT = join(import.meta.dir, '../../..');
const bundled = async (name: string) => JSON.parse(await readFile(join(ROOT, 'models', name, 'config.json'), 'utf8')).model;

describe('the job memory estimate', () => {
  test('counts the parameters exactly as model/ builds them, for every kind of model', async () => {
    const models: Record<string, object> = {
      tiny: TINY_MODEL,
      small: SMALL_MODEL,
      default: await bundled('default'),
      passkey: await bundled('passkey'),
      swiglu: { ...SMALL_MODEL, neuralMemoryModel: 'swiglu', neuralMemoryLayers: [2], numImageTokens: 4, visionStem: [8, 16] },
      linear: { ...SMALL_MODEL, neuralMemoryModel: 'linear', numPersistMemTokens: 0, numLongtermMemTokens: 0, neuralMemoryKwargs: { heads: 2, dimHead: 16, convKernel: 3 } },
      residuals: { ...SMALL_MODEL, neuralMemWeightResidual: true, acceptValueResidual: true, neuralMemoryKwargs: { memModelNormAddResidual: false } },
    };
    for (const options of Object.values(models)) {
      const model = new MultimodalMACNetwork(options);
      const counts = parameterCounts(resolveConfig(options));
      expect(counts.vision + counts.projection + counts.text).toBe(model.parameterCount());
      model.dispose();
    }
  });

  test('grows with the batch and the workers; a frozen encoder needs no optimizer state', () => {
    const small = estimateJobMemory(parseJobSpec(tinyJob({ batch_size: 2 })), TINY_MODEL);
    const large = estimateJobMemory(parseJobSpec(tinyJob({ batch_size: 64 })), TINY_MODEL);
    expect(large.activationBytes).toBeGreaterThan(20 * small.activationBytes);
    expect(large.parameterBytes).toBe(small.parameterBytes);
    expect(small.parameterBytes).toBe(16 * small.parameters);
    // Set after parsing, which caps workers at this machine's cores.
    const spec = parseJobSpec(tinyJob({ batch_size: 64 }));
    const twoWorkers = estimateJobMemory({ ...spec, train: { ...spec.train, workers: 2 } }, TINY_MODEL);
    expect(twoWorkers.totalBytes).toBeGreaterThan(large.totalBytes);
    const frozen = estimateJobMemory(parseJobSpec(tinyJob({ freeze_vision: true })), TINY_MODEL);
    expect(frozen.trainedParameters).toBeLessThan(frozen.parameters);
  });
});
