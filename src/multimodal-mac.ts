/**
 * The public MultimodalMAC: the network of model/ plus the ImageProcessor its config describes, so
 * that `model.imageProcessor.preprocess(bytes)` gives exactly the input the model was trained on.
 * The processor lives here, not in model/, because model/ knows nothing of image files.
 */
import type { MultimodalMACOptions } from '../model/config.ts';
import { loadCheckpoint as loadNetworkCheckpoint } from '../model/checkpoint.ts';
import { MultimodalMACNetwork } from '../model/multimodal.ts';
import { ImageProcessor } from './image.ts';

export class MultimodalMAC extends MultimodalMACNetwork {
  readonly imageProcessor: ImageProcessor;

  constructor(options: MultimodalMACOptions = {}) {
    super(options);
    const { imageSize, imageMean, imageStd, imageResize } = this.config;
    this.imageProcessor = new ImageProcessor({ imageSize, mean: imageMean, std: imageStd, resize: imageResize });
  }
}

/** Loads a checkpoint folder as a MultimodalMAC with its image processor. */
export function loadCheckpoint(dir: string): Promise<MultimodalMAC> {
  return loadNetworkCheckpoint(dir, (options) => new MultimodalMAC(options));
}
