/**
 * The real server, started in this process for one evaluation: the checkpoint under test, an
 * ephemeral port, a throwaway DATA_DIR. Other settings (INFERENCE_WORKERS, MAC_BACKEND) come from
 * the environment, as for `bun run start`.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadServerConfig } from '../http/settings.ts';
import { startServer } from '../http/server.ts';

/** The server would serve an untrained model for a folder without a checkpoint; scoring that is noise. */
export function requireCheckpoint(modelDir: string): void {
  if (!existsSync(join(modelDir, 'config.json'))) throw new Error(`no checkpoint in ${modelDir} (no config.json): train one or pass --model DIR`);
}

/**
 * Serves `modelDir` while `use(url)` runs, then shuts the server down and removes its DATA_DIR;
 * `promptBytes`: the longest prompt the evaluation will send.
 */
export async function withLocalServer<T>(modelDir: string, use: (url: string) => Promise<T>, log: (line: string) => void, promptBytes = 0): Promise<T> {
  requireCheckpoint(modelDir);
  const dataDir = await mkdtemp(join(tmpdir(), 'titans-eval-data-'));
  try {
    const config = loadServerConfig({ ...process.env, PORT: '0', HOST: '127.0.0.1', MODEL_DIR: modelDir, DATA_DIR: dataDir });
    // MAX_PROMPT_BYTES as set, raised for the evaluation's longest prompt, never lowered.
    const running = await startServer({ ...config, maxPromptBytes: Math.max(config.maxPromptBytes, promptBytes) }, log);
    try {
      return await use(running.url);
    } finally {
      await running.shutdown();
    }
  } finally {
    await rm(dataDir, { recursive: true, force: true });
  }
}
