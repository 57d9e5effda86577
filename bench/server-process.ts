/** The real server as the benches run it: its own process, on a free port, settings from this environment. */
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Subprocess } from 'bun';

export interface ServerProcess {
  url: string;
  child: Subprocess;
}

/** `bun src/http/server.ts` serving MODEL_DIR, or an untrained default model where it is unset; resolves once it listens. */
export async function startServerProcess(): Promise<ServerProcess> {
  const modelDir = process.env.MODEL_DIR ?? join(await mkdtemp(join(tmpdir(), 'titans-bench-')), 'none');
  const child = Bun.spawn(['bun', 'src/http/server.ts'], { env: { ...process.env, PORT: '0', MODEL_DIR: modelDir }, stdout: 'pipe', stderr: 'inherit' });
  return { url: await listeningUrl(child.stdout), child };
}

export async function* chunks(stream: ReadableStream<Uint8Array>): AsyncGenerator<Uint8Array> {
  const reader = stream.getReader();
  for (let read = await reader.read(); !read.done; read = await reader.read()) yield read.value;
}

async function listeningUrl(stdout: ReadableStream<Uint8Array>): Promise<string> {
  const decoder = new TextDecoder();
  let text = '';
  for await (const chunk of chunks(stdout)) {
    text += decoder.decode(chunk, { stream: true });
    const match = /listening on (\S+)/.exec(text);
    if (match) return match[1]!;
  }
  throw new Error(`the server exited before listening:\n${text}`);
}
