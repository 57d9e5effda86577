/**
 * The real server, started in this process for one evaluation: the checkpoint under test, an
 * ephemeral port, a throwaway DATA_DIR. Other settings (INFERENCE_WORKERS, MAC_BACKEND) come from
 * the environment, as for `bun run start`.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadServerConfig } from '../config.ts';
import { startServer } from '../server.ts';

/** The server would serve an untrained model for a folder without a checkpoint; scoring that is noise. */
export function requireCheckpoint(modelDir: string): void {
  if (!existsSync(join(modelDir, 'config.json'))) throw new Error(`no checkpoint in ${modelDir} (no config.json): train one or pass --model DIR`);
}

/** Serves `modelDir` while `use(url)` runs, then shuts the server down and removes its DATA_DIR. */
export async function withLocalServer<T>(modelDir: string, use: (url: string) => Promise<T>, log: (line: string) => void): Promise<T> {
  requireCheckpoint(modelDir);
  const dataDir = await mkdtemp(join(tmpdir(), 'titans-eval-data-'));
  try {
    const env = { ...process.env, PORT: '0', HOST: '127.0.0.1', MODEL_DIR: modelDir, DATA_DIR: dataDir };
    const running = await startServer(loadServerConfig(env), log);
    try {
      return await use(running.url);
    } finally {
      await running.shutdown();
    }
  } finally {
    await rm(dataDir, { recursive: true, force: true });
  }
}
