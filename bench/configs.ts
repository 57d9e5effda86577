/** The model configurations that the benches measure. */
import type { MultimodalMACOptions } from '../model/config.ts';

export const BENCH_CONFIGS: Record<'original' | 'small', MultimodalMACOptions> = {
  // The original README's example: ViT-B/16 on 224 x 224 images, a 384-wide, 8-deep text model.
  original: { imageSize: 224, patchSize: 16, visionDim: 768, visionDepth: 12, visionHeads: 12, visionMlpDim: 3072,
    textDim: 384, depth: 8, segmentLen: 32 },
  small: { imageSize: 64, patchSize: 8, visionDim: 128, visionDepth: 2, visionHeads: 4, visionMlpDim: 256,
    textDim: 128, depth: 2, segmentLen: 16, heads: 4, dimHead: 32, projectionDim: 128 },
};
