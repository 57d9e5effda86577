/**
 * A convolution and its gradients (Conv2D, Conv2DBackpropInput, Conv2DBackpropFilter; NHWC) for the
 * WASM backend with a native BLAS. Where oneDNN's primitives run, all three run on its convolution
 * primitives (onednn-primitives.ts). At the shapes preset's stem (batch 16, 3 x 3 at stride 2),
 * oneDNN takes 1.1-1.7 ms for a forward convolution where XNNPACK takes about 5, 0.8-1.8 for an input
 * gradient against 5.6-6.5 and 1.0-1.9 for a filter gradient against 4.4-4.8 below.
 *
 * Elsewhere (OpenBLAS) the two gradients are each one product and a loop over the windows. WASM's
 * own input gradient is a plain C++ loop: 2.4 GFLOP/s here, 63 ms for one layer of the stem at
 * batch 16, where its forward convolution (XNNPACK) takes 5; it has no filter gradient, which
 * model/layers.ts otherwise writes as a forward convolution (3 GFLOP/s at the stem's shapes: a
 * filter as large as the image). With cols[position, (ky, kx, in)] the window that an output
 * position reads (zero outside the input):
 * - the input gradient spreads each position's gradient over its window, cols = dy W^T (one sgemm),
 *   then adds each window row back into the input rows it came from;
 * - the filter gradient gathers the windows of x, then dW = cols^T dy (one sgemm).
 */
import * as tf from '@tensorflow/tfjs-core';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';
import { ptr, type Pointer } from 'bun:ffi';
import type { OpenedBlas } from './blas.ts';
import type { OneDnnPrimitives } from './onednn-primitives.ts';
import { filledOutput, int32s, withScratch } from './wasm-kernels.ts';

/** Registers both gradients for 'wasm', where the data are NHWC float32; others stay with WASM's input gradient. */
export function registerBlasConvolutionGradients(blas: OpenedBlas): void {
  const stockInputGradient = tf.getKernel(tf.Conv2DBackpropInput, 'wasm')!;
  const inputGradient: tf.KernelFunc = (args) => {
    const { inputs: { dy, filter }, attrs } = args as unknown as { inputs: { dy: tf.TensorInfo; filter: tf.TensorInfo }; attrs: tf.Conv2DBackpropInputAttrs };
    if (attrs.dataFormat === 'NCHW' || dy.dtype !== 'float32') return stockInputGradient.kernelFunc(args);
    const g = geometryOf(tf.backend_util.computeConv2DInfo(attrs.inputShape, filter.shape as Shape4, attrs.strides, 1, attrs.pad, attrs.dimRoundingMode));
    // The filter [kh, kw, in, out] is a [window, out] matrix: cols = dy [positions, out] x filter^T.
    return throughWindows(args.backend as BackendWasm, g, [g.batch, g.height, g.width, g.inChannels], [dy, filter], ([dys, filters], cols, dx) => {
      blas.sgemm(false, true, g.positions, g.window, g.outChannels, ptr(dys!), g.outChannels, ptr(filters!), g.outChannels, ptr(cols), g.window);
      dx.fill(0);
      scatterWindows(cols, g, dx);
    });
  };
  const filterGradient: tf.KernelFunc = (args) => {
    const { inputs: { x, dy }, attrs } = args as unknown as { inputs: { x: tf.TensorInfo; dy: tf.TensorInfo }; attrs: tf.Conv2DBackpropFilterAttrs };
    if (attrs.dataFormat === 'NCHW' || x.dtype !== 'float32') throw new Error("WASM's Conv2DBackpropFilter takes NHWC float32 data");
    const g = geometryOf(tf.backend_util.computeConv2DInfo(x.shape as Shape4, attrs.filterShape, attrs.strides, 1, attrs.pad, attrs.dimRoundingMode));
    // dW [window, out] = cols^T [window, positions] x dy [positions, out].
    return throughWindows(args.backend as BackendWasm, g, [g.kernelHeight, g.kernelWidth, g.inChannels, g.outChannels], [x, dy], ([xs, dys], cols, dw) => {
      gatherWindows(xs!, g, cols);
      blas.sgemm(true, false, g.window, g.outChannels, g.positions, ptr(cols), g.window, ptr(dys!), g.outChannels, ptr(dw), g.outChannels);
    });
  };
  tf.unregisterKernel(tf.Conv2DBackpropInput, 'wasm');
  tf.registerKernel({ ...stockInputGradient, kernelFunc: inputGradient });
  tf.registerKernel({ kernelName: tf.Conv2DBackpropFilter, backendName: 'wasm', kernelFunc: filterGradient });
}

