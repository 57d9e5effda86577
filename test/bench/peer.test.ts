import { afterAll, describe, expect, test } from 'bun:test';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { formatPeerTable, speedRatio, type PeerFigure } from '../../bench/peer/table.ts';
import { runTorchPeer } from '../../bench/peer/torch.ts';

const machine = { cores: 2, cpu: 'AMD EPYC', loadBefore: 1.25, loadAfter: 2 };
const rows: PeerFigure[] = [
  { figure: 'decode at context 64', unit: 'tokens/s', titans: 50, peer: 125 },
  { figure: 'ViT-B/16 encode of one image', unit: 'ms', titans: 600, peer: 300 },
  { figure: 'prefill of 2048 tokens', unit: 'tokens/s', titans: 1500, peer: null },
];

describe('the peer table', () => {
  test('a ratio is titans-mm speed over PyTorch speed: rates divide, times divide the other way', () => {
    expect(speedRatio(rows[0]!)).toBeCloseTo(0.4, 10);
    expect(speedRatio(rows[1]!)).toBeCloseTo(0.5, 10);
    expect(speedRatio({ ...rows[1]!, titans: 150 })).toBeCloseTo(2, 10);
    expect(speedRatio(rows[2]!)).toBeNull();
  });

  test('each figure side by side with its ratio, under the machine and the peer', () => {
    const text = formatPeerTable(rows, { available: true, description: 'PyTorch 1.13 CPU, 2 thread(s)', figures: new Map() }, machine);
    expect(text.split('\n')).toEqual([
      'machine: 2 cores (AMD EPYC), load 1.3 at the start and 2.0 at the end (1-minute averages)',
      'peer: PyTorch 1.13 CPU, 2 thread(s)',
      '',
      '| figure | titans-mm | PyTorch | ratio (speed, > 1: titans-mm faster) |',
      '| --- | --- | --- | --- |',
      '| decode at context 64 (tokens/s) | 50.0 | 125 | 0.40x |',
      '| ViT-B/16 encode of one image (ms) | 600 | 300 | 0.50x |',
      '| prefill of 2048 tokens (tokens/s) | 1,500 | - | - |',
    ]);
  });

  test("without PyTorch: titans-mm's column only, and why", () => {
    const text = formatPeerTable(rows, { available: false, reason: 'PyTorch is not installed for /usr/bin/python3' }, machine);
    expect(text).toContain('PyTorch: not run: PyTorch is not installed for /usr/bin/python3. Only titans-mm\'s figures are shown.');
    expect(text).toContain('| figure | titans-mm |\n| --- | --- |\n| decode at context 64 (tokens/s) | 50.0 |');
    expect(text).not.toContain('ratio');
  });
});

describe('running the PyTorch peer degrades to a reason', () => {
  const root = mkdtemp(join(tmpdir(), 'titans-peer-'));
  afterAll(async () => rm(await root, { recursive: true, force: true }));
  const options = { threads: 1, contexts: [64], figures: ['decode' as const] };

  test('an interpreter that is not there', async () => {
    const run = await runTorchPeer({ ...options, python: join(await root, 'no-such-python') });
    expect(run).toEqual({ available: false, reason: expect.stringContaining(`cannot start ${join(await root, 'no-such-python')}`) });
  });

  test('the peer runs its BLAS on its own thread count: torch.set_num_threads leaves OpenBLAS on every core', async () => {
    // An interpreter that says which threads it was given.
    const dir = await root;
    const tells = join(dir, 'tells-threads');
    await writeFile(tells, '#!/bin/sh\necho "{\\"unavailable\\": \\"OpenMP $OMP_NUM_THREADS, OpenBLAS $OPENBLAS_NUM_THREADS\\"}"\n', { mode: 0o755 });
    for (const threads of [1, 2]) expect(await runTorchPeer({ ...options, threads, python: tells })).toEqual({ available: false, reason: `OpenMP ${threads}, OpenBLAS ${threads}` });
  });

  // A Python whose `import torch` fails, whether or not PyTorch is installed: a torch module that raises.
  const python = Bun.which('python3');
  test.skipIf(!python)('a Python without PyTorch', async () => {
    const dir = await root;
    await writeFile(join(dir, 'torch.py'), 'raise ImportError("No module named torch")\n');
    const run = await runTorchPeer({ ...options, python: python!, env: { PYTHONPATH: dir } });
    expect(run).toEqual({ available: false, reason: expect.stringMatching(/^PyTorch is not installed for .*python.*No module named torch/) });
  });
});
