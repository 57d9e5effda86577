/**
 * The WASM backend's copying kernels, and Equal where an operand broadcasts, made cheaper.
 * tfjs-backend-wasm 4.22 does the copies in JavaScript:
 * - Slice and SplitV copy one innermost row at a time, each through a new typed-array view, after
 *   first copying the whole input out of the heap (`readSync`). A caption training step of the
 *   bundled recipe slices heads, segments and memory chunks of 32 to 128 floats a row thousands of
 *   times: the two took 137 of its 763 ms of kernel time.
 * - Identity and a Cast to the same dtype copy the whole tensor. Every tensor that a gradient keeps
 *   for the backward pass goes through Identity, about a thousand a step.
 * - Tile (and broadcastTo, which runs it) is C++ that works out each output element's index on its
 *   own: 0.6 ms to repeat 2,048 floats four times, where copying the four runs takes microseconds.
 *   A prefill repeats each layer's persistent keys and values over its windows so.
 * - Transpose is C++ with fast paths up to four dimensions (size-one ones dropped) and a path for more
 *   that works out each element's index: 6.7 ms, 45 ns an element, for the patches of one 224 px
 *   image ([1, 3, 14, 16, 14, 16] to [1, 14, 14, 3, 16, 16]), where the four-dimensional ones take
 *   0.3-0.8 ns.
 * Here a slice reads the input in place, merges the trailing dimensions it takes whole into one
 * contiguous run and copies short runs with a plain loop; a tile copies the input's rows, or its
 * runs of trailing dimensions that are not repeated, whole; a transpose of more than four dimensions
 * copies the runs of the trailing dimensions it leaves in place; Identity and a same-dtype Cast share
 * the input's memory, as Reshape does and as the CPU backend's own Identity does (tensors are
 * immutable).
 * The values are the same copies, so every result is bit for bit that of the stock kernels.
 *
 * Equal of two float32 tensors of which one broadcasts is C++ that works out each element's index,
 * 54 ns an element (7 without a broadcast): the gradient of a max over a few rows takes one
 * (model/multimodal.ts poolPatchGrid), 14 ms of a training step of the shapes preset. Here a loop
 * over the output's innermost runs compares them.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';

type TypedArray = Float32Array | Int32Array | Uint8Array;
type KernelArgs = { inputs: tf.NamedTensorInfoMap; backend: BackendWasm; attrs: tf.NamedAttrMap };
type Kernel = (args: KernelArgs) => tf.TensorInfo | tf.TensorInfo[];

// Below this many elements a loop beats creating a subarray view for `set`.
const SHORTEST_SET = 64;

/** Replaces the WASM backend's Slice, SplitV, Tile, Transpose, Identity, Cast and Equal; call once, after it is registered. */
export function registerWasmCopyKernels(): void {
  const stock = (name: string) => tf.getKernel(name, 'wasm')!.kernelFunc as unknown as Kernel;
  const stockSlice = stock(tf.Slice);
  const stockIdentity = stock(tf.Identity);
  const stockCast = stock(tf.Cast);
  const stockTile = stock(tf.Tile);
  const stockTranspose = stock(tf.Transpose);
  const stockEqual = stock(tf.Equal);
  // Strings live outside the heap: the stock kernels keep them.
  const slice = (args: KernelArgs): tf.TensorInfo => {
    const x = args.inputs.x as tf.TensorInfo;
    if (x.dtype === 'string') return stockSlice(args) as tf.TensorInfo;
    const [begin, size] = tf.slice_util.parseSliceParams(x as tf.Tensor, args.attrs.begin as number[], args.attrs.size as number[]).map(int32s);
    return copyInto(args.backend, x, size!, (source, out) => copyStrided(source, int32s(x.shape), begin!, size!, out));
  };
  const splitV = ({ inputs, attrs, backend }: KernelArgs): tf.TensorInfo[] => {
    const x = inputs.x as tf.TensorInfo;
    const axis = tf.util.parseAxisParam(attrs.axis as number, x.shape)[0]!;
    const sizes = tf.backend_util.prepareSplitSize(x as tf.Tensor, attrs.numOrSizeSplits as number[] | number, axis);
    const begin = x.shape.map(() => 0);
    return sizes.map((length) => {
      const size = [...x.shape];
      size[axis] = length;
      const part = slice({ inputs: { x }, backend, attrs: { begin: [...begin], size } });
      begin[axis]! += length;
      return part;
    });
  };
  const tile = (args: KernelArgs): tf.TensorInfo => {
    const { inputs: { x }, attrs: { reps }, backend } = args as KernelArgs & { inputs: { x: tf.TensorInfo }; attrs: { reps: number[] } };
    if (x.dtype === 'string') return stockTile(args) as tf.TensorInfo;
    return copyInto(backend, x, x.shape.map((size, d) => size * reps[d]!), (source, out) => tileInto(source, int32s(x.shape), int32s(reps), out));
  };
  const transpose = (args: KernelArgs): tf.TensorInfo => {
    const { inputs: { x }, attrs: { perm }, backend } = args as KernelArgs & { inputs: { x: tf.TensorInfo }; attrs: { perm: number[] } };
    if (x.dtype === 'string' || x.shape.filter((size) => size !== 1).length <= 4) return stockTranspose(args) as tf.TensorInfo;
    return copyInto(backend, x, perm.map((axis) => x.shape[axis]!), (source, out) => transposeInto(source, int32s(x.shape), perm, out));
  };
  const share = (args: KernelArgs, fallback: Kernel): tf.TensorInfo | tf.TensorInfo[] => {
    const x = args.inputs.x as tf.TensorInfo;
    const dtype = (args.attrs?.dtype as tf.DataType | undefined) ?? x.dtype;
    if (x.dtype === 'string' || dtype !== x.dtype) return fallback(args);
    args.backend.incRef(x.dataId);
    return { dataId: x.dataId, shape: x.shape, dtype };
  };
  replaceKernel(tf.Slice, slice);
  replaceKernel(tf.SplitV, splitV);
  replaceKernel(tf.Tile, tile);
  replaceKernel(tf.Transpose, transpose);
  const equal = (args: KernelArgs): tf.TensorInfo => {
    const { a, b } = args.inputs as { a: tf.TensorInfo; b: tf.TensorInfo };
    if (a.dtype !== 'float32' || b.dtype !== 'float32' || tf.util.arraysEqual(a.shape, b.shape)) return stockEqual(args) as tf.TensorInfo;
    const shape = int32s(tf.backend_util.assertAndGetBroadcastShape(a.shape, b.shape));
    const out = args.backend.makeOutput(shape, 'bool');
    if (tf.util.sizeFromShape(shape) === 0) return out;
    // Views of the heap are taken after makeOutput, which may grow it.
    const [as, bs] = [a, b].map((t) => args.backend.typedArrayFromHeap(t) as Float32Array) as [Float32Array, Float32Array];
    equalBroadcast(as, broadcastSteps(a.shape, shape), bs, broadcastSteps(b.shape, shape), shape, args.backend.typedArrayFromHeap(out) as Uint8Array);
    return out;
  };
  replaceKernel(tf.Equal, equal);
  replaceKernel(tf.Identity, (args) => share(args, stockIdentity));
  replaceKernel(tf.Cast, (args) => share(args, stockCast));
}

