/** The library surface of titans-mm (DESIGN.md section 1). */
export { MultimodalMAC, loadCheckpoint } from './multimodal-mac.ts';
export { ImageProcessor, ImageError, IMAGENET_MEAN, IMAGENET_STD, type ImageProcessorOptions } from './image.ts';
export { selectBackend, describeBackend, type BackendInfo } from './backend/select.ts';
export { saveCheckpoint, readCheckpointConfig, readTrainingState, CheckpointError } from '../model/checkpoint.ts';
export { VisionTransformerEncoder, type ImageEncoder } from '../model/vit.ts';
export { MemoryAsContextTransformer } from '../model/mac.ts';
export { NeuralMemory } from '../model/neural-memory.ts';
export { ByteTokenizer, StreamDecoder } from '../model/tokenizer.ts';
export { ConfigError, type MultimodalMACOptions, type MultimodalMACConfig } from '../model/config.ts';
export { GenerationBatch, type GenerateOptions, type GeneratedToken, type GenerationResult, type FinishReason, type GenerationRequest, type BatchEvent } from '../model/generate.ts';
