/**
 * `bun run bench:train`: training throughput (samples/s) with 1 and with N data-parallel workers on
 * the same job, and their ratio. The goal: with 2 workers on 2 cores, at least 1.7x.
 *   bun bench/train.ts [--workers 2] [--steps 16] [--batch 32] [--preset shapes | --original]
 * With --preset, the model, data and batch of that recipe's caption stage (its encoder frozen, as
 * after its vision pretraining) instead of SMALL_MODEL; with --original, the library's default
 * configuration, the original extension's (text 384 x 8, ViT-B/16 at 224 px), all of it trained.
 * With --workers 1 (a GPU's one device), the one-worker rate alone.
 * The rate is the batch over the median step time; the first steps (compilation, warm-up) are left out.
 * On webgpu, one worker also gives the shaders a step launches: a GPU pays for each launch, whatever
 * its size, and the step time over that count is what one costs at most. --software-webgpu counts
 * them on Mesa's software renderer where there is no GPU: the launches are a GPU's, the timings are not.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { runTraining } from '../src/training/run.ts';
import { SMALL_MODEL } from '../src/training/presets.ts';
import { PRESETS } from '../src/training/presets.ts';
import { parseJobSpec } from '../src/training/spec.ts';
import { shaderLaunches, startBenchBackend, WEBGPU_WITHOUT_GPU_FLAGS } from './webgpu.ts';

const { values } = parseArgs({ options: { workers: { type: 'string', default: '2' }, steps: { type: 'string', default: '16' }, batch: { type: 'string' }, preset: { type: 'string' }, original: { type: 'boolean', default: false }, ...WEBGPU_WITHOUT_GPU_FLAGS } });
const recipe = values.preset === undefined ? undefined : (PRESETS[values.preset] as { model: object; data: object; vision_pretraining?: object; train: { batch_size: number } } | undefined);
if (values.preset !== undefined && !recipe) throw new Error(`unknown --preset '${values.preset}' (known: ${Object.keys(PRESETS).join(', ')})`);
if (recipe && values.original) throw new Error('--preset and --original name two models; give one');
const workers = Number(values.workers);
const steps = Number(values.steps);
const batch = Number(values.batch ?? recipe?.train.batch_size ?? 32);
const WARMUP_STEPS = 2;
// A step's time is the interval between two ends after the warm-up.
if (!Number.isInteger(steps) || steps < WARMUP_STEPS + 2) throw new Error(`--steps must be a whole number of at least ${WARMUP_STEPS + 2}: the first ${WARMUP_STEPS} are not timed, and a step's time is the interval between two ends after them`);

// Dawn's null device reads back no numbers: every update would be skipped as not finite.
if (values['null-webgpu']) throw new Error("--null-webgpu times inference only (bench/model.ts): the null device's reads are not numbers, so a training step would skip its update");
if (values['software-webgpu'] && workers !== 1) throw new Error('--software-webgpu counts the launches of one worker: give --workers 1');
console.log(`${(await startBenchBackend(values)).line}; ${availableParallelism()} cores`);
const modelName = values.preset ? `the ${values.preset} preset's caption stage` : values.original ? "the original's configuration" : 'SMALL_MODEL';
console.log(`model: ${modelName}; synthetic shapes; batch ${batch}; ${steps} steps, the first ${WARMUP_STEPS} not timed`);

/** The median of what a step takes, by the values recorded at each step's end; the first steps left out. */
function medianStep(ends: number[]): number {
  const steps = ends.slice(WARMUP_STEPS).slice(1).map((end, i) => end - ends[WARMUP_STEPS + i]!).sort((a, b) => a - b);
  return steps[Math.floor(steps.length / 2)]!;
}

async function measure(workerCount: number): Promise<{ samplesPerSecond: number; launchesPerStep?: number }> {
  const outDir = await mkdtemp(join(tmpdir(), 'bench-train-'));
  const train = { steps, batch_size: batch, workers: workerCount };
  const spec = parseJobSpec(recipe
    ? { model: recipe.model, data: { ...recipe.data, val_size: 0 }, train: { ...train, freeze_vision: recipe.vision_pretraining !== undefined } }
    // An empty model spec is the library's defaults.
    : { model: values.original ? {} : SMALL_MODEL, data: { type: 'synthetic-shapes', val_size: 0 }, train });
  // Workers run their own backends, in their own threads: only one worker's launches are counted.
  const counting = workerCount === 1 && shaderLaunches() !== null;
  const times: number[] = [];
  const launches: number[] = [];
  await runTraining(spec, {
    outDir,
    onEvent: (event) => {
      if (event.type !== 'progress') return;
      times.push(performance.now());
      if (counting) launches.push(shaderLaunches()!);
    },
  });
  await rm(outDir, { recursive: true, force: true });
  // The median step, not the mean: robust to a neighbour's burst of load on a shared machine.
  return { samplesPerSecond: (batch * 1000) / medianStep(times), launchesPerStep: counting ? medianStep(launches) : undefined };
}

const one = await measure(1);
console.log(`1 worker:  ${one.samplesPerSecond.toFixed(2)} samples/s`);
if (one.launchesPerStep !== undefined) {
  const microseconds = (batch * 1e6) / one.samplesPerSecond / one.launchesPerStep;
  console.log(`shader launches a step: ${one.launchesPerStep} (the median step over them: ${microseconds.toFixed(0)} us a launch)`);
}
if (workers === 1) process.exit(0);
const many = await measure(workers);
console.log(`${workers} workers: ${many.samplesPerSecond.toFixed(2)} samples/s`);
console.log(`speed-up: ${(many.samplesPerSecond / one.samplesPerSecond).toFixed(2)}x`);