/**
 * Sizes as 32-bit integers, for loops that index typed arrays with them. TensorFlow.js works some
 * sizes out by division (a reshape's -1), and JavaScriptCore then keeps that shape, and every shape
 * copied from it, as doubles; a loop indexed by doubles runs at less than half speed, and the first
 * such call recompiles it so for good (a ViT-B/16 LayerNorm took 830 us after one encode, 340 before).
 */
export function int32s(sizes: readonly number[]): number[] {
  return sizes.map((size) => size | 0);
}

/**
 * Throws unless `tensor` has `shape`: a kernel that reads operands in place in the heap would read
 * past one that is smaller (one the written-out ops would broadcast), so its contract is checked.
 */
export function requireShape(kernel: string, operand: string, tensor: tf.TensorInfo | undefined, shape: number[]): void {
  if (tensor && !tf.util.arraysEqual(tensor.shape, shape)) throw new Error(`${kernel}: ${operand} must be [${shape.join(', ')}], got [${tensor.shape.join(', ')}]`);
}

function replaceKernel(kernelName: string, kernelFunc: Kernel): void {
  tf.unregisterKernel(kernelName, 'wasm');
  tf.registerKernel({ kernelName, backendName: 'wasm', kernelFunc: kernelFunc as unknown as tf.KernelFunc });
}

