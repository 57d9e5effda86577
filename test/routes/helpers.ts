/**
 * Shared by the HTTP integration tests: a tiny checkpoint, the real server on an ephemeral port,
 * image fixtures rendered by sharp, and an SSE reader built on eventsource-parser.
 */
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createParser, type EventSourceMessage } from 'eventsource-parser';
import sharp from 'sharp';
import { saveCheckpoint } from '../../model/checkpoint.ts';
import { loadServerConfig, type ServerConfig } from '../../src/http/settings.ts';
import { MultimodalMAC } from '../../src/multimodal-mac.ts';
import { startServer, type RunningServer } from '../../src/http/server.ts';

/** About 45k parameters: hundreds of tokens per second on one WASM thread. */
export const TINY_MODEL = {
  imageSize: 16,
  patchSize: 8,
  visionDim: 16,
  visionDepth: 1,
  visionHeads: 2,
  visionMlpDim: 32,
  projectionDim: 32,
  textDim: 32,
  depth: 1,
  segmentLen: 8,
  heads: 2,
  dimHead: 16,
  numPersistMemTokens: 2,
  numLongtermMemTokens: 2,
};

/** A saved checkpoint folder `name`, in `parent` (default: a new temporary folder). */
export async function makeCheckpoint(options: Record<string, unknown> = TINY_MODEL, name = 'tiny', parent?: string): Promise<string> {
  const dir = join(parent ?? (await mkdtemp(join(tmpdir(), 'titans-mm-'))), name);
  const model = new MultimodalMAC(options);
  await saveCheckpoint(model, dir);
  model.dispose();
  return dir;
}

/** The real server, in this process, on an ephemeral port, serving `modelDir`. */
export async function startTestServer(modelDir: string, env: Record<string, string> = {}): Promise<RunningServer> {
  const dataDir = await mkdtemp(join(tmpdir(), 'titans-mm-data-'));
  const config: ServerConfig = loadServerConfig({ PORT: '0', MODEL_DIR: modelDir, DATA_DIR: dataDir, INFERENCE_WORKERS: '2', ...env });
  return startServer(config, () => {});
}

export async function jpeg(colour = { r: 200, g: 40, b: 30 }, width = 40, height = 30): Promise<Buffer> {
  return sharp({ create: { width, height, channels: 3, background: colour } }).jpeg().toBuffer();
}

/** A 1x1 PNG whose header declares width x height: a decompression bomb in under 100 bytes. */
export async function pngDeclaring(width: number, height: number): Promise<Buffer> {
  const png = Buffer.from(await sharp({ create: { width: 1, height: 1, channels: 3, background: 'red' } }).png().toBuffer());
  png.writeUInt32BE(width, 16);
  png.writeUInt32BE(height, 20);
  png.writeUInt32BE(Bun.hash.crc32(png.subarray(12, 29)), 29);
  return png;
}

export function form(fields: Record<string, string | Blob>): FormData {
  const body = new FormData();
  for (const [name, value] of Object.entries(fields)) body.append(name, value);
  return body;
}

export function imageBlob(bytes: Uint8Array, type = 'image/jpeg'): Blob {
  return new Blob([new Uint8Array(bytes)], { type });
}

/** The chunks of a byte stream (lib.dom types ReadableStream without async iteration). */
export async function* chunks(stream: ReadableStream<Uint8Array>): AsyncGenerator<Uint8Array> {
  const reader = stream.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return;
      yield value;
    }
  } finally {
    reader.releaseLock();
  }
}

export type SseItem = { type: 'event'; event: string; data: any } | { type: 'comment'; comment: string };

/** The events (data parsed as JSON when it is JSON) and comments of an SSE response, as they arrive. */
export async function* sse(response: Response): AsyncGenerator<SseItem> {
  const pending: SseItem[] = [];
  const parser = createParser({
    onEvent: (message: EventSourceMessage) => pending.push({ type: 'event', event: message.event ?? 'message', data: parseData(message.data) }),
    onComment: (comment: string) => pending.push({ type: 'comment', comment }),
  });
  const decoder = new TextDecoder();
  for await (const chunk of chunks(response.body!)) {
    parser.feed(decoder.decode(chunk, { stream: true }));
    while (pending.length > 0) yield pending.shift()!;
  }
}

/** All events of a finished SSE response. */
export async function allEvents(response: Response): Promise<{ event: string; data: any }[]> {
  const events: { event: string; data: any }[] = [];
  for await (const item of sse(response)) if (item.type === 'event') events.push(item);
  return events;
}

/** Parses SSE text (such as curl's output) into events. */
export function parseSseText(text: string): { event: string; data: any }[] {
  const events: { event: string; data: any }[] = [];
  const parser = createParser({ onEvent: (message) => events.push({ event: message.event ?? 'message', data: parseData(message.data) }) });
  parser.feed(text);
  return events;
}

function parseData(data: string): unknown {
  try {
    return JSON.parse(data);
  } catch {
    return data;
  }
}

/** Polls until `check` holds or `timeoutMs` passes; returns its last value. */
export async function eventually<T>(probe: () => Promise<T>, check: (value: T) => boolean, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (check(value) || Date.now() > deadline) return value;
    await Bun.sleep(20);
  }
}

export interface Health {
  streams: number;
  queued: number;
  running: number;
  workers: { id: number; busy: boolean; liveTensors: number; baselineTensors: number }[];
}

export async function health(url: string): Promise<Health> {
  return (await fetch(`${url}/healthz`)).json() as Promise<Health>;
}

/** Every worker idle with its live tensors back at the baseline. */
export function atBaseline(h: Health): boolean {
  return h.streams === 0 && h.workers.every((w) => !w.busy && w.liveTensors === w.baselineTensors);
}

/** The server's count of the batches its workers started, of the generations they ran, and of those that joined a running batch (GET /metrics). */
export async function batchCounters(url: string): Promise<{ batches: number; generations: number; joined: number }> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const counter = (name: string) => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1]);
  return { batches: counter('inference_batches_total'), generations: counter('inference_batched_generations_total'), joined: counter('inference_joined_generations_total') };
}

/** Runs the real curl binary; returns its stdout and exit code. */
export async function curl(args: string[]): Promise<{ stdout: string; exitCode: number }> {
  const child = Bun.spawn(['curl', '-sS', ...args], { stdout: 'pipe', stderr: 'inherit' });
  const stdout = await new Response(child.stdout).text();
  return { stdout, exitCode: await child.exited };
}
