/**
 * The command line, replacing the original's train_multimodal_mac.py and inference_multimodal_mac.py:
 *   bun run train [--config config.json | --preset NAME] [--out DIR] [--steps N] [--vision-steps N] [--workers N] [--resume DIR]
 *   bun run infer --checkpoint DIR --image FILE [--prompt "This is an image of "] [--max_length 100] [--temperature 0.8]
 *   bun run serve
 * Without a config, train uses synthetic shape scenes, as the original trained on generated data.
 * A config is either this project's job body ({model, data, train}) or the original's flat
 * {text_data_path, image_dir, annotations_file}; its paths are relative to its own folder.
 */
import { constants as fsConstants, existsSync, readdirSync, statSync } from 'node:fs';
import { access, readFile } from 'node:fs/promises';
import { constants as osConstants } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import cliProgress from 'cli-progress';
import { selectBackend } from './backend/select.ts';
import { loadServerConfig } from './http/settings.ts';
import { CheckpointError } from '../model/checkpoint.ts';
import { MAX_SEED } from '../model/random.ts';
import { loadCheckpoint } from './multimodal-mac.ts';
import { serveUntilStopped } from './http/server.ts';
import { DEFAULT_PROMPT, promptWithImages } from './inference/generation.ts';
import { checkpointFolders, pruneCheckpoints } from './training/checkpoint-folders.ts';
import { finiteNumber, UsageError, wholeNumber } from './flags.ts';
import { PRESETS } from './training/presets.ts';
import { resolveJobPaths } from './training/resolve.ts';
import { runTraining } from './training/run.ts';
import { parseJobSpec } from './training/spec.ts';
import type { PretrainingProgress, TrainingEvent } from './training/events.ts';

const COMMAND_USAGE: Record<string, string> = {
  train: `bun run train [--config config.json | --preset ${Object.keys(PRESETS).join('|')}] [--out DIR] [--steps N] [--vision-steps N] [--workers N] [--resume CHECKPOINT]`,
  infer: 'bun run infer --checkpoint DIR --image FILE [--prompt TEXT] [--max_length N] [--temperature T] [--top_k K] [--top_p P] [--seed S]',
  serve: 'bun run serve',
};
const USAGE = `usage:\n${Object.values(COMMAND_USAGE).map((line) => `  ${line}`).join('\n')}`;
const HELP = ['--help', '-h'];

async function train(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      config: { type: 'string' },
      preset: { type: 'string' },
      out: { type: 'string' },
      steps: { type: 'string' },
      'vision-steps': { type: 'string' },
      workers: { type: 'string' },
      resume: { type: 'string' },
    },
  });
  if (values.config && values.preset) throw new UsageError('give --config or --preset, not both');
  const base = values.config ? dirname(resolve(values.config)) : process.cwd();
  const body = values.config ? await readConfig(values.config) : values.preset ? preset(values.preset) : { data: { type: 'synthetic-shapes' } };
  const train = (body.train ?? {}) as Record<string, unknown>;
  if (values.workers !== undefined) train.workers = wholeNumber('--workers', values.workers);
  if (values['vision-steps'] !== undefined) {
    if (typeof body.vision_pretraining !== 'object' || body.vision_pretraining === null) throw new UsageError('--vision-steps needs a recipe with vision_pretraining');
    body.vision_pretraining = shortened(body.vision_pretraining as Record<string, unknown>, wholeNumber('--vision-steps', values['vision-steps']));
  }
  const resumeFrom = values.resume === undefined ? undefined : resolve(checkpointArgument(values.resume, '--resume'));
  const spec = await resolveJobPaths(parseJobSpec({ ...body, train: values.steps === undefined ? train : shortened(train, wholeNumber('--steps', values.steps)) }), base, [], resumeFrom);
  const outDir = resolve(values.out ?? (values.preset ? join('checkpoints', values.preset) : 'checkpoints'));
  await requireWritable(outDir);
  await selectBackend({ matmulPrecision: 'float32' });
  const report = process.stdout.isTTY ? progressBar() : plainLines();
  // The first Ctrl-C (or SIGTERM, SIGHUP): finish the current step, save it and stop; a second exits at once.
  let stoppedBy: NodeJS.Signals | undefined;
  const stop = (signal: NodeJS.Signals) => {
    if (stoppedBy) process.exit(128 + osConstants.signals[signal]);
    stoppedBy = signal;
  };
  for (const signal of STOP_SIGNALS) process.on(signal, stop);
  // Each checkpoint, once reported, leaves the train.keep_checkpoints latest, as a job's record does.
  let pruning = Promise.resolve();
  const onEvent = (event: TrainingEvent) => {
    report.event(event);
    if (event.type === 'checkpoint') {
      pruning = pruning.then(() => pruneCheckpoints(event.path, spec.train.keep_checkpoints)).catch((error: Error) => console.error(`the checkpoints before ${event.path} could not be removed: ${error.message}`));
    }
  };
  const result = await runTraining(spec, { outDir, resumeFrom, onEvent, shouldStop: () => stoppedBy !== undefined });
  await pruning;
  report.stop();
  console.log(`${result.status} at step ${result.step}${result.checkpoint ? `; checkpoint ${result.checkpoint}` : ''}`);
  // A run that a signal stopped did not finish: `train && infer` must not go on as if it had.
  if (stoppedBy && result.status === 'cancelled') process.exitCode = 128 + osConstants.signals[stoppedBy];
}