/** A new output of `shape`, x's dtype, that `copy` fills from x's values, both read in place in the heap. */
function copyInto(backend: BackendWasm, x: tf.TensorInfo, shape: number[], copy: (source: TypedArray, out: TypedArray) => void): tf.TensorInfo {
  const out = backend.makeOutput(shape, x.dtype);
  if (tf.util.sizeFromShape(shape) === 0) return out;
  // Views of the heap are taken after makeOutput: allocating may grow it, which detaches older views.
  copy(backend.typedArrayFromHeap(x) as TypedArray, backend.typedArrayFromHeap(out) as TypedArray);
  return out;
}

/**
 * A new float32 output of `shape` that `fill` writes, where it has elements; freed again where
 * `fill` throws. Views of the heap are to be taken inside `fill`: makeOutput may grow the heap,
 * which detaches older views.
 */
export function filledOutput(backend: BackendWasm, shape: number[], fill: (out: tf.TensorInfo) => void): tf.TensorInfo {
  const out = backend.makeOutput(shape, 'float32');
  if (tf.util.sizeFromShape(shape) === 0) return out;
  try {
    fill(out);
  } catch (error) {
    backend.disposeData(out.dataId);
    throw error;
  }
  return out;
}

/**
 * A new float32 output of `shape` that `fill` computes from the inputs' values and a scratch tensor
 * of `scratchShape`, all read in place in the heap. The scratch is freed after, and the output too
 * where `fill` throws.
 */
export function withScratch(
  backend: BackendWasm, shape: number[], scratchShape: number[], inputs: tf.TensorInfo[],
  fill: (inputs: Float32Array[], scratch: Float32Array, out: Float32Array) => void,
): tf.TensorInfo {
  return filledOutput(backend, shape, (out) => {
    const scratch = backend.makeOutput(scratchShape, 'float32');
    try {
      const view = (t: tf.TensorInfo) => backend.typedArrayFromHeap(t) as Float32Array;
      fill(inputs.map(view), view(scratch), view(out));
    } finally {
      backend.disposeData(scratch.dataId);
    }
  });
}

/** Copies the box [begin, begin + size) of `source` (row-major, `shape`) into `out`. */
export function copyStrided(source: TypedArray, shape: number[], begin: number[], size: number[], out: TypedArray): void {
  const strides = [...tf.util.computeStrides(shape), 1];
  // The dimensions after `last` are taken whole: with `last` they make one contiguous run.
  let last = shape.length - 1;
  while (last > 0 && size[last] === shape[last]) last--;
  const start = begin.slice(0, last + 1).reduce((offset, b, d) => offset + b * strides[d]!, 0);
  copyRuns(source, start, size.slice(0, last), strides.slice(0, last), size[last]! * strides[last]!, out);
}

/**
 * Fills `out` with runs of `run` elements of `source`, read from `start` on and stepped like an
 * odometer over `sizes`: its innermost axis adds its step, and a full turn of an axis carries into
 * the one before.
 */
