import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ByteTokenizer } from '../../../model/tokenizer.ts';
import { HAYSTACKS, haystackAt, needleAt, shortestNeedlePrompt, type HaystackKind } from '../../../src/data/needle.ts';
import { FILLER, keySentence, passkeyAt, QUESTION } from '../../../src/data/passkey.ts';
import { parseEvalArgs } from '../../../src/evaluation/args.ts';
import { UsageError } from '../../../src/flags.ts';
import type { NeedleReport } from '../../../src/evaluation/evaluate.ts';
import { evaluateNeedleServer } from '../../../src/evaluation/evaluate.ts';
import { formatNeedle } from '../../../src/evaluation/needle-report.ts';
import { runEval } from '../../../src/evaluation/run.ts';
import type { RunningServer } from '../../../src/http/server.ts';
import { startTestServer } from '../../routes/helpers.ts';
import { tempDir } from '../training/helpers.ts';

const FILLER_SENTENCES = FILLER.split(/(?<=\. )/).map((s) => s.trim());
const sentencesOf = (text: string) => text.split(/(?<=\.) /).map((s) => s.trim()).filter((s) => s.endsWith('.'));

describe('needle haystacks', () => {
  test('are seeded and exactly as long as asked; the repeated one is the passkey filler', () => {
    for (const kind of HAYSTACKS) {
      expect(haystackAt(3, 'validation', 2, kind, 5000)).toEqual(haystackAt(3, 'validation', 2, kind, 5000));
      for (const bytes of [0, 1, 100, 4321]) expect(haystackAt(3, 'validation', 2, kind, bytes).text).toHaveLength(bytes);
    }
    expect(haystackAt(1, 'validation', 0, 'repeated', 500).text).toBe(FILLER.repeat(6).slice(0, 500));
    const sentences = haystackAt(3, 'validation', 2, 'sentences', 5000).text;
    expect(haystackAt(3, 'validation', 3, 'sentences', 5000).text).not.toBe(sentences);
    expect(haystackAt(4, 'validation', 2, 'sentences', 5000).text).not.toBe(sentences);
    // A longer haystack reads on where a shorter one ends.
    expect(haystackAt(3, 'validation', 2, 'sentences', 9000).text.startsWith(sentences)).toBe(true);
  });

  test('the sentences are varied English, ASCII without digits, and none is a sentence of the training filler', () => {
    const { text, sentenceStarts } = haystackAt(0, 'validation', 0, 'sentences', 32_768);
    expect(text).toMatch(/^[A-Za-z ,.]*$/);
    const sentences = sentencesOf(text);
    expect(new Set(sentences).size).toBeGreaterThan(400);
    for (const filler of FILLER_SENTENCES) expect(text).not.toContain(filler);
    expect(text.toLowerCase()).not.toContain('pass key');
    for (const start of sentenceStarts.slice(1)) expect(text.slice(start - 2, start + 1)).toMatch(/^\. [A-Z]$/);
  });
});

