/**
 * Kernels of the webgpu tier beyond tfjs-backend-webgpu 4.22's own.
 *
 * A repair of its AddN. Its shader binds every input as a storage buffer, and a WebGPU device allows
 * 8 per shader stage unless it asks for more, which tfjs does not: with more than 7 inputs the
 * pipeline is invalid, and the sum comes back unwritten, with nothing but a validation message on
 * stderr. Gradient clipping once summed one square per parameter (40 for the shapes preset). Here the
 * inputs are added in groups that fit, then the groups' sums.
 *
 * One-launch kernels for what model/ writes out in several TensorFlow.js ops and names a kernel
 * for (model/layers.ts, memory-networks.ts, attention.ts): x W + b and a gate's sigmoid of it (and x
 * W, a weight's product without a bias, one launch either way), the
 * norms (LayerNorm, RMSNorm, L2 normalisation, the memory's residual norm) and the input gradients of
 * three of them, GELU and its first two derivatives, a causal convolution, one query's attention,
 * a ViT's self-attention, a pre-norm with the product after it, and a decoding step's window,
 * attention and memory read. On a GPU every launch costs about the same whatever its size; written
 * out, these are 2 to some 20 launches each (docs/gpu.md). The affine map is tfjs-backend-webgpu's
 * own fused product, which adds the bias and applies the sigmoid in the product's shader; the others
 * run the WGSL of webgpu-programs.ts. The WASM tier registers x W + b, x W and self-attention where a native BLAS runs
 * (blas.ts, wasm-attention.ts), and the norms, their input gradients and GELU with its derivatives
 * (wasm-norms.ts, wasm-simd.ts), none of the others.
 */
import * as tf from '@tensorflow/tfjs-core';
import { PROJECTED_ATTENTION_KERNEL, WINDOW_APPEND_KERNEL } from '../../model/attention.ts';
import {
  AFFINE_KERNEL, ATTENTION_KERNEL, CAUSAL_CONV_KERNEL, GELU_DERIVATIVE_KERNEL, GELU_KERNEL, GELU_SECOND_DERIVATIVE_KERNEL, L2_NORM_KERNEL,
  LAYER_NORM_INPUT_GRADIENT_KERNEL, LAYER_NORM_KERNEL, NORMALIZED_AFFINE_GELU_KERNEL, NORMALIZED_PRODUCT_KERNEL, PRODUCT_KERNEL, RMS_NORM_KERNEL, SCALED_ROWS_GRADIENT_KERNEL,
  SELF_ATTENTION_KERNEL,
} from '../../model/layers.ts';
import { MEMORY_READ_KERNEL, RESIDUAL_NORM_KERNEL, RESIDUAL_NORM_SURPRISE_KERNEL } from '../../model/memory-networks.ts';
import { CLIP_FACTOR_KERNEL, FORGET_STEP_KERNEL, MOMENTUM_STEP_KERNEL } from '../../model/memory-update.ts';
import { PROJECTED_HEADS_KERNEL } from '../../model/neural-memory.ts';
import {
  ROWS_LAYOUT, attentionProgram, causalConvolutionProgram, clipFactorProgram, forgetStepProgram, geluProgram, layerNormInputGradientProgram, memoryReadProgram, momentumStepProgram, normalizedProductProgram, packedLayout, projectedHeadsProgram, projectedLayout, residualNormSurpriseProgram, rowNormProgram,
  scaledRowsGradientProgram, windowAppendProgram,
  type GeluFunction, type Program, type RowNorm,
} from './webgpu-programs.ts';

type AddNKernel = (args: { inputs: tf.TensorInfo[]; backend: tf.KernelBackend }) => tf.TensorInfo;

/** Replaces the backend's AddN by one that adds at most `maxInputs` tensors per launch; call once. */
export function registerGroupedAddN(backendName: string, maxInputs: number): void {
  const stock = tf.getKernel(tf.AddN, backendName)!.kernelFunc as unknown as AddNKernel;
  const addN: AddNKernel = ({ inputs, backend }) => {
    const partialSums: tf.TensorInfo[] = [];
    let terms = inputs;
    while (terms.length > maxInputs) {
      const sums: tf.TensorInfo[] = [];
      for (let start = 0; start < terms.length; start += maxInputs) {
        const group = terms.slice(start, start + maxInputs);
        if (group.length === 1) {
          sums.push(group[0]!);
          continue;
        }
        const sum = stock({ inputs: group, backend });
        partialSums.push(sum);
        sums.push(sum);
      }
      terms = sums;
    }
    const total = stock({ inputs: terms, backend });
    for (const sum of partialSums) backend.disposeData(sum.dataId);
    return total;
  };
  tf.unregisterKernel(tf.AddN, backendName);
  tf.registerKernel({ kernelName: tf.AddN, backendName, kernelFunc: addN as unknown as tf.KernelFunc });
}

