/**
 * `bun run eval` as a function: writes the validation images, evaluates one model (or, for the
 * ablation, the memory model and the attention-only one on the same files, then the passkey pair on
 * the passkey task), and returns the report as text and as JSON. With --needle, the passkey pair on
 * needle in a haystack instead.
 */
import { access, constants, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import type { EvalArgs, NeedleArgs } from './args.ts';
import { evaluateNeedleServer, evaluatePasskeyServer, evaluateServer, type EvalSettings, type ModelReport, type NeedleReport, type PasskeyReport } from './evaluate.ts';
import { requireCheckpoint, withLocalServer } from './local-server.ts';
import type { NeedleCell } from './needle-eval.ts';
import { formatNeedle } from './needle-report.ts';
import { formatAblation, formatReport } from './report.ts';
import { writeValidationImages, type ValidationImage } from './validation-images.ts';
import { VARIANTS } from './variants.ts';

/** The longest caption is 63 bytes; the rest shows a model that runs on past its period. */
const CAPTION_MAX_TOKENS = 80;

export interface EvalOutput {
  text: string;
  json: unknown;
  /** Requests that failed: each is scored wrong and listed in the report, and the command exits 1. */
  failed: number;
}

export async function runEval(args: EvalArgs, log: (line: string) => void = (line) => console.error(line)): Promise<EvalOutput> {
  // Before minutes of work, not after: the report goes there last.
  if (args.json) await requireWritableFolder(args.json);
  if (args.needle) return runNeedle(args.needle, args, log);
  const models = args.attentionOnly === undefined ? [args.model] : [args.model, args.attentionOnly];
  const passkeyModels = args.passkeyModels ? [args.passkeyModels.memory, args.passkeyModels.attentionOnly] : [];
  const passkeyTask = { segments: args.passkeySegments, keys: args.passkeyKeys };
  // Before minutes of rendering, not after.
  if (args.url === undefined) [...models, ...passkeyModels].forEach(requireCheckpoint);
  const dir = args.out ?? (await mkdtemp(join(tmpdir(), 'titans-eval-')));
  try {
    await mkdir(dir, { recursive: true });
    log(`writing ${args.count} validation scenes x ${VARIANTS.length} variants to ${dir}`);
    const images = await writeValidationImages(args.count, args.seed, dir);
    const settings: EvalSettings = {
      seed: args.seed,
      prompt: args.prompt,
      longPrompt: args.longPrompt,
      maxTokens: CAPTION_MAX_TOKENS,
      concurrency: args.concurrency,
      passkey: args.passkey ? passkeyTask : null,
      onProgress: progressLogger(log),
    };
    const reports: ModelReport[] = [];
    for (const model of models) reports.push(await evaluateCheckpoint(model, args.url, images, settings, log));
    const passkeySettings = { seed: args.seed, concurrency: args.concurrency, passkey: passkeyTask };
    const passkeyReports: PasskeyReport[] = [];
    for (const model of passkeyModels) passkeyReports.push(await served(model, (local) => evaluatePasskeyServer(local, passkeySettings), log));
    const output = reports.length === 1 ? single(reports[0]!) : ablation(reports[0]!, reports[1]!, passkeyReports[0]!, passkeyReports[1]!);
    if (args.json) await writeFile(args.json, JSON.stringify(output.json, null, 2) + '\n');
    return output;
  } finally {
    if (args.out === undefined) await rm(dir, { recursive: true, force: true });
  }
}

/** Each model of the passkey pair on its own server, which accepts the grid's longest prompt. */
async function runNeedle(needle: NeedleArgs, { seed, concurrency, json }: EvalArgs, log: (line: string) => void): Promise<EvalOutput> {
  const { memory, attentionOnly } = needle.models;
  [memory, attentionOnly].forEach(requireCheckpoint);
  const reports: NeedleReport[] = [];
  for (const [name, model] of [['memory', memory], ['attention only', attentionOnly]] as const) {
    const onCell = (cell: NeedleCell, done: number, total: number) =>
      log(`  needle, ${name}: ${done}/${total} cells (${cell.haystack}, ${cell.promptTokens} tokens, depth ${cell.depth}: ${cell.tally.correct}/${cell.tally.total})`);
    const options = { ...needle, seed, concurrency, onCell };
    reports.push(await served(model, (url) => evaluateNeedleServer(url, options), log, Math.max(...needle.lengths)));
  }
  const [memoryReport, attentionOnlyReport] = reports as [NeedleReport, NeedleReport];
  const output = {
    text: formatNeedle(memoryReport, attentionOnlyReport, { ...needle, seed }),
    json: { memory: memoryReport, attention_only: attentionOnlyReport },
    failed: reports.reduce((sum, r) => sum + failedTrials(r.needle), 0),
  };
  if (json) await writeFile(json, JSON.stringify(output.json, null, 2) + '\n');
  return output;
}

function evaluateCheckpoint(model: string, url: string | undefined, images: ValidationImage[], settings: EvalSettings, log: (line: string) => void): Promise<ModelReport> {
  if (url !== undefined) return evaluateServer(url, images, settings);
  // The server in this process accepts the long prompt, whatever its default limit.
  const promptBytes = settings.longPrompt + Buffer.byteLength(settings.prompt);
  return served(model, (local) => evaluateServer(local, images, settings), log, promptBytes);
}

async function requireWritableFolder(file: string): Promise<void> {
  const folder = dirname(resolve(file));
  await access(folder, constants.W_OK).catch(() => {
    throw new Error(`--json ${file}: cannot write to ${folder}`);
  });
}

/** `use(url)` against the checkpoint served in this process, its log lines indented under ours. */
function served<T>(model: string, use: (url: string) => Promise<T>, log: (line: string) => void, promptBytes?: number): Promise<T> {
  log(`starting the server for ${resolve(model)}`);
  return withLocalServer(model, use, (line) => log(`  server: ${line}`), promptBytes);
}

function failedTrials(result: { trials: { error?: string }[] } | undefined): number {
  return result?.trials.filter((t) => t.error !== undefined).length ?? 0;
}

function single(report: ModelReport): EvalOutput {
  return { text: formatReport(report), json: report, failed: report.captions.scores.failed + failedTrials(report.passkey) };
}

function ablation(memory: ModelReport, attentionOnly: ModelReport, passkeyMemory: PasskeyReport, passkeyAttentionOnly: PasskeyReport): EvalOutput {
  return {
    text: formatAblation(memory, attentionOnly, passkeyMemory, passkeyAttentionOnly),
    json: { memory, attention_only: attentionOnly, passkey: { memory: passkeyMemory, attention_only: passkeyAttentionOnly } },
    failed: memory.captions.scores.failed + attentionOnly.captions.scores.failed + failedTrials(passkeyMemory.passkey) + failedTrials(passkeyAttentionOnly.passkey),
  };
}

/** A line at every tenth of the work: a default run takes minutes. */
function progressLogger(log: (line: string) => void): EvalSettings['onProgress'] {
  return (what, done, total) => {
    if (done === total || Math.floor((10 * done) / total) > Math.floor((10 * (done - 1)) / total)) log(`  ${what}: ${done}/${total}`);
  };
}
