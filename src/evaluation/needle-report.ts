/**
 * Needle in a haystack as Markdown, ready for docs/long-context.md: per haystack, the memory model's and the
 * attention-only twin's accuracy in a table of depth (rows) by prompt length (columns), failed
 * requests named under their table.
 */
import type { HaystackKind } from '../data/needle.ts';
import type { NeedleReport } from './evaluate.ts';
import type { NeedleCell, NeedleGrid, NeedleResult } from './needle-eval.ts';
import { describeModel } from './report.ts';
import { tally } from './scoring.ts';

const HAYSTACK_TITLES: Record<HaystackKind, string> = {
  repeated: 'repeated filler (the passkey training filler)',
  sentences: 'varied sentences (never seen in training)',
};
/** Distinct failure messages listed under a table; a model that overflows fails the same way everywhere. */
const MAX_FAILURES_LISTED = 5;

export function formatNeedle(memory: NeedleReport, attentionOnly: NeedleReport, grid: NeedleGrid & { seed: number }): string {
  const models = [
    { title: 'memory', report: memory },
    { title: 'attention only', report: attentionOnly },
  ];
  const lines = [
    '## Needle in a haystack',
    '',
    `The key sentence ("The pass key is <key>. Remember it.") at a depth of the haystack, the question at the end; ` +
      `greedy, exact answer; ${grid.trials} key(s) per cell from the validation split (seed ${grid.seed}); lengths are of the whole prompt, in tokens.`,
    '',
    ...models.map(({ title, report }) => `- ${title}: ${describeModel(report)}`),
  ];
  for (const haystack of grid.haystacks) {
    for (const { title, report } of models) lines.push('', `### ${title}, ${HAYSTACK_TITLES[haystack]}`, '', ...needleTable(report.needle, haystack, grid));
  }
  return lines.join('\n');
}

/**
 * Rows by depth, columns by length, and a last row of every depth together; a cell marked * holds
 * failed requests, listed in the notes below.
 */
function needleTable(result: NeedleResult, haystack: HaystackKind, grid: NeedleGrid): string[] {
  const cells = result.cells.filter((c) => c.haystack === haystack);
  const cell = (of: NeedleCell[]) => {
    const correct = of.reduce((sum, c) => sum + c.tally.correct, 0);
    const total = of.reduce((sum, c) => sum + c.tally.total, 0);
    const failed = of.some((c) => c.failed > 0);
    return `${(100 * tally(correct, total).accuracy).toFixed(0)}% (${correct}/${total})${failed ? '*' : ''}`;
  };
  const rows = [
    ['depth', ...grid.lengths.map(lengthLabel)],
    ...grid.depths.map((depth) => [`${+(100 * depth).toFixed(1)}%`, ...grid.lengths.map((length) => cell(cells.filter((c) => c.depth === depth && c.promptTokens === length)))]),
    ['all', ...grid.lengths.map((length) => cell(cells.filter((c) => c.promptTokens === length)))],
  ];
  return [...markdownTable(rows), ...failureNotes(result, haystack)];
}

function failureNotes(result: NeedleResult, haystack: HaystackKind): string[] {
  const byMessage = new Map<string, Set<string>>();
  for (const trial of result.trials) {
    if (trial.haystack !== haystack || trial.error === undefined) continue;
    // The method and URL are the same for every request (and the port differs from run to run).
    const message = trial.error.replace(/^[A-Z]+ \S+: /, '');
    const where = byMessage.get(message) ?? byMessage.set(message, new Set()).get(message)!;
    where.add(lengthLabel(trial.promptTokens));
  }
  if (byMessage.size === 0) return [];
  const failed = result.trials.filter((t) => t.haystack === haystack && t.error !== undefined).length;
  const listed = [...byMessage].slice(0, MAX_FAILURES_LISTED).map(([message, lengths]) => `- at ${[...lengths].join(', ')}: ${message}`);
  const more = byMessage.size > MAX_FAILURES_LISTED ? [`- and ${byMessage.size - MAX_FAILURES_LISTED} other failure message(s)`] : [];
  return ['', `\\* ${failed} request(s) failed, counted wrong:`, '', ...listed, ...more];
}

function lengthLabel(tokens: number): string {
  return tokens % 1024 === 0 ? `${tokens / 1024}K` : String(tokens);
}

function markdownTable(rows: string[][]): string[] {
  const widths = rows[0]!.map((_, c) => Math.max(3, ...rows.map((row) => row[c]!.length)));
  const line = (row: string[]) => `| ${row.map((text, c) => (c === 0 ? text.padEnd(widths[c]!) : text.padStart(widths[c]!))).join(' | ')} |`;
  return [line(rows[0]!), `| ${widths.map((w, c) => (c === 0 ? '-'.repeat(w) : `${'-'.repeat(w - 1)}:`)).join(' | ')} |`, ...rows.slice(1).map(line)];
}