interface WebGPUBackend extends tf.KernelBackend {
  runWebGPUProgram(program: Program, inputs: tf.TensorInfo[], outputDtype: tf.DataType): tf.TensorInfo;
}

type KernelArgs = { inputs: tf.NamedTensorInfoMap; backend: WebGPUBackend; attrs: tf.NamedAttrMap };

/**
 * The rows up to which a pre-norm and its product run as one program, a decoding step's: that
 * program reads the whole weight for each row, where tfjs's tiled product shares it between rows.
 */
const FEW_ROWS = 16;

/**
 * Runs a row program over the rows of `rows` (its last axis the columns). The inputs are read as
 * matrices of those columns, the same buffers through other strides, except vectors (a gain, a
 * bias), which stay; the output takes the shape of `rows`.
 */
function overRows(backend: WebGPUBackend, rows: tf.TensorInfo, inputs: tf.TensorInfo[], program: (size: [number, number]) => Program): tf.TensorInfo {
  const cols = rows.shape.at(-1)!;
  const asMatrix = (t: tf.TensorInfo) => (t.shape.length === 1 ? t : { ...t, shape: [tf.util.sizeFromShape(t.shape) / cols, cols] });
  const out = backend.runWebGPUProgram(program([tf.util.sizeFromShape(rows.shape) / cols, cols]), inputs.map(asMatrix), 'float32');
  return { ...out, shape: rows.shape };
}