type KernelArgs = Parameters<tf.KernelFunc>[0];
/** A convolution as a kernel's arguments describe it: its geometry, its two operands, and the shape of what it computes. */
type Described = { info: tf.backend_util.Conv2DInfo; inputs: tf.TensorInfo[]; shape: number[] };

/**
 * Registers the convolution and both its gradients for 'wasm' on oneDNN, where the data are NHWC
 * float32 and the filter is not dilated; the kernels registered before take the rest.
 */
export function registerOneDnnConvolution(primitives: OneDnnPrimitives): void {
  /** Registers `kernelName`: `run` computes the convolution that `describe` finds into a new output of its shape, where oneDNN takes it. */
  const register = (
    kernelName: string,
    describe: (args: KernelArgs) => Described,
    run: (info: tf.backend_util.Conv2DInfo, inputs: Pointer[], out: Pointer) => void,
  ) => {
    // tfjs types getKernel as always found; it is undefined where nothing is registered.
    const before = tf.getKernel(kernelName, 'wasm') as tf.KernelConfig | undefined;
    const kernelFunc: tf.KernelFunc = (args) => {
      const described = describe(args);
      if (!onOneDnn(described)) {
        if (!before) throw new Error(`WASM has no ${kernelName} kernel for these operands`);
        return before.kernelFunc(args);
      }
      const backend = args.backend as BackendWasm;
      return filledOutput(backend, described.shape, (out) => {
        const view = (t: tf.TensorInfo) => ptr(backend.typedArrayFromHeap(t) as Float32Array);
        run(described.info, described.inputs.map(view), view(out));
      });
    };
    if (before) tf.unregisterKernel(kernelName, 'wasm');
    tf.registerKernel({ kernelName, backendName: 'wasm', kernelFunc });
  };
  /** oneDNN takes float32 channels-last data without dilation; empty operands stay with the kernels before. */
  const onOneDnn = ({ info, inputs, shape }: Described) =>
    info.dataFormat === 'channelsLast' && info.dilationHeight === 1 && info.dilationWidth === 1
    && inputs.every((input) => input.dtype === 'float32') && [...inputs.map((input) => input.shape), shape].every((dims) => tf.util.sizeFromShape(dims) > 0);
  const infoOf = (inShape: number[], filterShape: number[], attrs: tf.NamedAttrMap) =>
    tf.backend_util.computeConv2DInfo(
      inShape as Shape4, filterShape as Shape4, attrs.strides as number | [number, number], (attrs.dilations as number | [number, number] | undefined) ?? 1,
      attrs.pad as 'valid' | 'same' | number, attrs.dimRoundingMode as 'floor' | 'round' | 'ceil' | undefined, false,
      tf.backend_util.convertConv2DDataFormat(attrs.dataFormat as 'NHWC' | 'NCHW'),
    );
  register(tf.Conv2D, ({ inputs: { x, filter }, attrs }) => {
    const info = infoOf(x!.shape, filter!.shape, attrs!);
    return { info, inputs: [x!, filter!], shape: info.outShape };
  }, (info, [x, filter], out) => primitives.convolve(info, x!, filter!, out));
  register(tf.Conv2DBackpropInput, ({ inputs: { dy, filter }, attrs }) => {
    const info = infoOf(attrs!.inputShape as number[], filter!.shape, attrs!);
    return { info, inputs: [dy!, filter!], shape: info.inShape };
  }, (info, [dy, filter], dx) => primitives.convolutionInputGradient(info, dy!, filter!, dx));
  register(tf.Conv2DBackpropFilter, ({ inputs: { x, dy }, attrs }) => {
    const info = infoOf(x!.shape, attrs!.filterShape as number[], attrs!);
    return { info, inputs: [x!, dy!], shape: info.filterShape };
  }, (info, [x, dy], dFilter) => primitives.convolutionFilterGradient(info, x!, dy!, dFilter));
}

