/**
 * A model card: what a checkpoint knows, in a few plain sentences, served with the model in
 * GET /v1/models, so that a client learns what a model's answers are worth before reading them. It
 * is card.json in the checkpoint folder: the bundled models carry theirs, and a training job writes
 * one beside each checkpoint, from the data it trained on.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { PRETRAINED_DIR } from './checkpoint-folders.ts';
import type { JobSpec } from './spec.ts';

export interface ModelCard {
  /** One sentence: what the model is. */
  summary: string;
  /** What it learned from. */
  trained_on: string;
  /** What it does not know, and what it does when asked anyway. */
  limitations: string;
}

export const CARD_FILE = 'card.json';

/** The card of a freshly initialised model. */
export const UNTRAINED_CARD: ModelCard = Object.freeze({
  summary: 'A freshly initialised, untrained model.',
  trained_on: 'nothing',
  limitations: 'Its weights are random: every byte it writes is noise.',
});

/** The card in `checkpoint` (null for a freshly initialised model); null when it has none or it cannot be read. */
export async function readModelCard(checkpoint: string | null): Promise<ModelCard | null> {
  if (checkpoint === null) return UNTRAINED_CARD;
  try {
    const card = JSON.parse(await readFile(join(checkpoint, CARD_FILE), 'utf8')) as Partial<ModelCard>;
    if (typeof card.summary !== 'string' || typeof card.trained_on !== 'string' || typeof card.limitations !== 'string') return null;
    return { summary: card.summary, trained_on: card.trained_on, limitations: card.limitations };
  } catch {
    return null;
  }
}

export function writeModelCard(dir: string, card: ModelCard): Promise<void> {
  return writeFile(join(dir, CARD_FILE), `${JSON.stringify(card, null, 2)}\n`);
}

/** The card of a checkpoint a training job wrote at `step`: what its data was. */
export function jobCard(spec: JobSpec, step: number): ModelCard {
  const { data } = spec;
  const sources: Record<JobSpec['data']['type'], string> = {
    'synthetic-shapes': 'the synthetic shape scenes of docs/shapes.md',
    annotations: `the image/caption pairs listed in ${basename(data.annotations_file ?? '')}`,
    coco: `the COCO captions of ${basename(data.captions_file ?? '')}`,
    text: `the text of ${basename(data.text_data_path ?? '')}`,
    passkey: 'passkey retrieval examples (src/data/passkey.ts)',
  };
  const extras = [
    data.type !== 'text' && data.text_data_path !== undefined && `the text of ${basename(data.text_data_path)}`,
    data.type !== 'passkey' && data.passkey !== undefined && 'passkey retrieval examples',
  ].filter((extra): extra is string => typeof extra === 'string');
  const trainedOn = [sources[data.type], ...extras].join(', with ');
  // The caption stage of a two-stage run starts from the pretrained encoder's model, resumed or not.
  const start = spec.vision_pretraining ? PRETRAINED_DIR : spec.base_checkpoint && basename(spec.base_checkpoint);
  const base = start ? `, starting from the checkpoint ${start}` : '';
  return {
    summary: `A model trained by a training job: step ${step} of ${spec.train.steps}.`,
    trained_on: `${trainedOn}${base}.`,
    limitations: 'It knows what that data shows and nothing else: anything else still gets an answer in the words of that data, which says nothing true about it.',
  };
}
