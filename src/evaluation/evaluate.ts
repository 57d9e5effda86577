/**
 * One model's evaluation: which model the server serves, its captions of the validation images and,
 * when asked, the passkey task; or needle in a haystack alone.
 */
import { servedModel, type ServedModelInfo } from './api-client.ts';
import { evaluateCaptions, type CaptionEvalResult } from './caption-eval.ts';
import { evaluateNeedle, type NeedleEvalOptions, type NeedleResult } from './needle-eval.ts';
import { evaluatePasskey, type PasskeyResult } from './passkey-eval.ts';
import type { ValidationImage } from './validation-images.ts';

export interface EvalSettings {
  seed: number;
  prompt: string;
  /** Bytes of text before each prompt (0: none). */
  longPrompt: number;
  maxTokens: number;
  concurrency: number;
  /** null: no passkey evaluation. */
  passkey: { segments: readonly number[]; keys: number } | null;
  onProgress?: (what: string, done: number, total: number) => void;
}

export interface ModelReport {
  model: ServedModelInfo;
  captions: CaptionEvalResult;
  passkey?: PasskeyResult;
}

/** A model evaluated on the passkey task alone. */
export interface PasskeyReport {
  model: ServedModelInfo;
  passkey: PasskeyResult;
}

/** A model evaluated on needle in a haystack. */
export interface NeedleReport {
  model: ServedModelInfo;
  needle: NeedleResult;
}

export type PasskeySettings = Pick<EvalSettings, 'seed' | 'concurrency'> & { passkey: NonNullable<EvalSettings['passkey']> };

export async function evaluateServer(url: string, images: ValidationImage[], settings: EvalSettings): Promise<ModelReport> {
  const model = await servedModel(url);
  const { seed, prompt, longPrompt, maxTokens, concurrency, onProgress } = settings;
  const captions = await evaluateCaptions(url, images, { seed, prompt, longPrompt, maxTokens, concurrency, onProgress: (done, total) => onProgress?.('captions', done, total) });
  if (!settings.passkey) return { model, captions };
  return { model, captions, passkey: await passkeyOf(url, model, { ...settings, passkey: settings.passkey }) };
}

export async function evaluatePasskeyServer(url: string, settings: PasskeySettings): Promise<PasskeyReport> {
  const model = await servedModel(url);
  return { model, passkey: await passkeyOf(url, model, settings) };
}

export async function evaluateNeedleServer(url: string, options: NeedleEvalOptions): Promise<NeedleReport> {
  return { model: await servedModel(url), needle: await evaluateNeedle(url, options) };
}

/** Filler lengths are counted in the served model's own segments. */
function passkeyOf(url: string, model: ServedModelInfo, { passkey, seed, concurrency }: PasskeySettings): Promise<PasskeyResult> {
  return evaluatePasskey(url, { ...passkey, segmentLen: model.segmentLen, seed, concurrency });
}
