/**
 * A chat request's n choices against the same n as requests one after another: the real server
 * process (settings from this environment: MODEL_DIR, INFERENCE_WORKERS, ...) answers `n: CHOICES`
 * at temperature 1, one request of n = 1, and CHOICES requests of n = 1 in turn, each of MAX_TOKENS
 * tokens from one 224 x 224 image, for ROUNDS rounds after one to warm up. The choices run as one
 * batch and share their image's encoding (docs/performance.md, "Batches of waiting requests").
 *
 *   MODEL_DIR=DIR bun bench/choices.ts            CHOICES=4 MAX_TOKENS=32 ROUNDS=3 by default
 */
import sharp from 'sharp';
import { startServerProcess } from './server-process.ts';

const CHOICES = Number(process.env.CHOICES ?? 4);
const MAX_TOKENS = Number(process.env.MAX_TOKENS ?? 32);
const ROUNDS = Number(process.env.ROUNDS ?? 3);

const { url, child } = await startServerProcess();
const image = await sharp({ create: { width: 224, height: 224, channels: 3, background: 'red' } }).jpeg().toBuffer();
const content = [{ type: 'image_url', image_url: { url: `data:image/jpeg;base64,${image.toString('base64')}` } }];

/** One chat request: its milliseconds and the tokens of all its choices. */
async function chat(n: number, seed: number): Promise<{ ms: number; tokens: number }> {
  const started = performance.now();
  const body = JSON.stringify({ messages: [{ role: 'user', content }], max_tokens: MAX_TOKENS, temperature: 1, seed, n });
  const response = await fetch(`${url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
  const { usage } = (await response.json()) as { usage: { completion_tokens: number } };
  return { ms: performance.now() - started, tokens: usage.completion_tokens };
}

await chat(1, 0);
await chat(CHOICES, 0);
for (let round = 1; round <= ROUNDS; round++) {
  const choices = await chat(CHOICES, 1);
  const one = await chat(1, 1);
  let inTurn = { ms: 0, tokens: 0 };
  for (let seed = 1; seed <= CHOICES; seed++) {
    const answer = await chat(1, seed);
    inTurn = { ms: inTurn.ms + answer.ms, tokens: inTurn.tokens + answer.tokens };
  }
  const line = (what: string, { ms, tokens }: { ms: number; tokens: number }) => `${what} ${ms.toFixed(0)} ms (${tokens} tokens)`;
  console.log(`round ${round}: ${line(`n = ${CHOICES}:`, choices)}; ${line(`${CHOICES} requests in turn:`, inTurn)}; ${line('n = 1:', one)}`);
}
child.kill('SIGTERM');
await child.exited;