const STOP_SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

/**
 * --out is checked before the run: a folder that cannot take a checkpoint would lose the run at its
 * first save. It is not made here (a run refused later leaves nothing): its nearest folder that exists
 * must be a writable folder.
 */
async function requireWritable(dir: string): Promise<void> {
  let existing = dir;
  while (!existsSync(existing) && dirname(existing) !== existing) existing = dirname(existing);
  const problem = !statSync(existing).isDirectory() ? `${existing} is a file` : await access(existing, fsConstants.W_OK).then(() => undefined, (error: NodeJS.ErrnoException) => error.code ?? error.message);
  if (problem) throw new UsageError(`--out ${dir}: cannot write checkpoints there (${problem})`);
}

/** A shorter run of a recipe's stage keeps its other settings; only a warmup longer than the run is cut. */
function shortened(stage: Record<string, unknown>, steps: number): Record<string, unknown> {
  return { ...stage, steps, ...(typeof stage.warmup === 'number' && { warmup: Math.min(stage.warmup, steps) }) };
}

function preset(name: string): Record<string, unknown> {
  const body = PRESETS[name];
  if (!body) throw new UsageError(`unknown --preset '${name}' (known: ${Object.keys(PRESETS).join(', ')})`);
  return structuredClone(body);
}

/** This project's job body as is; the original's flat format becomes an annotations (or text) job. */
async function readConfig(path: string): Promise<Record<string, unknown>> {
  const text = await readFile(path, 'utf8').catch((error: NodeJS.ErrnoException) => {
    throw new UsageError(`cannot read --config ${path}: ${error.code === 'ENOENT' ? 'no such file' : error.message}`);
  });
  let config: unknown;
  try {
    config = JSON.parse(text);
  } catch (error) {
    throw new UsageError(`${path} is not valid JSON: ${(error as Error).message}`);
  }
  if (typeof config !== 'object' || config === null || Array.isArray(config)) throw new UsageError(`${path} must hold a JSON object: a job body ({model, data, train}) or the original's {text_data_path, image_dir, annotations_file}`);
  if (['model', 'base_checkpoint', 'data', 'train'].some((key) => key in config)) return config as Record<string, unknown>;
  const { annotations_file, image_dir, text_data_path, ...rest } = config as Record<string, unknown>;
  if (Object.keys(rest).length > 0) throw new UsageError(`${path}: unknown field '${Object.keys(rest)[0]}'`);
  if (image_dir !== undefined && annotations_file === undefined) throw new UsageError(`${path}: image_dir needs annotations_file, which says which caption goes with each image`);
  if (annotations_file !== undefined) return { data: { type: 'annotations', annotations_file, image_dir, text_data_path } };
  if (text_data_path !== undefined) return { data: { type: 'text', text_data_path } };
  return { data: { type: 'synthetic-shapes' } };
}

interface Reporter {
  event: (event: TrainingEvent) => void;
  stop: () => void;
}

function progressBar(): Reporter {
  // A MultiBar, one bar a stage: it can print lines (eval, checkpoint) above the bars without breaking them.
  const bars = new cliProgress.MultiBar(
    { format: '{stage} {value}/{total} [{bar}] loss {loss} | {sps} samples/s | ETA {remaining}', hideCursor: true },
    cliProgress.Presets.shades_classic,
  );
  const stages = new Map<string, cliProgress.SingleBar>();
  const update = (stage: string, p: PretrainingProgress) => {
    if (!stages.has(stage)) stages.set(stage, bars.create(p.steps, 0));
    stages.get(stage)!.update(p.step, { stage, loss: p.loss.toFixed(4), sps: p.samples_per_sec.toFixed(1), remaining: duration(p.eta_s) });
  };
  return {
    event: (event) => {
      if (event.type === 'progress') update('step', event);
      else if (event.type === 'pretraining') update('vision step', event);
      else bars.log(`${describe(event)}\n`);
    },
    stop: () => bars.stop(),
  };
}

function plainLines(): Reporter {
  return { event: (event) => console.log(describe(event)), stop: () => {} };
}

function describe(event: TrainingEvent): string {
  if (event.type === 'eval') return `step ${event.step} eval_loss ${event.eval_loss.toFixed(4)}`;
  if (event.type === 'checkpoint') return `step ${event.step} checkpoint ${event.path}`;
  if (event.type === 'pretraining_eval') {
    return `vision step ${event.step} accuracy ${Object.entries(event.accuracy).map(([name, share]) => `${name} ${share.toFixed(3)}`).join(' ')}`;
  }
  const p: PretrainingProgress = event;
  return `${event.type === 'pretraining' ? 'vision step' : 'step'} ${p.step}/${p.steps} loss ${p.loss.toFixed(4)} lr ${p.lr.toExponential(2)} ${p.samples_per_sec.toFixed(1)} samples/s ETA ${duration(p.eta_s)}`;
}

