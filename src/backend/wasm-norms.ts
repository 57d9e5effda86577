/**
 * The row norms of model/layers.ts (LayerNorm, RMSNorm, L2 normalisation) and the input gradients
 * their gradients take (scaledRowsGradient, layerNormInputGradient) for the WASM backend. Written
 * out, each is 6 to 12 WASM kernels, and each kernel pays tfjs's and the module's fixed cost, some
 * 8 us, whatever its size: one RMSNorm of a decoded token's row took 50 us that way, and a decoded
 * token of the original configuration runs some 34 norms. The norms are one SIMD kernel each
 * (wasm-simd.wat): a LayerNorm of ViT-B/16's [197, 768] takes 104 us, against 270-310 written out
 * and 340 as a JavaScript loop. Their input gradients are one SIMD kernel too: as JavaScript loops,
 * sums in float64, LayerNorm's took 14 ms of a training step of the shapes preset, and take 2.5
 * (docs/performance.md, "The norms as loops on the CPU"). The norms' gradients are model/'s, as on
 * every backend. The neural memory's residual norm, and a decoding store's surprise through it, are
 * JavaScript loops too (registerWasmResidualNormKernels).
 */
import * as tf from '@tensorflow/tfjs-core';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';
import { int32s, requireShape } from './wasm-kernels.ts';
import type { SimdKernels } from './wasm-simd.ts';
import { L2_NORM_KERNEL, LAYER_NORM_INPUT_GRADIENT_KERNEL, LAYER_NORM_KERNEL, RMS_NORM_KERNEL, SCALED_ROWS_GRADIENT_KERNEL } from '../../model/layers.ts';
import { RESIDUAL_NORM_KERNEL, RESIDUAL_NORM_SURPRISE_KERNEL } from '../../model/memory-networks.ts';

type KernelArgs = { inputs: tf.NamedTensorInfoMap; backend: BackendWasm; attrs: tf.NamedAttrMap };

/** What each norm does to a row: whether it centres it first, and whether it averages its squares or sums them. */
const NORMS = {
  [LAYER_NORM_KERNEL]: { centred: true, averaged: true },
  [RMS_NORM_KERNEL]: { centred: false, averaged: true },
  [L2_NORM_KERNEL]: { centred: false, averaged: false },
} as const;

/** Registers the three norms and the two input gradients for 'wasm'; the norms run in `simd`. */
export function registerWasmNormKernels(backend: BackendWasm, simd: SimdKernels): void {
  for (const [kernelName, { centred, averaged }] of Object.entries(NORMS)) {
    const kernelFunc = ({ inputs, attrs }: KernelArgs): tf.TensorInfo => {
      const { x, gain, bias } = inputs as { x: tf.TensorInfo; gain?: tf.TensorInfo; bias?: tf.TensorInfo };
      const out = backend.makeOutput(x.shape, 'float32');
      const size = tf.util.sizeFromShape(x.shape);
      if (size === 0) return out;
      const cols = int32s(x.shape).at(-1)!;
      // A gain or bias that is not given has address 0, which no tensor has.
      const address = (t: tf.TensorInfo | undefined) => (t ? backend.typedArrayFromHeap(t).byteOffset : 0);
      simd.normalizeRows(address(x), address(out), size / cols, cols, Number(centred), Number(averaged), attrs.eps as number, address(gain), address(bias));
      return out;
    };
    tf.registerKernel({ kernelName, backendName: 'wasm', kernelFunc: kernelFunc as unknown as tf.KernelFunc });
  }
  // The input gradients: LayerNorm's of centred rows and their mean square; RMSNorm's and L2's of
  // the rows as they are, and their mean square or sum of squares.
  const gradients = {
    [LAYER_NORM_INPUT_GRADIENT_KERNEL]: () => ({ centred: true, averaged: true }),
    [SCALED_ROWS_GRADIENT_KERNEL]: (attrs: tf.NamedAttrMap) => ({ centred: false, averaged: attrs.reduction === 'mean' }),
  };
  for (const [kernelName, rowsOf] of Object.entries(gradients)) {
    const kernelFunc = ({ inputs, attrs }: KernelArgs): tf.TensorInfo => {
      const { u, x } = inputs as { u: tf.TensorInfo; x: tf.TensorInfo };
      const out = backend.makeOutput(x.shape, 'float32');
      const size = tf.util.sizeFromShape(x.shape);
      if (size === 0) return out;
      const cols = int32s(x.shape).at(-1)!;
      const { centred, averaged } = rowsOf(attrs);
      const [us, xs, outs] = [u, x, out].map((t) => backend.typedArrayFromHeap(t).byteOffset) as [number, number, number];
      simd.normGradientRows(us, xs, outs, size / cols, cols, Number(centred), Number(averaged), attrs.eps as number);
      return out;
    };
    tf.registerKernel({ kernelName, backendName: 'wasm', kernelFunc: kernelFunc as unknown as tf.KernelFunc });
  }
}

/**
 * The neural memory's residual norm (model/memory-networks.ts RESIDUAL_NORM_KERNEL) and a decoding
 * store's surprise through it (RESIDUAL_NORM_SURPRISE_KERNEL) for 'wasm', as JavaScript loops over
 * the heap, sums in float64. Its rows are short (a head's width, 64 in the original configuration):
 * written out, a read is some 10 WASM kernels and a store's surprise some 20, each paying its fixed
 * cost. A decoded token's read of 8 rows a layer gains the most; over a store's 8 heads of 36 rows
 * the loops take about what the launches did (80 us a read, 160 each part of the surprise).
 */
