/**
 * Captions the validation images through POST /v1/captions, a few requests in flight so that every
 * inference worker is busy, and scores the answers.
 */
import { haystackAt } from '../data/needle.ts';
import { captionFile } from './api-client.ts';
import { mapConcurrent } from './concurrency.ts';
import { exactMatch, scoreCaptions, type CaptionScores } from './scoring.ts';
import type { ValidationImage } from './validation-images.ts';

export interface CaptionEvalOptions {
  /** Seed of the long prompts' sentences. */
  seed: number;
  prompt: string;
  /** Bytes of the needle evaluation's varied sentences before the prompt, one text per scene (0: none). */
  longPrompt: number;
  maxTokens: number;
  /** Requests in flight. */
  concurrency: number;
  onProgress?: (done: number, total: number) => void;
}

export interface CaptionItem extends ValidationImage {
  /** null when the request failed (see error). */
  predicted: string | null;
  exact: boolean;
  /** The server's id of the response that captioned this file. */
  responseId?: string;
  completionTokens?: number;
  error?: string;
}

export interface CaptionEvalResult {
  scores: CaptionScores;
  items: CaptionItem[];
  /** Bytes of text before each prompt. */
  longPrompt: number;
  seconds: number;
  /** Wall time per request with `concurrency` in flight. */
  msPerImage: number;
  tokensPerSecond: number;
}

export async function evaluateCaptions(url: string, images: ValidationImage[], options: CaptionEvalOptions): Promise<CaptionEvalResult> {
  const started = performance.now();
  let done = 0;
  const items = await mapConcurrent(images, options.concurrency, async (image): Promise<CaptionItem> => {
    try {
      const before = options.longPrompt === 0 ? '' : haystackAt(options.seed, 'validation', image.scene, 'sentences', options.longPrompt).text;
      const { id, text, completionTokens } = await captionFile(url, image.path, { prompt: before + options.prompt, maxTokens: options.maxTokens });
      return { ...image, predicted: text, exact: exactMatch(image.expected, text), responseId: id, completionTokens };
    } catch (error) {
      // One failed request is a wrong answer, reported with its reason, not the end of the run.
      return { ...image, predicted: null, exact: false, error: (error as Error).message };
    } finally {
      options.onProgress?.(++done, images.length);
    }
  });
  const seconds = (performance.now() - started) / 1000;
  const tokens = items.reduce((sum, item) => sum + (item.completionTokens ?? 0), 0);
  return {
    scores: scoreCaptions(items),
    items,
    longPrompt: options.longPrompt,
    seconds,
    msPerImage: images.length === 0 ? 0 : (seconds * 1000) / images.length,
    tokensPerSecond: seconds === 0 ? 0 : tokens / seconds,
  };
}