function duration(seconds: number): string {
  const s = Math.round(seconds);
  return s >= 3600 ? `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m` : s >= 60 ? `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s` : `${s}s`;
}

async function infer(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      checkpoint: { type: 'string' },
      image: { type: 'string' },
      prompt: { type: 'string', default: DEFAULT_PROMPT },
      max_length: { type: 'string', default: '100' },
      temperature: { type: 'string', default: '0.8' },
      top_k: { type: 'string' },
      top_p: { type: 'string' },
      seed: { type: 'string' },
    },
  });
  if (!values.checkpoint || !values.image) throw new UsageError('infer needs --checkpoint DIR and --image FILE');
  // Read before the model loads, so that a mistyped flag fails at once.
  const sampling = {
    maxLength: wholeNumber('--max_length', values.max_length!, 1),
    temperature: finiteNumber('--temperature', values.temperature!, 0),
    topK: values.top_k === undefined ? undefined : wholeNumber('--top_k', values.top_k),
    topP: values.top_p === undefined ? undefined : finiteNumber('--top_p', values.top_p, 0, 1),
    seed: values.seed === undefined ? undefined : wholeNumber('--seed', values.seed, 0, MAX_SEED),
  };
  await selectBackend();
  const model = await loadCheckpoint(checkpointArgument(values.checkpoint, '--checkpoint'));
  const image = await model.imageProcessor.preprocess(values.image);
  // As the original: the prompt, then the image placeholder; the generated text follows the image.
  const written = promptWithImages(values.prompt!, 1);
  const { tokens: prompt, imagePositions } = model.withImageSlots(written.prompt, written.imagePositions);
  const tokens = model.generate(prompt, { images: [image], imagePositions, ...sampling });
  try {
    for await (const { text } of tokens) if (text) process.stdout.write(text);
    process.stdout.write('\n');
  } finally {
    image.dispose();
    model.dispose();
  }
}

async function serve(argv: string[]): Promise<void> {
  if (argv.length > 0) throw new UsageError(`serve takes no arguments, got '${argv[0]}': its settings come from the environment (PORT, HOST, MODEL_DIR, ...; see docs/api.md)`);
  await serveUntilStopped(loadServerConfig());
}

/**
 * The checkpoint folder a flag names: `dir` itself, unless it is a training run's out folder, which
 * holds no config.json but its checkpoints (step-NNNNNN) and is refused naming the newest of them.
 */
function checkpointArgument(dir: string, flag: string): string {
  if (existsSync(join(dir, 'config.json')) || !existsSync(dir)) return dir;
  const steps = checkpointFolders(readdirSync(dir));
  if (steps.length === 0) return dir;
  throw new CheckpointError(`${dir} is a training run's folder, not a checkpoint: give one of its checkpoints, such as ${flag} ${join(dir, steps.at(-1)!)}`);
}

const COMMANDS: Record<string, (argv: string[]) => Promise<void>> = { train, infer, serve };

if (import.meta.main) {
  const [command, ...argv] = process.argv.slice(2);
  // Asked for, help goes to stdout and is no failure; a command's help is its own line.
  if (command !== undefined && HELP.includes(command)) {
    console.log(USAGE);
    process.exit(0);
  }
  const run = command === undefined ? undefined : COMMANDS[command];
  if (!run) {
    console.error(USAGE);
    process.exit(2);
  }
  if (argv.some((arg) => HELP.includes(arg))) {
    console.log(`usage: ${COMMAND_USAGE[command!]}`);
    process.exit(0);
  }
  try {
    await run(argv);
  } catch (error) {
    // Bad input, and a disk that is full or will not be written, are a one-line message; anything else keeps its stack for a bug report.
    const expected = error instanceof UsageError || error instanceof TypeError && (error as { code?: string }).code?.startsWith('ERR_PARSE_ARGS');
    const known = expected || ['SpecError', 'DataPathError', 'DataFormatError', 'CheckpointError', 'ImageError', 'ConfigError', 'InvalidSamplingOptionError', 'GenerationError', 'ResumeError', 'SettingsError'].includes((error as Error).name);
    const disk = ['ENOSPC', 'EDQUOT', 'EROFS', 'EACCES', 'EPERM'].includes((error as NodeJS.ErrnoException).code ?? '');
    const resumable = command === 'train' ? '\nthe checkpoints written before it are whole: --resume the latest once there is room' : '';
    if (disk) console.error(`error: ${(error as Error).message}${resumable}`);
    else console.error(known ? `error: ${(error as Error).message}` : error);
    if (expected) console.error(USAGE);
    process.exit(1);
  }
}