describe('needle prompts', () => {
  const tokenizer = new ByteTokenizer();
  const lengths = [256, 1024, 4096, 65_536];
  const depths = [0, 0.25, 0.5, 0.75, 0.9, 1];

  test('have the requested length, the key sentence at the requested depth of the haystack, the question at the end', () => {
    for (const haystack of HAYSTACKS) {
      for (const promptTokens of lengths) {
        for (const depth of depths) {
          const { key, needleOffset, prompt, tokens } = needleAt(0, 'validation', 1, { haystack, promptTokens, depth });
          const needle = keySentence(key);
          expect(prompt).toHaveLength(promptTokens);
          expect(tokens).toEqual([...tokenizer.encode(prompt + key), tokenizer.eosTokenId]);
          expect(prompt.endsWith(QUESTION)).toBe(true);
          expect(prompt.slice(needleOffset).startsWith(needle)).toBe(true);
          // Once in the needle, twice in the question: nowhere in the haystack.
          expect(prompt.split('pass key')).toHaveLength(4);
          // At a sentence start, within one sentence of the depth asked for.
          const haystackBytes = promptTokens - needle.length - QUESTION.length;
          expect(Math.abs(needleOffset - depth * haystackBytes)).toBeLessThanOrEqual(haystack === 'repeated' ? 22 : 130);
          if (needleOffset > 0) expect(prompt.slice(needleOffset - 2, needleOffset)).toBe('. ');
          // Take the needle out and the haystack is whole again.
          expect(prompt.slice(0, needleOffset) + prompt.slice(needleOffset + needle.length, -QUESTION.length)).toBe(haystackAt(0, 'validation', 1, haystack, haystackBytes).text);
        }
      }
    }
  });

  test('at depth 0 in the repeated filler, a needle prompt is a passkey example', () => {
    const { key, prompt } = needleAt(0, 'validation', 0, { haystack: 'repeated', promptTokens: 600, depth: 0 });
    expect(prompt).toBe(`${keySentence(key)}${FILLER.repeat(10).slice(0, 600 - shortestNeedlePrompt())}${QUESTION}`);
    expect(prompt.length - shortestNeedlePrompt()).toBe(passkeyAt(0, 'validation', 0, [525, 525]).fillerTokens);
  });

  test('keys: five digits, one per index whatever the cell, apart from the training split and from the passkey task', () => {
    const keyOf = (index: number, haystack: HaystackKind, promptTokens: number, depth: number) => needleAt(5, 'validation', index, { haystack, promptTokens, depth }).key;
    const key = keyOf(0, 'repeated', 256, 0);
    expect(key).toMatch(/^[1-9]\d{4}$/);
    expect([keyOf(0, 'sentences', 256, 0), keyOf(0, 'repeated', 4096, 0.9), keyOf(0, 'sentences', 1024, 0.5)]).toEqual([key, key, key]);
    const keys = Array.from({ length: 50 }, (_, i) => keyOf(i, 'repeated', 256, 0));
    expect(new Set(keys).size).toBeGreaterThan(45);
    const train = Array.from({ length: 50 }, (_, i) => needleAt(5, 'train', i, { haystack: 'repeated', promptTokens: 256, depth: 0 }).key);
    expect(train.filter((k, i) => k === keys[i])).toEqual([]);
    expect(keys[0]).not.toBe(passkeyAt(5, 'validation', 0, [0, 0]).key);
    expect(needleAt(5, 'validation', 0, { haystack: 'repeated', promptTokens: 256, depth: 0, keyDigits: 9 }).key).toMatch(/^[1-9]\d{8}$/);
  });

  test('a prompt too short for the needle or a depth outside [0, 1] is refused', () => {
    expect(needleAt(0, 'validation', 0, { haystack: 'sentences', promptTokens: shortestNeedlePrompt(), depth: 0.5 }).prompt).toHaveLength(shortestNeedlePrompt());
    expect(() => needleAt(0, 'validation', 0, { haystack: 'sentences', promptTokens: shortestNeedlePrompt() - 1, depth: 0 })).toThrow(RangeError);
    for (const depth of [-0.1, 1.5, NaN]) expect(() => needleAt(0, 'validation', 0, { haystack: 'repeated', promptTokens: 256, depth })).toThrow(RangeError);
  });
});

