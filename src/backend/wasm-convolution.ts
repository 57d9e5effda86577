/**
 * A convolution's input gradient (Conv2DBackpropInput, NHWC) for the WASM backend with a native
 * BLAS, as one product and a scatter. WASM's own kernel is a plain C++ loop: 2.4 GFLOP/s here, 63 ms
 * for one layer of the shapes preset's convolutional stem at batch 16, where its forward convolution
 * (XNNPACK) takes 5. Here each output position's gradient is first spread over the window it read,
 * cols[position, (ky, kx, in)] = dy[position, :] . W[ky, kx, in, :] (one sgemm of dy by W^T), and
 * each window row of cols is then added into the input rows it came from.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';
import { ptr } from 'bun:ffi';
import type { OpenedBlas } from './blas.ts';
import { int32s } from './wasm-kernels.ts';

/** Replaces WASM's Conv2DBackpropInput where the data are NHWC float32; NCHW stays with it. */
export function registerBlasConvolutionInputGradient(blas: OpenedBlas): void {
  const config = tf.getKernel(tf.Conv2DBackpropInput, 'wasm')!;
  const stock = config.kernelFunc;
  const kernelFunc: tf.KernelFunc = (args) => {
    const { inputs: { dy, filter }, attrs } = args as unknown as { inputs: { dy: tf.TensorInfo; filter: tf.TensorInfo }; attrs: tf.NamedAttrMap };
    const { strides, pad, dataFormat, dimRoundingMode, inputShape } = attrs as unknown as tf.Conv2DBackpropInputAttrs;
    if (dataFormat === 'NCHW' || dy.dtype !== 'float32') return stock(args);
    const info = tf.backend_util.computeConv2DInfo(inputShape, filter.shape as [number, number, number, number], strides, 1, pad, dimRoundingMode);
    const [batch, height, width, inChannels, outHeight, outWidth, outChannels, kernelHeight, kernelWidth, strideY, strideX, top, left] = int32s([
      info.batchSize, info.inHeight, info.inWidth, info.inChannels, info.outHeight, info.outWidth, info.outChannels,
      info.filterHeight, info.filterWidth, info.strideHeight, info.strideWidth, info.padInfo.top, info.padInfo.left,
    ]) as Tuple13;
    const geometry = { batch, height, width, inChannels, outHeight, outWidth, kernelHeight, kernelWidth, strideY, strideX, top, left };
    const backend = args.backend as BackendWasm;
    const dx = backend.makeOutput(info.inShape, 'float32');
    const [positions, window] = [batch * outHeight * outWidth, kernelHeight * kernelWidth * inChannels];
    if (positions * window * outChannels === 0) {
      (backend.typedArrayFromHeap(dx) as Float32Array).fill(0);
      return dx;
    }
    const cols = backend.makeOutput([positions, window], 'float32');
    try {
      // Views of the heap are taken after makeOutput, which may grow it.
      const [dys, filters, colsOut, dxs] = [dy, filter, cols, dx].map((t) => backend.typedArrayFromHeap(t) as Float32Array) as [Float32Array, Float32Array, Float32Array, Float32Array];
      // The filter [kh, kw, in, out] is a [window, out] matrix: cols = dy [positions, out] x filter^T.
      blas.sgemm(false, true, positions, window, outChannels, ptr(dys), outChannels, ptr(filters), outChannels, ptr(colsOut), window);
      dxs.fill(0);
      scatterWindows(colsOut, geometry, dxs);
    } catch (error) {
      backend.disposeData(dx.dataId);
      throw error;
    } finally {
      backend.disposeData(cols.dataId);
    }
    return dx;
  };
  tf.unregisterKernel(tf.Conv2DBackpropInput, 'wasm');
  tf.registerKernel({ ...config, kernelFunc });
}

type Tuple13 = [number, number, number, number, number, number, number, number, number, number, number, number, number];

interface Geometry {
  batch: number; height: number; width: number; inChannels: number; outHeight: number; outWidth: number;
  kernelHeight: number; kernelWidth: number; strideY: number; strideX: number; top: number; left: number;
}

/** Adds each output position's window of cols (rows of kh x kw x in) into the input rows that window read, in dx [N, H, W, in]. */
function scatterWindows(cols: Float32Array, g: Geometry, dx: Float32Array): void {
  const { batch, height, width, inChannels, outHeight, outWidth, kernelHeight, kernelWidth, strideY, strideX, top, left } = g;
  let from = 0;
  for (let n = 0; n < batch; n++) {
    for (let oy = 0; oy < outHeight; oy++) {
      for (let ox = 0; ox < outWidth; ox++) {
        for (let ky = 0; ky < kernelHeight; ky++) {
          const y = oy * strideY + ky - top;
          for (let kx = 0; kx < kernelWidth; kx++, from += inChannels) {
            const x = ox * strideX + kx - left;
            if (y < 0 || y >= height || x < 0 || x >= width) continue;
            const to = ((n * height + y) * width + x) * inChannels;
            for (let c = 0; c < inChannels; c++) dx[to + c]! += cols[from + c]!;
          }
        }
      }
    }
  }
}
