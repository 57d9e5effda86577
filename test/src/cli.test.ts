import { describe, expect, test } from 'bun:test';
import { existsSync, readdirSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PRESETS } from '../../src/training/presets.ts';
import { TINY_MODEL, tempDir, writeCaptionFixtures } from './training/helpers.ts';

const CLI = join(import.meta.dir, '../../src/cli.ts');

async function cli(args: string[], env: Record<string, string> = {}) {
  const child = Bun.spawn([process.execPath, CLI, ...args], { stdout: 'pipe', stderr: 'pipe', env: { ...process.env, ...env } });
  const [stdout, stderr, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
  return { stdout, stderr, code };
}

describe('bun run train / infer', async () => {
  const dir = await tempDir();
  await writeCaptionFixtures(dir, 10);

  test('train with the original flat config: paths relative to it, plain progress lines off a terminal', async () => {
    const config = join(dir, 'config.json');
    await writeFile(config, JSON.stringify({ annotations_file: 'annotations.json', image_dir: 'images' }));
    const out = join(dir, 'flat');
    const { stdout, code, stderr } = await cli(['train', '--config', config, '--steps', '2', '--out', out]);
    expect(stderr).not.toContain('error');
    expect(code).toBe(0);
    expect(stdout).toMatch(/^step 1\/2 loss \d+\.\d{4} lr \S+ \d+\.\d samples\/s ETA \d+s$/m);
    expect(stdout).toContain(`succeeded at step 2; checkpoint ${join(out, 'step-000002')}`);
    expect(existsSync(join(out, 'step-000002', 'model.safetensors'))).toBe(true);
  }, 60_000);

  test('train with a job config keeps its keep_checkpoints latest, then infer streams text from its checkpoint', async () => {
    const config = join(dir, 'job.json');
    await writeFile(config, JSON.stringify({ model: TINY_MODEL, data: { type: 'synthetic-shapes', val_size: 2 }, train: { steps: 2, batch_size: 2, checkpoint_every: 1, keep_checkpoints: 1 } }));
    const out = join(dir, 'job');
    expect((await cli(['train', '--config', config, '--out', out])).code).toBe(0);
    expect(readdirSync(out)).toEqual(['step-000002']);
    const args = ['infer', '--checkpoint', join(out, 'step-000002'), '--image', join(dir, 'images', 'scene-0.png')];
    const { stdout, code } = await cli([...args, '--prompt', 'This is an image of ', '--max_length', '12', '--temperature', '0.8', '--seed', '4']);
    expect(code).toBe(0);
    expect(Buffer.byteLength(stdout.trimEnd())).toBeGreaterThan(0);
    expect(Buffer.byteLength(stdout)).toBeLessThanOrEqual(12 * 3 + 1);
    // Seeded sampling: the same command prints the same text.
    expect((await cli([...args, '--max_length', '12', '--seed', '4'])).stdout).toBe(stdout);
  }, 60_000);

  test('train --resume continues from a checkpoint', async () => {
    const config = join(dir, 'resume.json');
    await writeFile(config, JSON.stringify({ model: TINY_MODEL, data: { type: 'synthetic-shapes', val_size: 2 }, train: { steps: 4, batch_size: 2, checkpoint_every: 2 } }));
    const out = join(dir, 'resume');
    expect((await cli(['train', '--config', config, '--out', out])).code).toBe(0);
    const { stdout, code } = await cli(['train', '--config', config, '--resume', join(out, 'step-000002'), '--out', join(dir, 'resumed')]);
    expect(code).toBe(0);
    expect(stdout).not.toMatch(/^step [12]\/4/m);
    expect(stdout).toMatch(/^step 3\/4 loss/m);
    expect(stdout).toContain('succeeded at step 4');
    // A different length would change the learning-rate schedule: not the same run, so refused.
    const longer = await cli(['train', '--config', config, '--steps', '6', '--resume', join(out, 'step-000002'), '--out', join(dir, 'longer')]);
    expect(longer.code).toBe(1);
    expect(longer.stderr).toBe(`error: cannot resume ${join(out, 'step-000002')} exactly: train.steps was 4, now 6\n`);
    // Another model than the checkpoint's would silently be trained as the checkpoint's: refused, naming the options.
    const other = join(dir, 'other-model.json');
    await writeFile(other, JSON.stringify({ model: { ...TINY_MODEL, depth: 2 }, data: { type: 'synthetic-shapes', val_size: 2 }, train: { steps: 4, batch_size: 2, checkpoint_every: 2 } }));
    const changed = await cli(['train', '--config', other, '--resume', join(out, 'step-000002'), '--out', join(dir, 'other')]);
    expect(changed.code).toBe(1);
    expect(changed.stderr).toBe(`error: cannot resume ${join(out, 'step-000002')}: it holds another model than the job asks for (depth was 1, now 2; neuralMemoryLayers was [1], now [1,2])\n`);
  }, 60_000);

  test('train --resume goes on once its base_checkpoint is gone or replaced: the checkpoint it resumes holds the model', async () => {
    const first = join(dir, 'base-run');
    const job = (train: object) => ({ model: TINY_MODEL, data: { type: 'synthetic-shapes', val_size: 2 }, train: { steps: 2, batch_size: 2, ...train } });
    await writeFile(join(dir, 'base.json'), JSON.stringify(job({ steps: 1 })));
    expect((await cli(['train', '--config', join(dir, 'base.json'), '--out', first])).code).toBe(0);
    await writeFile(join(dir, 'based.json'), JSON.stringify({ ...job({ steps: 4, checkpoint_every: 2 }), model: { seed: 3 }, base_checkpoint: 'base-run/step-000001' }));
    const out = join(dir, 'based');
    const based = await cli(['train', '--config', join(dir, 'based.json'), '--steps', '4', '--out', out]);
    expect({ code: based.code, stderr: based.stderr }).toEqual({ code: 0, stderr: '' });
    await rm(first, { recursive: true });
    for (const replaced of [false, true]) {
      // Gone, then a folder of another kind in its place.
      if (replaced) await mkdir(join(first, 'step-000001'), { recursive: true });
      const resumed = await cli(['train', '--config', join(dir, 'based.json'), '--resume', join(out, 'step-000002'), '--out', join(dir, `based-resumed-${replaced}`)]);
      expect({ code: resumed.code, stderr: resumed.stderr }).toEqual({ code: 0, stderr: '' });
      expect(resumed.stdout).toContain('succeeded at step 4');
    }
  }, 60_000);

  test('train --resume refuses a checkpoint it cannot continue exactly, saying why in one line', async () => {
    const config = join(dir, 'refusals.json');
    const job = { model: TINY_MODEL, data: { type: 'synthetic-shapes', val_size: 2 }, train: { steps: 2, batch_size: 2, checkpoint_every: 1 } };
    await writeFile(config, JSON.stringify(job));
    const out = join(dir, 'refusals');
    expect((await cli(['train', '--config', config, '--out', out])).code).toBe(0);
    const checkpoint = join(out, 'step-000001');
    const resume = async (args: string[]) => {
      const { code, stderr } = await cli(['train', ...args, '--out', join(dir, 'refused')]);
      return { code, stderr };
    };
    // A run's folder, not one of its checkpoints.
    expect(await resume(['--config', config, '--resume', out])).toEqual({ code: 1, stderr: `error: ${out} is a training run's folder, not a checkpoint: give one of its checkpoints, such as --resume ${join(out, 'step-000002')}\n` });
    // An encoder frozen now and trained then: the optimizer holds its moments.
    await writeFile(join(dir, 'frozen.json'), JSON.stringify({ ...job, train: { ...job.train, freeze_vision: true } }));
    expect(await resume(['--config', join(dir, 'frozen.json'), '--resume', checkpoint])).toEqual({ code: 1, stderr: `error: cannot resume ${checkpoint} exactly: train.freeze_vision was false, now true\n` });
    // A trainer.json cut short, or of an older version.
    const trainer = join(checkpoint, 'trainer.json');
    const saved = await readFile(trainer, 'utf8');
    await writeFile(trainer, saved.slice(0, 20));
    expect((await resume(['--config', config, '--resume', checkpoint])).stderr).toStartWith(`error: cannot read ${trainer}: `);
    const { batchSize: _, ...older } = JSON.parse(saved);
    await writeFile(trainer, JSON.stringify(older));
    expect((await resume(['--config', config, '--resume', checkpoint])).stderr).toStartWith(`error: cannot resume ${checkpoint}: its trainer.json is not one this version can continue from (batchSize: `);
    await writeFile(trainer, saved);
  }, 60_000);

  test('a SIGTERM stops a run as Ctrl-C does: at the end of its step, saved, and the exit says it did not finish', async () => {
    const config = join(dir, 'signalled.json');
    await writeFile(config, JSON.stringify({ model: TINY_MODEL, data: { type: 'synthetic-shapes', val_size: 2 }, train: { steps: 100_000, batch_size: 2 } }));
    const out = join(dir, 'signalled');
    const child = Bun.spawn([process.execPath, CLI, 'train', '--config', config, '--out', out], { stdout: 'pipe', stderr: 'pipe' });
    const reader = child.stdout.getReader();
    const decoder = new TextDecoder();
    let stdout = '';
    while (!/^step 2\//m.test(stdout)) {
      const { value, done } = await reader.read();
      if (done) break;
      stdout += decoder.decode(value);
    }
    child.kill('SIGTERM');
    for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) stdout += decoder.decode(chunk.value);
    expect(await child.exited).toBe(143);
    const [, step] = /^cancelled at step (\d+); checkpoint /m.exec(stdout)!;
    expect(existsSync(join(out, `step-${step!.padStart(6, '0')}`, 'trainer.json'))).toBe(true);
  }, 60_000);

  test('train without a config uses synthetic scenes', async () => {
    const out = join(dir, 'synthetic');
    const { stdout, code } = await cli(['train', '--steps', '1', '--out', out]);
    expect(code).toBe(0);
    expect(stdout).toContain('eval_loss');
    expect(existsSync(join(out, 'step-000001', 'config.json'))).toBe(true);
    // The run's folder is not a checkpoint: infer names the one to give.
    const run = await cli(['infer', '--checkpoint', out, '--image', join(dir, 'images', 'scene-0.png')]);
    expect({ code: run.code, stderr: run.stderr }).toEqual({ code: 1, stderr: `error: ${out} is a training run's folder, not a checkpoint: give one of its checkpoints, such as --checkpoint ${join(out, 'step-000001')}\n` });
  }, 60_000);

  test('train --preset shapes runs the recipe of the bundled model, both stages, each shortened', async () => {
    const out = join(dir, 'preset');
    const { stdout, code } = await cli(['train', '--preset', 'shapes', '--vision-steps', '1', '--steps', '1', '--out', out]);
    expect(code).toBe(0);
    const config = JSON.parse(await readFile(join(out, 'step-000001', 'config.json'), 'utf8'));
    expect(config.model).toMatchObject(PRESETS.shapes!.model as object);
    expect(stdout).toMatch(/^vision step 1\/1 loss [\d.]+ .*\nvision step 1 accuracy shape [\d.]+ color [\d.]+ size [\d.]+ tokens [\d.]+\nstep 1\/1 loss /m);
    expect(existsSync(join(out, 'vision-pretrained', 'model.safetensors'))).toBe(true);
    expect(stdout).toContain('succeeded at step 1');
    expect((await cli(['train', '--vision-steps', '1'])).stderr).toContain('--vision-steps needs a recipe with vision_pretraining');
    expect((await cli(['train', '--preset', 'nope'])).stderr).toContain("unknown --preset 'nope' (known: shapes, shapes-attention-only, passkey, passkey-attention-only, passkey-depth, passkey-long, passkey-answer, passkey-priced, passkey-short, passkey-hold, passkey-polish, passkey-boundary, passkey-depth-attention-only, passkey-long-attention-only, passkey-answer-attention-only, passkey-priced-attention-only, passkey-short-attention-only, passkey-hold-attention-only, passkey-polish-attention-only, passkey-boundary-attention-only)");
    expect((await cli(['train', '--preset', 'shapes', '--config', 'x.json'])).stderr).toContain('not both');
  }, 120_000);

  test('train --preset passkey runs the passkey recipe: passkey steps only, its memory convolved', async () => {
    const out = join(dir, 'passkey');
    const { stdout, code } = await cli(['train', '--preset', 'passkey', '--steps', '2', '--out', out]);
    expect(code).toBe(0);
    const config = JSON.parse(await readFile(join(out, 'step-000002', 'config.json'), 'utf8'));
    expect(config.model).toMatchObject({ segmentLen: 16, neuralMemoryLayers: [2], neuralMemoryKwargs: { convKernel: 4 } });
    expect(stdout).toContain('step 2 eval_loss');
    expect(stdout).toContain('succeeded at step 2');
  }, 60_000);

  test('bad input: one line naming the problem, exit 1', async () => {
    const missing = await cli(['infer', '--checkpoint', dir]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain('--image');
    const escaping = join(dir, 'escaping.json');
    await writeFile(escaping, JSON.stringify({ annotations_file: '../../outside.json' }));
    const refused = await cli(['train', '--config', escaping]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain('data.annotations_file');
    const unknown = await cli(['fly']);
    expect(unknown.code).toBe(2);
    const none = await cli(['infer', '--checkpoint', dir, '--image', join(dir, 'images', 'scene-0.png'), '--max_length', '0']);
    expect({ code: none.code, stderr: none.stderr.split('\n')[0] }).toEqual({ code: 1, stderr: "error: --max_length must be a whole number >= 1, got '0'" });
    // A seed past 32 bits would draw as a smaller one does.
    const seed = await cli(['infer', '--checkpoint', dir, '--image', join(dir, 'images', 'scene-0.png'), '--seed', '4294967296']);
    expect({ code: seed.code, stderr: seed.stderr.split('\n')[0] }).toEqual({ code: 1, stderr: "error: --seed must be a whole number <= 4294967295, got '4294967296'" });
    // Named by its flag, before any checkpoint is read.
    for (const [flag, value, range] of [['--temperature', '-1', ' >= 0'], ['--top_p', '3', ' in [0, 1]']]) {
      const sampling = await cli(['infer', '--checkpoint', join(dir, 'nothing'), '--image', join(dir, 'images', 'scene-0.png'), `${flag}=${value}`]);
      expect({ code: sampling.code, stderr: sampling.stderr.split('\n')[0] }).toEqual({ code: 1, stderr: `error: ${flag} must be a number${range}, got '${value}'` });
    }
    // Before any training: a run would be lost at its first checkpoint.
    const file = join(dir, 'a-file');
    await writeFile(file, '');
    const out = await cli(['train', '--steps', '1', '--out', file]);
    expect({ code: out.code, stderr: out.stderr.split('\n')[0] }).toEqual({ code: 1, stderr: `error: --out ${file}: cannot write checkpoints there (${file} is a file)` });
    for (const [config, message] of [
      [null, 'must hold a JSON object'],
      [{ image_dir: 'images' }, 'image_dir needs annotations_file'],
    ] as const) {
      await writeFile(join(dir, 'odd.json'), JSON.stringify(config));
      const odd = await cli(['train', '--config', join(dir, 'odd.json')]);
      expect(odd.code).toBe(1);
      expect(odd.stderr).toContain(message);
    }
    const serve = await cli(['serve', '--port', '3']);
    expect({ code: serve.code, stderr: serve.stderr.split('\n')[0] }).toEqual({ code: 1, stderr: "error: serve takes no arguments, got '--port': its settings come from the environment (PORT, HOST, MODEL_DIR, ...; see docs/api.md)" });
  }, 60_000);

  test('--help prints the usage and exits 0, for the whole CLI and for each command', async () => {
    const whole = await cli(['--help']);
    expect(whole).toMatchObject({ code: 0, stderr: '' });
    expect(whole.stdout).toStartWith('usage:\n  bun run train');
    for (const command of ['train', 'infer', 'serve']) {
      const own = await cli([command, '--help']);
      expect(own).toMatchObject({ code: 0, stderr: '' });
      expect(own.stdout).toStartWith(`usage: bun run ${command}`);
    }
  });
});

test('bun run serve starts the server with the training routes', async () => {
  const dataDir = await tempDir();
  const child = Bun.spawn([process.execPath, CLI, 'serve'], {
    stdout: 'pipe',
    stderr: 'pipe',
    env: { ...process.env, PORT: '0', INFERENCE_WORKERS: '1', MODEL_DIR: join(dataDir, 'no-model'), DATA_DIR: dataDir },
  });
  try {
    const reader = child.stdout.getReader();
    let log = '';
    while (!/listening on (\S+)/.test(log)) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`server exited: ${log}`);
      log += new TextDecoder().decode(value);
    }
    const url = /listening on (\S+)/.exec(log)![1]!;
    const response = await fetch(`${url}/v1/training/jobs`);
    expect(response.status).toBe(200);
    expect(await response.json()).toEqual({ object: 'list', data: [], has_more: false });
  } finally {
    child.kill('SIGTERM');
    expect(await child.exited).toBe(0);
  }
}, 60_000);