describe('bun run eval --needle', () => {
  test('the arguments are checked', () => {
    expect(parseEvalArgs(['--needle']).needle).toEqual({
      lengths: [1024, 2048, 4096, 8192, 16384, 32768, 65536],
      depths: [0, 0.25, 0.5, 0.75, 0.9],
      haystacks: ['repeated', 'sentences'],
      trials: 4,
      models: { memory: 'models/passkey-long', attentionOnly: 'models/ablation/passkey-long-attention-only' },
    });
    expect(parseEvalArgs([])).not.toHaveProperty('needle');
    const argv = ['--needle', '--needle-lengths', '256, 512', '--needle-depths', '0,.5,1', '--needle-haystacks', 'sentences', '--needle-trials', '2'];
    const args = parseEvalArgs([...argv, '--passkey-model', 'm', '--passkey-attention-only', 'a', '--seed', '3', '--concurrency', '2', '--json', 'r.json']);
    expect(args).toMatchObject({ seed: 3, concurrency: 2, json: 'r.json' });
    expect(args.needle).toEqual({ lengths: [256, 512], depths: [0, 0.5, 1], haystacks: ['sentences'], trials: 2, models: { memory: 'm', attentionOnly: 'a' } });
    const misuses = [
      ['--needle-lengths', '1024'],
      ['--needle-trials', '2'],
      ['--needle', '--ablation'],
      ['--needle', '--passkey'],
      ['--needle', '--model', 'm'],
      ['--needle', '--url', 'http://x'],
      ['--needle', '--count', '3'],
      ['--needle', '--attention-only', 'a'],
      ['--needle', '--needle-lengths', '50'],
      ['--needle', '--needle-lengths', '1024,1024'],
      ['--needle', '--needle-lengths', '1K'],
      ['--needle', '--needle-depths', '1.5'],
      ['--needle', '--needle-depths', '-0.1'],
      ['--needle', '--needle-depths', 'half'],
      ['--needle', '--needle-haystacks', 'repeated,noise'],
      ['--needle', '--needle-trials', '0'],
      ['--passkey-model', 'p'],
    ];
    for (const misuse of misuses) expect(() => parseEvalArgs(misuse)).toThrow(UsageError);
  });

  describe('through the real server', () => {
    let server: RunningServer;
    // Prompts over 300 bytes are refused: the 512-token cells fail.
    beforeAll(async () => (server = await startTestServer('models/passkey', { MAX_PROMPT_BYTES: '300' })));
    afterAll(() => server.shutdown());

    test('a failed request counts as wrong, its error under the table', async () => {
      const grid = { haystacks: ['repeated'] as HaystackKind[], lengths: [256, 512], depths: [0], trials: 2 };
      const report = await evaluateNeedleServer(server.url, { ...grid, seed: 0, concurrency: 2 });
      const [short, long] = report.needle.cells;
      expect(short).toMatchObject({ promptTokens: 256, failed: 0, tally: { total: 2 } });
      expect(long).toMatchObject({ promptTokens: 512, failed: 2, tally: { correct: 0, total: 2 } });
      expect(report.needle.trials.filter((t) => t.error !== undefined).every((t) => t.answer === null && t.error!.includes('HTTP 400'))).toBe(true);
      const text = formatNeedle(report, report, { ...grid, seed: 0 });
      expect(text).toContain('| 0%    | ');
      expect(text).toContain('0% (0/2)*');
      // The last row counts every depth of a length together.
      expect(text).toMatch(/^\| all\s+\|\s+\d+% \([0-2]\/2\) \|\s+0% \(0\/2\)\* \|$/m);
      expect(text).toContain('\\* 2 request(s) failed, counted wrong:');
      expect(text).toMatch(/- at 512: HTTP 400 \(invalid_request: .*300/);
      expect(text).not.toContain('http://');
    }, 30_000);
  });

  describe('the needle model, models/passkey-long, trained on at most 2,048 tokens', () => {
    let server: RunningServer;
    beforeAll(async () => (server = await startTestServer('models/passkey-long')));
    afterAll(() => server.shutdown());

    test('answers a key from the start of 16K and 64K tokens of either haystack, through the HTTP API', async () => {
      const grid = { haystacks: [...HAYSTACKS], lengths: [16384, 65536], depths: [0], trials: 1 };
      const { needle } = await evaluateNeedleServer(server.url, { ...grid, seed: 0, concurrency: 2 });
      expect(needle.trials.map((t) => [t.haystack, t.promptTokens, t.answer])).toEqual([
        ['repeated', 16384, needle.trials[0]!.key],
        ['repeated', 65536, needle.trials[0]!.key],
        ['sentences', 16384, needle.trials[0]!.key],
        ['sentences', 65536, needle.trials[0]!.key],
      ]);
    }, 120_000);
  });

  test('the passkey model and its attention-only twin, each on its own server: a table per model and haystack', async () => {
    const json = join(await tempDir('titans-needle-'), 'needle.json');
    const argv = ['--needle', '--needle-lengths', '256,512', '--needle-depths', '0,0.5', '--needle-trials', '1', '--json', json];
    const progress: string[] = [];
    const { text } = await runEval(parseEvalArgs(argv), (line) => progress.push(line));
    const { memory, attention_only } = JSON.parse(await readFile(json, 'utf8')) as { memory: NeedleReport; attention_only: NeedleReport };
    expect(memory.model.neuralMemoryLayers).not.toEqual([]);
    expect(attention_only.model.neuralMemoryLayers).toEqual([]);
    for (const { needle } of [memory, attention_only]) {
      expect(needle.cells).toHaveLength(2 * 2 * 2);
      expect(needle.trials.every((t) => t.error === undefined && typeof t.answer === 'string')).toBe(true);
    }
    for (const title of ['memory, repeated filler', 'attention only, repeated filler', 'memory, varied sentences', 'attention only, varied sentences']) {
      expect(text).toContain(`### ${title}`);
    }
    expect(text.match(/^\| depth \|\s+256 \|\s+512 \|$/gm)).toHaveLength(4);
    expect(text.match(/^\| 50%\s+\|\s+\d+% \([01]\/1\) \|\s+\d+% \([01]\/1\) \|$/gm)).toHaveLength(4);
    expect(text.match(/^\| all\s+\|\s+\d+% \([0-2]\/2\) \|\s+\d+% \([0-2]\/2\) \|$/gm)).toHaveLength(4);
    expect(progress.filter((line) => line.includes('cells ('))).toHaveLength(2 * 8);
  }, 60_000);
});
