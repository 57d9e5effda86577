/** The evaluation's results as text tables: one model, or two side by side for the ablation. */
import type { ModelReport, PasskeyReport } from './evaluate.ts';
import type { PasskeyResult } from './passkey-eval.ts';
import type { CaptionScores, Tally } from './scoring.ts';

type Row = [label: string, ...cells: string[]];

/** One model: caption scores, then passkey scores when measured. */
export function formatReport(report: ModelReport): string {
  return formatColumns([report], [describeModel(report)]);
}

/** The memory model beside the attention-only one: captions, then the passkey pair. */
export function formatAblation(memory: ModelReport, attentionOnly: ModelReport, passkeyMemory: PasskeyReport, passkeyAttentionOnly: PasskeyReport): string {
  const pair = [passkeyMemory, passkeyAttentionOnly];
  return [
    formatColumns([memory, attentionOnly], [`memory: ${describeModel(memory)}`, `attention only: ${describeModel(attentionOnly)}`]),
    '',
    `passkey, memory: ${describeModel(passkeyMemory)}`,
    `passkey, attention only: ${describeModel(passkeyAttentionOnly)}`,
    '',
    ...table([['', 'memory', 'attention only'], ...passkeyRows(pair.map((r) => r.passkey))]),
    ...firstFailure(pair.flatMap((r) => r.passkey.trials.map((t) => t.error))),
  ].join('\n');
}

function formatColumns(reports: ModelReport[], titles: string[]): string {
  const first = reports[0]!;
  const { captions } = first;
  const scenes = new Set(captions.items.map((i) => i.scene)).size;
  const headers: Row = ['', ...reports.map((_, i) => (reports.length === 1 ? 'accuracy' : i === 0 ? 'memory' : 'attention only'))];
  const rows: Row[] = [
    ['exact match', ...reports.map((r) => cell(r.captions.scores.exact))],
    ...groupRows(reports, (scores) => scores.byVariant, (variant) => `  ${variant}`),
    ['  one object', ...reports.map((r) => cell(r.captions.scores.byObjects.one))],
    ['  two objects', ...reports.map((r) => cell(r.captions.scores.byObjects.two))],
    ['scenes exact in every variant', ...reports.map((r) => cell(r.captions.scores.byScene.everyVariant))],
    ['scenes exact in some variants only', ...reports.map((r) => String(r.captions.scores.byScene.someVariants))],
    ['shape', ...reports.map((r) => cell(r.captions.scores.attributes.shape))],
    ...groupRows(reports, (scores) => scores.attributes.shapeBySize, (size) => `  ${size} objects`),
    ['color', ...reports.map((r) => cell(r.captions.scores.attributes.color))],
    ['size', ...reports.map((r) => cell(r.captions.scores.attributes.size))],
    ['relation (two objects)', ...reports.map((r) => cell(r.captions.scores.attributes.relation))],
    ['second object (two objects)', ...reports.map((r) => cell(r.captions.scores.attributes.secondObject))],
    ['unparseable captions', ...reports.map((r) => String(r.captions.scores.unparseable))],
    ['failed requests', ...reports.map((r) => String(r.captions.scores.failed))],
    ['ms per image', ...reports.map((r) => r.captions.msPerImage.toFixed(0))],
  ];
  if (first.passkey) rows.push(...passkeyRows(reports.map((r) => r.passkey!)));
  const lines = [
    ...titles,
    `${scenes} validation scenes x ${Object.keys(captions.scores.byVariant).length} variants = ${captions.items.length} captions per model, greedy${captions.longPrompt > 0 ? `, each prompt after ${captions.longPrompt} bytes of other text` : ''}`,
    '',
    ...table([headers, ...rows]),
  ];
  lines.push(...firstFailure(reports.flatMap((r) => [...r.captions.items.map((i) => i.error), ...(r.passkey?.trials.map((t) => t.error) ?? [])])));
  return lines.join('\n');
}

/** A row per filler length, a column per model. */
function passkeyRows(results: PasskeyResult[]): Row[] {
  return results[0]!.byLength.map((length, i) => [
    `passkey, ${length.segments} segments`,
    ...results.map((r) => `${cell(r.byLength[i]!.tally)} (${r.byLength[i]!.fillerTokens} tok)`),
  ]);
}

function firstFailure(errors: (string | undefined)[]): string[] {
  const failures = errors.filter((e) => e !== undefined);
  return failures.length > 0 ? ['', `first failure of ${failures.length}: ${failures[0]}`] : [];
}

export function describeModel({ model }: { model: ModelReport['model'] }): string {
  const memory = model.neuralMemoryLayers.length === 0 ? 'no neural memory' : `neural memory on layer(s) ${model.neuralMemoryLayers.join(', ')}`;
  return `'${model.id}' (${model.checkpoint ?? 'no checkpoint'}; ${memory}; segmentLen ${model.segmentLen}${model.untrained ? '; UNTRAINED' : ''})`;
}

/** A row per key of a grouped tally (a variant, a size), keys in the first report's order. */
function groupRows(reports: ModelReport[], group: (scores: CaptionScores) => Record<string, Tally>, label: (key: string) => string): Row[] {
  return Object.keys(group(reports[0]!.captions.scores)).map((key) => [label(key), ...reports.map((r) => cell(group(r.captions.scores)[key]!))]);
}

function cell(t: Tally): string {
  return t.total === 0 ? '-' : `${(100 * t.accuracy).toFixed(1)}% (${t.correct}/${t.total})`;
}

function table(rows: Row[]): string[] {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((row) => row[c]?.length ?? 0)));
  return rows.map((row) => row.map((text, c) => (c === 0 ? text.padEnd(widths[c]!) : text.padStart(widths[c]!))).join('   ').trimEnd());
}