function copyRuns(source: TypedArray, start: number, sizes: number[], steps: number[], run: number, out: TypedArray): void {
  const index = new Array<number>(sizes.length).fill(0);
  let from = start;
  for (let to = 0; to < out.length; to += run) {
    if (run >= SHORTEST_SET) out.set(source.subarray(from, from + run), to);
    else for (let i = 0; i < run; i++) out[to + i] = source[from + i]!;
    for (let d = sizes.length - 1; d >= 0; d--) {
      from += steps[d]!;
      if (++index[d]! < sizes[d]!) break;
      from -= sizes[d]! * steps[d]!;
      index[d] = 0;
    }
  }
}

/** Writes `source` (row-major, `shape`) repeated reps[d] times along each dimension d into `out`. */
export function tileInto(source: TypedArray, shape: number[], reps: number[], out: TypedArray): void {
  // The trailing dimensions from `whole` on are not repeated: each of their blocks is one run.
  let whole = shape.length;
  while (whole > 0 && reps[whole - 1] === 1) whole--;
  const run = shape.slice(whole).reduce((a, b) => a * b, 1);
  const outer = shape.slice(0, whole).map((size, d) => size * reps[d]!);
  const strides = [...tf.util.computeStrides(shape.slice(0, whole)), 1].map((stride) => stride * run);
  const index = new Array<number>(whole).fill(0);
  for (let to = 0; to < out.length; to += run) {
    const from = index.reduce((offset, i, d) => offset + (i % shape[d]!) * strides[d]!, 0);
    if (run >= SHORTEST_SET) out.set(source.subarray(from, from + run), to);
    else for (let i = 0; i < run; i++) out[to + i] = source[from + i]!;
    for (let d = whole - 1; d >= 0 && ++index[d]! === outer[d]!; d--) index[d] = 0;
  }
}

/** Writes `source` (row-major, `shape`) with its axes in the order `perm` into `out`. */
export function transposeInto(source: TypedArray, shape: number[], perm: number[], out: TypedArray): void {
  // The trailing axes from `kept` on stay where they are: each of their blocks is one run.
  let kept = shape.length;
  while (kept > 0 && perm[kept - 1] === kept - 1) kept--;
  const sourceStrides = [...tf.util.computeStrides(shape), 1];
  const outer = perm.slice(0, kept);
  copyRuns(source, 0, outer.map((axis) => shape[axis]!), outer.map((axis) => sourceStrides[axis]!), shape.slice(kept).reduce((a, b) => a * b, 1), out);
}

/** The step in a row-major array of `shape` along each axis of `outShape`, which it broadcasts to: 0 along an axis it repeats. */
function broadcastSteps(shape: readonly number[], outShape: number[]): number[] {
  const padded = [...new Array<number>(outShape.length - shape.length).fill(1), ...int32s(shape)];
  const strides = [...tf.util.computeStrides(padded), 1];
  return padded.map((size, d) => (size === 1 ? 0 : strides[d]!));
}

/** out = (a == b) over `shape`, each operand read at its own steps (broadcastSteps), run by innermost run. */
function equalBroadcast(a: Float32Array, aSteps: number[], b: Float32Array, bSteps: number[], shape: number[], out: Uint8Array): void {
  const last = shape.length - 1;
  const [run, aStep, bStep] = [shape[last]!, aSteps[last]!, bSteps[last]!];
  const index = new Array<number>(last).fill(0);
  let [atA, atB] = [0, 0];
  for (let start = 0; start < out.length; start += run) {
    for (let i = 0; i < run; i++) out[start + i] = a[atA + i * aStep] === b[atB + i * bStep] ? 1 : 0;
    // The odometer of copyRuns, over both operands.
    for (let d = last - 1; d >= 0; d--) {
      atA += aSteps[d]!;
      atB += bSteps[d]!;
      if (++index[d]! < shape[d]!) break;
      atA -= shape[d]! * aSteps[d]!;
      atB -= shape[d]! * bSteps[d]!;
      index[d] = 0;
    }
  }
}
