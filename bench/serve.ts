/**
 * Serving under load: the real server process (`bun src/http/server.ts`, untrained default model unless
 * MODEL_DIR is set) with STREAMS concurrent caption streams running back to back for SECONDS, while
 * GET /healthz is probed every 10 ms. Reports the /healthz latency percentiles (the goal: p99 under
 * 50 ms while streams generate), aggregate tokens/s, time to first token, and each stream's mean time
 * between its tokens (what a batch costs each of its streams) and its longest pause (what a stall
 * costs them). With RATE, requests arrive instead at random (a Poisson process of RATE a second, the
 * same times in every run), each whether or not the others have ended, as independent clients do; it
 * also reports each request's whole time.
 *
 *   bun bench/serve.ts                            STREAMS=8 SECONDS=10 MAX_TOKENS=64 by default
 *   RATE=30 bun bench/serve.ts                    30 requests a second, arriving at random
 *   INFERENCE_BATCH=1 bun bench/serve.ts          the server's settings come from the environment: one request at a time
 */
import { createParser } from 'eventsource-parser';
import sharp from 'sharp';
import { Random } from '../model/random.ts';
import { chunks, startServerProcess } from './server-process.ts';

const STREAMS = Number(process.env.STREAMS ?? 8);
const SECONDS = Number(process.env.SECONDS ?? 10);
const MAX_TOKENS = Number(process.env.MAX_TOKENS ?? 64);
const RATE = process.env.RATE ? Number(process.env.RATE) : undefined;

const { url, child } = await startServerProcess();
// Noise from a fixed seed: every run captions the same photo, so runs write the same texts and compare.
const noise = new Random(7);
const pixels = Uint8Array.from({ length: 640 * 480 * 3 }, () => Math.max(0, Math.min(255, Math.round(128 + 40 * noise.normal()))));
const image = await sharp(pixels, { raw: { width: 640, height: 480, channels: 3 } }).jpeg().toBuffer();

const deadline = performance.now() + SECONDS * 1000;
const ttfts: number[] = [];
/** Each answer's mean milliseconds between tokens, after the first. */
const intervals: number[] = [];
/** Each answer's longest wait for a token after its first, as its client saw it: what a stall costs a stream. */
const pauses: number[] = [];
let tokens = 0;
let requests = 0;

/** Each request's time from sending it to its last event. */
const totals: number[] = [];

async function caption(): Promise<void> {
  const body = new FormData();
  body.append('image', new Blob([image], { type: 'image/jpeg' }));
  body.append('max_tokens', String(MAX_TOKENS));
  const sent = performance.now();
  const response = await fetch(`${url}/v1/captions`, { method: 'POST', body });
  let lastToken: number | undefined;
  let pause = 0;
  const parser = createParser({
    onEvent: (event) => {
      if (event.event === 'token') {
        tokens++;
        const now = performance.now();
        if (lastToken !== undefined) pause = Math.max(pause, now - lastToken);
        lastToken = now;
      }
      if (event.event !== 'done') return;
      const { timings, usage } = JSON.parse(event.data);
      ttfts.push(timings.time_to_first_token_ms);
      if (usage.completion_tokens > 1) {
        intervals.push((timings.total_ms - timings.time_to_first_token_ms) / (usage.completion_tokens - 1));
        pauses.push(pause);
      }
    },
  });
  const decoder = new TextDecoder();
  for await (const chunk of chunks(response.body!)) parser.feed(decoder.decode(chunk, { stream: true }));
  totals.push(performance.now() - sent);
  requests++;
}

async function streamLoop(): Promise<void> {
  while (performance.now() < deadline) await caption();
}

/** Requests at exponentially distributed intervals until the deadline, the same ones in every run; waits for all of them. */
async function arrivals(rate: number): Promise<void> {
  const random = new Random(1);
  const sent: Promise<void>[] = [];
  while (performance.now() < deadline) {
    sent.push(caption());
    await Bun.sleep((-Math.log(1 - random.next()) / rate) * 1000);
  }
  await Promise.all(sent);
}

async function probeLoop(): Promise<number[]> {
  const latencies: number[] = [];
  while (performance.now() < deadline) {
    const start = performance.now();
    await (await fetch(`${url}/healthz`)).arrayBuffer();
    latencies.push(performance.now() - start);
    await Bun.sleep(10);
  }
  return latencies;
}

const started = performance.now();
const [latencies] = await Promise.all([probeLoop(), ...(RATE ? [arrivals(RATE)] : Array.from({ length: STREAMS }, streamLoop))]);
const elapsed = (performance.now() - started) / 1000;
child.kill('SIGTERM');
await child.exited;

const pct = (values: number[], p: number) => [...values].sort((a, b) => a - b)[Math.min(values.length - 1, Math.floor((p / 100) * values.length))]!;
const load = RATE ? `${RATE} requests a second at random` : `${STREAMS} concurrent streams`;
console.log(`${load} for ${elapsed.toFixed(1)} s, ${MAX_TOKENS} tokens each: ${requests} requests, ${tokens} tokens, ${(tokens / elapsed).toFixed(0)} tokens/s overall`);
console.log(`time to first token: p50 ${pct(ttfts, 50).toFixed(0)} ms, p99 ${pct(ttfts, 99).toFixed(0)} ms`);
console.log(`a request's whole time: p50 ${pct(totals, 50).toFixed(0)} ms, p99 ${pct(totals, 99).toFixed(0)} ms`);
console.log(`time between a stream's tokens: p50 ${pct(intervals, 50).toFixed(1)} ms, p99 ${pct(intervals, 99).toFixed(1)} ms`);
console.log(`a stream's longest pause between tokens: p50 ${pct(pauses, 50).toFixed(0)} ms, p99 ${pct(pauses, 99).toFixed(0)} ms`);
console.log(`GET /healthz under load (${latencies.length} probes): p50 ${pct(latencies, 50).toFixed(1)} ms, p99 ${pct(latencies, 99).toFixed(1)} ms, max ${Math.max(...latencies).toFixed(1)} ms`);
