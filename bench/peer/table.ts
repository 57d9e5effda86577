/**
 * The peer table of `npm run bench -- --peer`: each figure of titans-mm beside PyTorch's on the same
 * machine, with their ratio as a speed ratio (> 1: titans-mm is faster), and the machine it ran on.
 */
import { availableParallelism, cpus, loadavg } from 'node:os';

export interface PeerFigure {
  /** What was measured, e.g. 'decode at context 64'. */
  figure: string;
  /** 'tokens/s' and other rates: more is faster; 'ms': less is faster. */
  unit: string;
  titans: number;
  /** PyTorch's value, null where it did not run. */
  peer: number | null;
}

/** PyTorch's run: its figures by name, or why it did not run. */
export type PeerRun = { available: true; description: string; figures: Map<string, { value: number; unit: string }> } | { available: false; reason: string };

export interface Machine {
  cores: number;
  cpu: string;
  /** 1-minute load averages when the bench started and when it ended. */
  loadBefore: number;
  loadAfter: number;
}

/** titans-mm's speed over PyTorch's: a rate divided by the peer's, or the peer's time by ours. */
export function speedRatio(row: PeerFigure): number | null {
  if (row.peer === null || row.peer <= 0 || row.titans <= 0) return null;
  return row.unit === 'ms' ? row.peer / row.titans : row.titans / row.peer;
}

export function machineNow(): Pick<Machine, 'cores' | 'cpu'> & { load: number } {
  return { cores: availableParallelism(), cpu: cpus()[0]?.model.trim() || 'unknown CPU', load: loadavg()[0]! };
}

function formatValue(value: number): string {
  return value >= 100 ? Math.round(value).toLocaleString('en-US') : value.toFixed(1);
}

/** The markdown table, and above it the machine and the peer (or why PyTorch's column is missing). */
export function formatPeerTable(rows: PeerFigure[], run: PeerRun, machine: Machine): string {
  const lines = [
    `machine: ${machine.cores} cores (${machine.cpu}), load ${machine.loadBefore.toFixed(1)} at the start and ${machine.loadAfter.toFixed(1)} at the end (1-minute averages)`,
  ];
  if (!run.available) {
    lines.push(`PyTorch: not run: ${run.reason}. Only titans-mm's figures are shown.`, '', '| figure | titans-mm |', '| --- | --- |');
    for (const row of rows) lines.push(`| ${row.figure} (${row.unit}) | ${formatValue(row.titans)} |`);
    return lines.join('\n');
  }
  lines.push(`peer: ${run.description}`, '', '| figure | titans-mm | PyTorch | ratio (speed, > 1: titans-mm faster) |', '| --- | --- | --- | --- |');
  for (const row of rows) {
    const ratio = speedRatio(row);
    lines.push(`| ${row.figure} (${row.unit}) | ${formatValue(row.titans)} | ${row.peer === null ? '-' : formatValue(row.peer)} | ${ratio === null ? '-' : `${ratio.toFixed(2)}x`} |`);
  }
  return lines.join('\n');
}