export function registerWasmResidualNormKernels(backend: BackendWasm): void {
  const views = (tensors: (tf.TensorInfo | undefined)[]) => tensors.map((t) => backend.typedArrayFromHeap(t!) as Float32Array);
  const residualNorm = ({ inputs, attrs }: KernelArgs): tf.TensorInfo => {
    const { y, gamma, x } = inputs as Record<'y' | 'gamma' | 'x', tf.TensorInfo>;
    requireResidualShapes(RESIDUAL_NORM_KERNEL, { y: y!, gamma, x });
    const out = backend.makeOutput(y!.shape, 'float32');
    const [ys, gammas, xs, outs] = views([y, gamma, x, out]);
    const [rowsPerHead, cols] = int32s(y!.shape).slice(-2) as [number, number];
    forEachResidualRow(ys!, rowsPerHead, cols, attrs.eps as number, (start, head, normalized) => {
      for (let c = 0; c < cols; c++) outs![start + c] = normalized[c]! * (1 + gammas![head * cols + c]!) + xs![start + c]!;
    });
    return out;
  };
  const residualNormSurprise = ({ inputs, attrs }: KernelArgs): tf.TensorInfo => {
    const { y, gamma, x, values, rowWeights } = inputs as Record<'y' | 'gamma' | 'x' | 'values' | 'rowWeights', tf.TensorInfo>;
    const part = attrs.part as 'input' | 'gamma';
    requireResidualShapes(RESIDUAL_NORM_SURPRISE_KERNEL, { y: y!, gamma, x, values });
    requireShape(RESIDUAL_NORM_SURPRISE_KERNEL, 'rowWeights', rowWeights, [...y!.shape.slice(0, -1), 1]);
    const out = backend.makeOutput(part === 'input' ? y!.shape : gamma!.shape, 'float32');
    const [ys, gammas, xs, vs, weights, outs] = views([y, gamma, x, values, rowWeights, out]);
    const [rowsPerHead, cols] = int32s(y!.shape).slice(-2) as [number, number];
    if (part === 'gamma') outs!.fill(0);
    const error = new Float64Array(cols);
    forEachResidualRow(ys!, rowsPerHead, cols, attrs.eps as number, (start, head, normalized, inverseStd) => {
      // e = (n (1 + gamma) + x - v) r 2 / dim, r the row's weight.
      const scale = (weights![start / cols]! * 2) / cols;
      for (let c = 0; c < cols; c++) error[c] = (normalized[c]! * (1 + gammas![head * cols + c]!) + xs![start + c]! - vs![start + c]!) * scale;
      if (part === 'gamma') {
        for (let c = 0; c < cols; c++) outs![head * cols + c]! += error[c]! * normalized[c]!;
        return;
      }
      // LayerNorm's input gradient of u = e (1 + gamma): r (u - mean(u) - n mean(u n)).
      let [uMean, unMean] = [0, 0];
      for (let c = 0; c < cols; c++) {
        const u = error[c]! * (1 + gammas![head * cols + c]!);
        error[c] = u;
        uMean += u;
        unMean += u * normalized[c]!;
      }
      [uMean, unMean] = [uMean / cols, unMean / cols];
      for (let c = 0; c < cols; c++) outs![start + c] = inverseStd * (error[c]! - uMean - normalized[c]! * unMean);
    });
    return out;
  };
  tf.registerKernel({ kernelName: RESIDUAL_NORM_KERNEL, backendName: 'wasm', kernelFunc: residualNorm as unknown as tf.KernelFunc });
  tf.registerKernel({ kernelName: RESIDUAL_NORM_SURPRISE_KERNEL, backendName: 'wasm', kernelFunc: residualNormSurprise as unknown as tf.KernelFunc });
}

/**
 * Calls `row` for each row of y [B, H, n, cols] with its start, its head (gamma's row) and its
 * standardised values (y - mean) r, r = (variance + eps)^-1/2 (in a buffer that the next row reuses).
 */
function forEachResidualRow(
  y: Float32Array, rowsPerHead: number, cols: number, eps: number,
  row: (start: number, head: number, normalized: Float64Array, inverseStd: number) => void,
): void {
  const normalized = new Float64Array(cols);
  for (let start = 0, index = 0; start < y.length; start += cols, index++) {
    let mean = 0;
    for (let c = 0; c < cols; c++) mean += y[start + c]!;
    mean /= cols;
    let squares = 0;
    for (let c = 0; c < cols; c++) squares += (y[start + c]! - mean) ** 2;
    const inverseStd = 1 / Math.sqrt(squares / cols + eps);
    for (let c = 0; c < cols; c++) normalized[c] = (y[start + c]! - mean) * inverseStd;
    row(start, Math.floor(index / rowsPerHead), normalized, inverseStd);
  }
}

/** y, x (and values) of one shape [..., rows, cols]; gamma one row a head, [..., 1, cols]. */
function requireResidualShapes(kernel: string, { y, gamma, ...full }: { y: tf.TensorInfo } & Record<string, tf.TensorInfo | undefined>): void {
  for (const [name, tensor] of Object.entries(full)) requireShape(kernel, name, tensor, y.shape);
  requireShape(kernel, 'gamma', gamma, [...y.shape.slice(0, -2), 1, y.shape.at(-1)!]);
}
