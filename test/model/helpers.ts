/** Tiny model settings shared by the model tests: small enough to train in seconds on one WASM thread. */
import * as tf from '@tensorflow/tfjs-core';
import type { MultimodalMACOptions } from '../../model/config.ts';

export const TINY: MultimodalMACOptions = {
  imageSize: 16,
  patchSize: 8,
  visionDim: 32,
  visionDepth: 1,
  visionHeads: 2,
  visionMlpDim: 64,
  visionDropout: 0,
  textDim: 32,
  depth: 2,
  segmentLen: 4,
  dimHead: 8,
  heads: 2,
  ffMult: 2,
  numPersistMemTokens: 2,
  numLongtermMemTokens: 2,
  projectionDim: 32,
  fusionDropout: 0,
  seed: 7,
};

export function maxAbsDifference(a: tf.Tensor, b: tf.Tensor): number {
  return tf.tidy(() => a.sub(b).abs().max().dataSync()[0]!);
}

/** A solid-colour image [3, S, S] in the model's normalised range. */
export function solidImage(size: number, rgb: [number, number, number]): tf.Tensor3D {
  return tf.tidy(() => tf.stack(rgb.map((c) => tf.fill([size, size], c / 127.5 - 1))) as tf.Tensor3D);
}

export function ids(rows: number[][]): tf.Tensor2D {
  return tf.tensor2d(rows, [rows.length, rows[0]!.length], 'int32');
}

/** The tokens and text of a generation stream, read to its end. */
export async function collect(stream: AsyncGenerator<{ tokenId: number; text: string }, unknown>): Promise<{ tokens: number[]; text: string }> {
  const tokens: number[] = [];
  let text = '';
  for await (const t of stream) {
    tokens.push(t.tokenId);
    text += t.text;
  }
  return { tokens, text };
}
