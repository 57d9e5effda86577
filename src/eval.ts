/**
 * `bun run eval`: exact-match captioning accuracy of a checkpoint on the validation split, every
 * image saved in the variants of docs/shapes.md and captioned through the HTTP API; `--ablation`
 * sets it beside an attention-only checkpoint, and the passkey model beside its attention-only twin
 * on the passkey task; `--needle` runs that pair on needle in a haystack instead. See
 * src/evaluation/args.ts.
 */
import { parseEvalArgs, USAGE } from './evaluation/args.ts';
import { UsageError } from './flags.ts';
import { runEval } from './evaluation/run.ts';

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  // Asked for, the usage goes to stdout and is no failure.
  if (argv.includes('--help') || argv.includes('-h')) {
    console.log(USAGE);
    return;
  }
  const args = parseEvalArgs(argv);
  const { text, failed } = await runEval(args);
  console.log(text);
  // The report stands, failures scored wrong; the status tells a script that the run was not clean.
  if (failed > 0) {
    console.error(`eval: ${failed} request(s) failed, scored wrong (the report says why)`);
    process.exitCode = 1;
  }
}

if (import.meta.main) {
  main().catch((error: Error) => {
    console.error(error instanceof UsageError ? `${error.message}\n${USAGE}` : `eval failed: ${error.message}`);
    process.exit(error instanceof UsageError ? 2 : 1);
  });
}
