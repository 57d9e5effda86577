/**
 * Runs bench/peer/torch_peer.py, PyTorch on the CPU, and reads its JSON lines. PyTorch is optional:
 * where the interpreter or PyTorch is missing, the run says why instead of failing the bench.
 */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import type { MatmulPrecision } from '../../src/backend/bfloat16.ts';
import type { PeerRun } from './table.ts';

export interface TorchPeerOptions {
  /** The Python that has PyTorch: Debian's python3-torch installs it for /usr/bin/python3. */
  python: string;
  threads: number;
  /** Of the products of decode, prefill and encode: bfloat16 runs them under torch.autocast, without the training figure. */
  precision?: MatmulPrecision;
  contexts: number[];
  figures: ('decode' | 'prefill' | 'encode' | 'train')[];
  /** Extra environment, for tests. */
  env?: Record<string, string>;
}

export const PEER_SCRIPT = join(import.meta.dir, 'torch_peer.py');

export async function runTorchPeer(options: TorchPeerOptions): Promise<PeerRun> {
  // Both slow a current OpenBLAS (DESIGN.md): the peer runs as a user's default install would.
  const { OPENBLAS_CORETYPE: _coretype, OPENBLAS_L2_SIZE: _l2, ...inherited } = process.env;
  // torch.set_num_threads sets OpenMP's threads, not OpenBLAS's, which run every product on all the
  // cores by default: each library gets the peer's thread count, so that it uses the cores it is said to.
  const threads = String(options.threads);
  const env = { ...inherited, OMP_NUM_THREADS: threads, OPENBLAS_NUM_THREADS: threads, MKL_NUM_THREADS: threads };
  const args = [PEER_SCRIPT, '--json', '--threads', String(options.threads), '--contexts', options.contexts.join(','), '--figures', options.figures.join(','), '--precision', options.precision ?? 'float32'];
  const { code, stdout, stderr, spawnError } = await new Promise<{ code: number | null; stdout: string; stderr: string; spawnError?: Error }>((resolve) => {
    const child = spawn(options.python, args, { env: { ...env, ...options.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let [out, err] = ['', ''];
    child.stdout.on('data', (chunk) => (out += chunk));
    child.stderr.on('data', (chunk) => (err += chunk));
    child.on('error', (error) => resolve({ code: null, stdout: out, stderr: err, spawnError: error }));
    child.on('close', (exitCode) => resolve({ code: exitCode, stdout: out, stderr: err }));
  });
  if (spawnError) return { available: false, reason: `cannot start ${options.python}: ${spawnError.message}` };
  const records = stdout.split('\n').filter((line) => line.startsWith('{')).map((line) => JSON.parse(line) as Record<string, unknown>);
  const unavailable = records.find((r) => typeof r.unavailable === 'string');
  if (unavailable) return { available: false, reason: unavailable.unavailable as string };
  if (code !== 0) return { available: false, reason: `${options.python} ${PEER_SCRIPT} exited with ${code}: ${stderr.trim().split('\n').at(-1) ?? ''}` };
  const header = records.find((r) => typeof r.peer === 'string');
  const figures = new Map(records.filter((r) => typeof r.figure === 'string').map((r) => [r.figure as string, { value: r.value as number, unit: r.unit as string }]));
  const description = header ? `${header.peer}, ${header.threads} thread(s), ${header.precision}, BLAS ${header.blas}, Python ${header.python}` : 'PyTorch';
  return { available: true, description, figures };
}