type Shape4 = [number, number, number, number];

/** A convolution's sizes as 32-bit integers (wasm-kernels.ts int32s), with its count of output positions and its window's size. */
interface Geometry {
  batch: number; height: number; width: number; inChannels: number; outHeight: number; outWidth: number; outChannels: number;
  kernelHeight: number; kernelWidth: number; strideY: number; strideX: number; top: number; left: number;
  positions: number; window: number;
}

function geometryOf(info: tf.backend_util.Conv2DInfo): Geometry {
  const [batch, height, width, inChannels, outHeight, outWidth, outChannels, kernelHeight, kernelWidth, strideY, strideX, top, left] = int32s([
    info.batchSize, info.inHeight, info.inWidth, info.inChannels, info.outHeight, info.outWidth, info.outChannels,
    info.filterHeight, info.filterWidth, info.strideHeight, info.strideWidth, info.padInfo.top, info.padInfo.left,
  ]) as number[] as [number, number, number, number, number, number, number, number, number, number, number, number, number];
  return {
    batch, height, width, inChannels, outHeight, outWidth, outChannels, kernelHeight, kernelWidth, strideY, strideX, top, left,
    positions: batch * outHeight * outWidth, window: kernelHeight * kernelWidth * inChannels,
  };
}

/** withScratch with cols [positions, window] as the scratch; all zeros where a size is 0. */
function throughWindows(
  backend: BackendWasm, g: Geometry, shape: number[], inputs: tf.TensorInfo[],
  fill: (inputs: Float32Array[], cols: Float32Array, out: Float32Array) => void,
): tf.TensorInfo {
  if (g.positions * g.window * g.outChannels > 0) return withScratch(backend, shape, [g.positions, g.window], inputs, fill);
  const out = backend.makeOutput(shape, 'float32');
  (backend.typedArrayFromHeap(out) as Float32Array).fill(0);
  return out;
}

/** Calls visit(from, to) for each output position's window row: its offset in cols, and that of the input row it reads in x [N, H, W, in], or -1 outside the input. */
function eachWindowRow(g: Geometry, visit: (from: number, to: number) => void): void {
  const { batch, height, width, inChannels, outHeight, outWidth, kernelHeight, kernelWidth, strideY, strideX, top, left } = g;
  let from = 0;
  for (let n = 0; n < batch; n++) {
    for (let oy = 0; oy < outHeight; oy++) {
      for (let ox = 0; ox < outWidth; ox++) {
        for (let ky = 0; ky < kernelHeight; ky++) {
          const y = oy * strideY + ky - top;
          for (let kx = 0; kx < kernelWidth; kx++, from += inChannels) {
            const x = ox * strideX + kx - left;
            visit(from, y < 0 || y >= height || x < 0 || x >= width ? -1 : ((n * height + y) * width + x) * inChannels);
          }
        }
      }
    }
  }
}

/** Adds each window row of cols into the input row of dx [N, H, W, in] it came from. */
function scatterWindows(cols: Float32Array, g: Geometry, dx: Float32Array): void {
  const run = g.inChannels;
  eachWindowRow(g, (from, to) => {
    if (to >= 0) for (let c = 0; c < run; c++) dx[to + c]! += cols[from + c]!;
  });
}

/** Fills cols with the windows that the output positions read from x [N, H, W, in], zero outside it. */
function gatherWindows(x: Float32Array, g: Geometry, cols: Float32Array): void {
  const run = g.inChannels;
  eachWindowRow(g, (from, to) => {
    if (to < 0) cols.fill(0, from, from + run);
    else for (let c = 0; c < run; c++) cols[from + c] = x[to + c]!;
  });
}