/** Registers the one-launch kernels for the webgpu backend; call once it is registered. */
export function registerFusedKernels(): void {
  const fusedMatMul = tf.getKernel(tf._FusedMatMul, 'webgpu')!.kernelFunc as unknown as (args: KernelArgs) => tf.TensorInfo;
  const affine = ({ inputs, backend, attrs }: KernelArgs): tf.TensorInfo =>
    fusedMatMul({ inputs: { a: inputs.x!, b: inputs.weight!, bias: inputs.bias! }, backend, attrs: { transposeA: false, transposeB: false, activation: attrs.activation! } });
  const product = ({ inputs, backend }: KernelArgs): tf.TensorInfo =>
    fusedMatMul({ inputs: { a: inputs.x!, b: inputs.weight! }, backend, attrs: { transposeA: false, transposeB: false, activation: 'linear' } });
  const rowNorm = (kind: RowNorm, rows: string, others: string[]) => ({ inputs, backend, attrs }: KernelArgs) =>
    overRows(backend, inputs[rows]!, [rows, ...others].map((name) => inputs[name]!), (size) => rowNormProgram(kind, size, attrs.eps as number));
  const scaledRowsGradient = ({ inputs, backend, attrs }: KernelArgs) =>
    overRows(backend, inputs.x!, [inputs.u!, inputs.x!], (size) => scaledRowsGradientProgram(size, attrs.eps as number, attrs.reduction === 'mean'));
  const layerNormInputGradient = ({ inputs, backend, attrs }: KernelArgs) =>
    overRows(backend, inputs.x!, [inputs.u!, inputs.x!], (size) => layerNormInputGradientProgram(size, attrs.eps as number));
  /** Keys and values [G, H, Tk, dh] as matrices [G * H * Tk, dh]. */
  const byRow = (t: tf.TensorInfo) => ({ ...t, shape: [tf.util.sizeFromShape(t.shape) / t.shape.at(-1)!, t.shape.at(-1)!] });
  const attention = ({ inputs, backend }: KernelArgs) =>
    overRows(backend, inputs.q!, [inputs.q!, inputs.k!, inputs.v!], ([rows, dh]) => attentionProgram(rows, dh, ROWS_LAYOUT));
  const projectedAttention = ({ inputs, backend }: KernelArgs): tf.TensorInfo => {
    const [projection, rotation, k, v] = [inputs.projection!, inputs.rotation!, inputs.keys!, inputs.values!];
    const [groups, heads, , dh] = k.shape as [number, number, number, number];
    const program = attentionProgram(groups * heads, dh, projectedLayout(heads, dh));
    const out = backend.runWebGPUProgram(program, [{ ...projection, shape: [groups, 3 * heads * dh] }, rotation, byRow(k), byRow(v)], 'float32');
    return { ...out, shape: [groups, heads, 1, dh] };
  };
  const selfAttention = ({ inputs, backend, attrs }: KernelArgs): tf.TensorInfo => {
    const qkv = inputs.qkv!;
    const [batch, length, packed] = qkv.shape as [number, number, number];
    const heads = attrs.heads as number;
    const dh = packed / 3 / heads;
    const program = attentionProgram(batch * length * heads, dh, packedLayout(heads, dh, length));
    const out = backend.runWebGPUProgram(program, [{ ...qkv, shape: [batch * length, packed] }], 'float32');
    return { ...out, shape: [batch, length, heads * dh] };
  };
  const windowAppend = ({ inputs, backend, attrs }: KernelArgs): tf.TensorInfo => {
    const { cached, projection, rotation } = inputs as { cached: tf.TensorInfo; projection: tf.TensorInfo; rotation?: tf.TensorInfo };
    const [groups, heads, , dh] = cached.shape as [number, number, number, number];
    const [part, keep, persist] = [attrs.part, attrs.keep, attrs.persist] as number[];
    const windowRows = persist! + keep! + 1;
    const program = windowAppendProgram(groups * heads * windowRows, dh, heads, part!, persist!, rotation !== undefined);
    const matrices = [byRow(cached), { ...projection, shape: [groups, 3 * heads * dh] }, ...(rotation ? [rotation] : [])];
    const out = backend.runWebGPUProgram(program, matrices, 'float32');
    return { ...out, shape: [groups, heads, windowRows, dh] };
  };
  const memoryRead = ({ inputs, backend, attrs }: KernelArgs): tf.TensorInfo => {
    const projected = inputs.projected!;
    const residualNormEps = attrs.residualNormEps as number;
    const layers = Array.from({ length: Object.keys(inputs).length - 1 }, (_, l) => inputs[`weight${l}`]!);
    const gamma = residualNormEps > 0 ? [layers.pop()!] : [];
    const [batch, heads, dh] = layers[0]!.shape as [number, number, number];
    const rows = projected.shape[1]!;
    const widths = [dh, ...layers.map((w) => w.shape[3]!)];
    const program = memoryReadProgram(batch * heads * rows, heads, widths, attrs.normalizeQueries as boolean, residualNormEps);
    const matrices = [{ ...projected, shape: [batch * rows, projected.shape[2]!] }, ...[...layers, ...gamma].map(byRow)];
    const out = backend.runWebGPUProgram(program, matrices, 'float32');
    return { ...out, shape: [batch, heads, rows, dh] };
  };
  /** RMSNorm(x) W, or with `affineGelu` GELU(RMSNorm(x) W + b). */
  const normalizedProduct = (affineGelu: boolean) => ({ inputs, backend, attrs }: KernelArgs): tf.TensorInfo => {
    const [x, gain, weight, bias] = [inputs.x!, inputs.gain!, inputs.weight!, inputs.bias];
    const [rows, inDim] = x.shape as [number, number];
    const eps = attrs.eps as number;
    if (rows <= FEW_ROWS) {
      return backend.runWebGPUProgram(normalizedProductProgram([rows, inDim, weight.shape[1]!], eps, affineGelu), [x, gain, weight, ...(bias ? [bias] : [])], 'float32');
    }
    // Many rows: the norm, then tfjs's product (with the bias), then GELU, as written out.
    const normalized = overRows(backend, x, [x, gain], (size) => rowNormProgram('rms', size, eps));
    const product = fusedMatMul({ inputs: { a: normalized, b: weight, ...(bias ? { bias } : {}) }, backend, attrs: { transposeA: false, transposeB: false, activation: 'linear' } });
    backend.disposeData(normalized.dataId);
    if (!affineGelu) return product;
    const activated = backend.runWebGPUProgram(geluProgram('gelu', product.shape), [product], 'float32');
    backend.disposeData(product.dataId);
    return activated;
  };
  const causalConvolution = ({ inputs, backend }: KernelArgs): tf.TensorInfo => {
    const [x, weight] = [inputs.x!, inputs.weight!];
    const [batch, rows, channels] = x.shape as [number, number, number];
    return backend.runWebGPUProgram(causalConvolutionProgram([batch, rows - (weight.shape[0]! - 1), channels]), [x, weight], 'float32');
  };
  /** A memory weight [B, H, a, b] as the matrix [B H, a b]; a per-head factor [B, H, 1, 1] as the vector [B H]. */
  const byHead = (t: tf.TensorInfo) => ({ ...t, shape: [t.shape[0]! * t.shape[1]!, tf.util.sizeFromShape(t.shape.slice(2))] });
  const headFactor = (t: tf.TensorInfo) => ({ ...t, shape: [t.shape[0]! * t.shape[1]!] });
  // These kernels take their inputs as a list (model/memory-update.ts).
  const clipFactor = ({ inputs, backend, attrs }: KernelArgs): tf.TensorInfo => {
    const surprises = inputs as unknown as tf.TensorInfo[];
    const [batch, heads] = surprises[0]!.shape as [number, number];
    const out = backend.runWebGPUProgram(clipFactorProgram(batch * heads, surprises.length, attrs.maxNorm as number), surprises.map(byHead), 'float32');
    return { ...out, shape: [batch, heads, 1, 1] };
  };
  const momentumStep = ({ inputs, backend, attrs }: KernelArgs): tf.TensorInfo => {
    const [surprise, ...rest] = inputs as unknown as tf.TensorInfo[];
    const [clipped, withMomentum] = [attrs.clipped as boolean, attrs.withMomentum as boolean];
    const clip = clipped ? [headFactor(rest.shift()!)] : [];
    const momentum = withMomentum ? [headFactor(rest[0]!), byHead(rest[1]!)] : [];
    const matrix = byHead(surprise!);
    const out = backend.runWebGPUProgram(momentumStepProgram(matrix.shape as [number, number], clipped, withMomentum), [matrix, ...clip, ...momentum], 'float32');
    return { ...out, shape: surprise!.shape };
  };
  const forgetStep = ({ inputs, backend }: KernelArgs): tf.TensorInfo => {
    const [weights, forgetting, update] = inputs as unknown as tf.TensorInfo[];
    const matrix = byHead(weights!);
    const out = backend.runWebGPUProgram(forgetStepProgram(matrix.shape as [number, number]), [matrix, headFactor(forgetting!), byHead(update!)], 'float32');
    return { ...out, shape: weights!.shape };
  };
  const residualNormSurprise = ({ inputs, backend, attrs }: KernelArgs): tf.TensorInfo => {
    const { y, gamma, x, values, rowWeights } = inputs as Record<string, tf.TensorInfo>;
    const [batch, heads, rows, dim] = y!.shape as [number, number, number, number];
    const part = attrs.part as 'input' | 'gamma';
    const outRows = part === 'input' ? batch * heads * rows : batch * heads;
    const program = residualNormSurpriseProgram(part, [outRows, dim], attrs.eps as number);
    const out = backend.runWebGPUProgram(program, [byRow(y!), byRow(gamma!), byRow(x!), byRow(values!), { ...rowWeights!, shape: [batch * heads * rows] }], 'float32');
    return { ...out, shape: part === 'input' ? y!.shape : gamma!.shape };
  };
  const projectedHeads = ({ inputs, backend, attrs }: KernelArgs): tf.TensorInfo => {
    const projected = inputs.projected!;
    const [batch, rows, width] = projected.shape as [number, number, number];
    const heads = attrs.heads as number;
    const dh = width / (3 * heads);
    const program = projectedHeadsProgram(batch * heads * rows, dh, heads, attrs.part as number, attrs.normalize as boolean);
    const out = backend.runWebGPUProgram(program, [projected], 'float32');
    return { ...out, shape: [batch, heads, rows, dh] };
  };
  const gelu = (kind: GeluFunction) => ({ inputs, backend }: KernelArgs): tf.TensorInfo => backend.runWebGPUProgram(geluProgram(kind, inputs.x!.shape), [inputs.x!], 'float32');
  const kernels = [
    [AFFINE_KERNEL, affine], [PRODUCT_KERNEL, product], [LAYER_NORM_KERNEL, rowNorm('layer', 'x', ['gain', 'bias'])], [RMS_NORM_KERNEL, rowNorm('rms', 'x', ['gain'])],
    [L2_NORM_KERNEL, rowNorm('l2', 'x', [])], [RESIDUAL_NORM_KERNEL, rowNorm('residual', 'y', ['gamma', 'x'])],
    [SCALED_ROWS_GRADIENT_KERNEL, scaledRowsGradient], [LAYER_NORM_INPUT_GRADIENT_KERNEL, layerNormInputGradient],
    [GELU_KERNEL, gelu('gelu')], [GELU_DERIVATIVE_KERNEL, gelu('derivative')], [GELU_SECOND_DERIVATIVE_KERNEL, gelu('secondDerivative')],
    [CAUSAL_CONV_KERNEL, causalConvolution], [ATTENTION_KERNEL, attention], [SELF_ATTENTION_KERNEL, selfAttention], [PROJECTED_ATTENTION_KERNEL, projectedAttention],
    [WINDOW_APPEND_KERNEL, windowAppend], [MEMORY_READ_KERNEL, memoryRead], [NORMALIZED_AFFINE_GELU_KERNEL, normalizedProduct(true)],
    [NORMALIZED_PRODUCT_KERNEL, normalizedProduct(false)], [CLIP_FACTOR_KERNEL, clipFactor], [MOMENTUM_STEP_KERNEL, momentumStep], [FORGET_STEP_KERNEL, forgetStep],
    [RESIDUAL_NORM_SURPRISE_KERNEL, residualNormSurprise], [PROJECTED_HEADS_KERNEL, projectedHeads],
  ] as const;
  for (const [kernelName, kernelFunc] of kernels) {
    if (!tf.getKernel(kernelName, 'webgpu')) tf.registerKernel({ kernelName, backendName: 'webgpu', kernelFunc: kernelFunc as unknown as tf.KernelFunc });
  }
}
