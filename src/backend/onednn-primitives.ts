/**
 * oneDNN's primitives for the WASM backend, where oneDNN runs the products: its JIT code uses the
 * CPU's full vector width (AVX-512, AMX) where WASM's SIMD has 128 bits, and the instance's threads
 * (docs/performance.md, "GELU and softmax on oneDNN", "Products in bfloat16", "A convolution's
 * gradients as products"):
 * - GELU (model/layers.ts GELU_KERNEL, tanh form): a ViT-B/16 GELU of 197 x 3072 took 1.24 ms in
 *   the SIMD module and takes 0.15 on two threads; its values are the formula's within 4e-7. Its
 *   derivative (GELU_DERIVATIVE_KERNEL), which training and the memory's stores take, is the
 *   backward primitive's gradient for a gradient of ones: 0.55 ns a float against 2.75. Short
 *   inputs, a decoded token's, and the second derivative stay in the SIMD module (wasm-simd.ts).
 * - A ViT's self-attention (wasm-attention.ts): the heads of a few images split out of the packed
 *   projection by one reorder, then every head's scores, their softmax and the mix as one primitive
 *   each. In an encode a ViT-B/16 layer's takes 0.6-0.8 ms in bfloat16, where two products a head
 *   took 1.0-1.1; in float32 about what they took.
 * - x W in bfloat16 (MAC_MATMUL_PRECISION=bfloat16, bfloat16.ts): the matmul primitive, on a
 *   weight rounded once into the layout its kernels read (on AMX, blocks of 32 rows by 64 columns,
 *   rows in pairs), and x rounded by a reorder each call. Against dnnl_gemm_bf16bf16f32 on plain
 *   bfloat16 it runs a ViT-B/16 layer's products 1.3-1.9x faster, and a few rows (2-36) 2-3x: that
 *   gemm leaves AMX unused there.
 * - A convolution and both its gradients, channels last (wasm-convolution.ts): at the shapes
 *   preset's stem 3-5x faster than XNNPACK's forward and the BLAS gradients.
 *
 * It speaks oneDNN 2's C API (Debian 12's libdnnl2). oneDNN 3 builds primitives through other
 * calls; there GELU and softmax stay in the SIMD module, convolutions with XNNPACK and the BLAS
 * gradients, and bfloat16 is refused at startup.
 */
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';
import * as tf from '@tensorflow/tfjs-core';
import { dlopen, FFIType, ptr, toArrayBuffer, type Pointer } from 'bun:ffi';
import { GELU_DERIVATIVE_KERNEL, GELU_KERNEL } from '../../model/layers.ts';
import type { MatmulPrecision } from './bfloat16.ts';
import { filledOutput } from './wasm-kernels.ts';

// oneDNN 2's constants (dnnl_types.h); QUERY_WEIGHTS is dnnl_query_weights_md.
const [CPU_ENGINE, IN_ORDER_STREAM, BFLOAT16, FLOAT32, ANY_LAYOUT, FORWARD_TRAINING, FORWARD_INFERENCE, GELU_TANH, SOFTMAX_ACCURATE, CONVOLUTION_DIRECT, QUERY_WEIGHTS] = [1, 1, 2, 3, 1, 64, 96, 0xcf, 0x30000, 1, 131];
const [SOURCE, DESTINATION, WEIGHTS, BIAS, DIFF_SOURCE, DIFF_WEIGHTS, DIFF_DESTINATION] = [1, 17, 33, 41, 129, 161, 145];
/**
 * oneDNN 2's descriptors are C structs that the caller allocates, which oneDNN fills: each under
 * 8 KB here (sizeof in 2.6: a memory's 0.7 KB, a matmul's 2.8, a convolution's 5.9). One too small
 * is written past its end.
 */
const DESCRIPTOR_BYTES = 8192;
/** sizeof(dnnl_memory_desc_t) in oneDNN 2's ABI: what is copied of a layout that a primitive chose. */
const MEMORY_DESCRIPTOR_BYTES = 696;
/**
 * Primitives kept, one per operation and shape, the least recently used dropped: a product has
 * one for each count of rows, and a long prefill or an eval of many lengths runs a few hundred.
 * Making one takes 0.1-2 ms.
 */
const CACHED_PRIMITIVES = 512;
/**
 * A weight is packed in the layout that oneDNN's matmul prefers for a product of this many rows.
 * oneDNN 2.6 prefers the same one at every count (1 to 2048 checked on AMX), and the primitive for
 * another count is made with that layout given.
 */
const LAYOUT_ROWS = 256;

/** A weight of k x n floats in bfloat16, laid out for oneDNN's matmul on this CPU: `packBfloat16`'s result. */
export interface PackedWeight {
  readonly k: number;
  readonly n: number;
  readonly bytes: Uint8Array;
}

export interface OneDnnPrimitives {
  /** GELU over n floats at x into out (the same address for in place). */
  gelu(x: Pointer, out: Pointer, n: number): void;
  /** GELU's derivative over n floats at x into out. */
  geluDerivative(x: Pointer, out: Pointer, n: number): void;
  /**
   * The self-attention of `images` images from their packed projections, each `length` rows of
   * queries, keys and values (3 x `width` floats, each `heads` heads side by side) at qkv, into
   * `length` rows of `width` an image at out. In bfloat16 the queries, keys, values and attention
   * weights are rounded to it, the sums float32.
   */
  selfAttention(qkv: Pointer, images: number, length: number, width: number, heads: number, out: Pointer, precision: MatmulPrecision): void;
  /** n floats at x rounded to bfloat16 (to the nearest, ties to even) at out. */
  toBfloat16(x: Pointer, out: Pointer, n: number): void;
  /** The row-major k x n floats at `weight`, rounded to bfloat16 as `toBfloat16` rounds, in the layout `multiplyBfloat16` reads. */
  packBfloat16(weight: Pointer, k: number, n: number): PackedWeight;
  /**
   * x W of the row-major m x k floats at x, rounded to bfloat16, by a packed W, summed in float32
   * into the m x n floats at out: plus the n floats at `bias` where given, and added onto the values
   * out holds where `accumulate`.
   */
  multiplyBfloat16(x: Pointer, m: number, weight: PackedWeight, bias: Pointer | undefined, out: Pointer, accumulate: boolean): void;
  /**
   * GELU(x W1 + b1) W2 + b2 of the row-major m x k floats at x, by packed weights and their biases,
   * into the m x n floats at out: x rounded to bfloat16 as for a product, the hidden rows rounded to
   * it after their GELU, every sum float32.
   */
  feedForwardBfloat16(x: Pointer, m: number, up: PackedWeight, upBias: Pointer, down: PackedWeight, downBias: Pointer, out: Pointer): void;
  /** The convolution that `info` describes (channels last, an HWIO filter, no dilation) of x by the filter, into out. */
  convolve(info: tf.backend_util.Conv2DInfo, x: Pointer, filter: Pointer, out: Pointer): void;
  /** That convolution's gradient for x, from the output's gradient dy, into dx. */
  convolutionInputGradient(info: tf.backend_util.Conv2DInfo, dy: Pointer, filter: Pointer, dx: Pointer): void;
  /** That convolution's gradient for the filter, from x and dy, into dFilter. */
  convolutionFilterGradient(info: tf.backend_util.Conv2DInfo, x: Pointer, dy: Pointer, dFilter: Pointer): void;
}

function openLibrary(library: string) {
  const P = FFIType.ptr;
  const I32 = FFIType.i32;
  return dlopen(library, {
    dnnl_engine_create: { args: [P, I32, FFIType.u64], returns: I32 },
    dnnl_stream_create: { args: [P, P, FFIType.u32], returns: I32 },
    dnnl_stream_wait: { args: [P], returns: I32 },
    dnnl_memory_desc_init_by_strides: { args: [P, I32, P, I32, P], returns: I32 },
    dnnl_memory_desc_init_by_tag: { args: [P, I32, P, I32, I32], returns: I32 },
    dnnl_memory_desc_get_size: { args: [P], returns: FFIType.u64 },
    dnnl_eltwise_forward_desc_init: { args: [P, I32, I32, P, FFIType.f32, FFIType.f32], returns: I32 },
    dnnl_eltwise_backward_desc_init: { args: [P, I32, P, P, FFIType.f32, FFIType.f32], returns: I32 },
    dnnl_softmax_v2_forward_desc_init: { args: [P, I32, I32, P, P, I32], returns: I32 },
    dnnl_matmul_desc_init: { args: [P, P, P, P, P], returns: I32 },
    dnnl_convolution_forward_desc_init: { args: [P, I32, I32, P, P, P, P, P, P, P], returns: I32 },
    dnnl_convolution_backward_data_desc_init: { args: [P, I32, P, P, P, P, P, P], returns: I32 },
    dnnl_convolution_backward_weights_desc_init: { args: [P, I32, P, P, P, P, P, P, P], returns: I32 },
    dnnl_reorder_primitive_desc_create: { args: [P, P, P, P, P, P], returns: I32 },
    dnnl_primitive_attr_create: { args: [P], returns: I32 },
    dnnl_primitive_attr_set_output_scales: { args: [P, FFIType.i64, I32, P], returns: I32 },
    dnnl_primitive_attr_destroy: { args: [P], returns: I32 },
    dnnl_primitive_attr_set_post_ops: { args: [P, P], returns: I32 },
    dnnl_post_ops_create: { args: [P], returns: I32 },
    dnnl_post_ops_append_sum: { args: [P, FFIType.f32], returns: I32 },
    dnnl_post_ops_append_eltwise: { args: [P, FFIType.f32, I32, FFIType.f32, FFIType.f32], returns: I32 },
    dnnl_post_ops_destroy: { args: [P], returns: I32 },
    dnnl_primitive_desc_create: { args: [P, P, P, P, P], returns: I32 },
    dnnl_primitive_desc_query_md: { args: [P, I32, I32], returns: P },
    dnnl_primitive_desc_destroy: { args: [P], returns: I32 },
    dnnl_primitive_create: { args: [P, P], returns: I32 },
    dnnl_primitive_destroy: { args: [P], returns: I32 },
    dnnl_memory_create: { args: [P, P, P, P], returns: I32 },
    dnnl_memory_destroy: { args: [P], returns: I32 },
    dnnl_memory_set_data_handle: { args: [P, P], returns: I32 },
    dnnl_primitive_execute: { args: [P, P, I32, P], returns: I32 },
  }).symbols;
}

/** The primitives on the oneDNN at `library`, or why they cannot run there (oneDNN 3, no such library, no CPU engine). */
export function openOneDnnPrimitives(library: string): OneDnnPrimitives | { reason: string } {
  try {
    return startPrimitives(openLibrary(library));
  } catch (error) {
    return { reason: `oneDNN 2's primitives cannot start from ${library} (${error instanceof Error ? error.message : String(error)})` };
  }
}

function startPrimitives(dnnl: ReturnType<typeof openLibrary>): OneDnnPrimitives {
  const check = (status: number, call: string) => {
    if (status !== 0) throw new Error(`${call} failed with status ${status}`);
  };
  const handle = new BigUint64Array(1);
  const created = (status: number, call: string): Pointer => {
    check(status, call);
    return Number(handle[0]) as Pointer;
  };
  const engine = created(dnnl.dnnl_engine_create(ptr(handle), CPU_ENGINE, 0), 'dnnl_engine_create');
  const stream = created(dnnl.dnnl_stream_create(ptr(handle), engine, IN_ORDER_STREAM), 'dnnl_stream_create');
  // dnnl_dims_t and the like: int64 arrays. Each is held in a variable while oneDNN reads it: a
  // pointer taken from an array that nothing references may outlive it, once a collection runs.
  const int64s = (values: number[]) => new BigInt64Array(values.map(BigInt));

  /** An array of these dimensions, each `strides` elements from the next along it. */
  const strided = (dims: number[], strides: number[], type = FLOAT32): Uint8Array => {
    const memory = new Uint8Array(DESCRIPTOR_BYTES);
    const [dimensions, steps] = [int64s(dims), int64s(strides)];
    check(dnnl.dnnl_memory_desc_init_by_strides(ptr(memory), dims.length, ptr(dimensions), type, ptr(steps)), 'dnnl_memory_desc_init_by_strides');
    return memory;
  };
  /** A dense row-major array of these dimensions. */
  const dense = (dims: number[], type = FLOAT32): Uint8Array =>
    strided(dims, dims.map((_, i) => dims.slice(i + 1).reduce((size, dim) => size * dim, 1)), type);

  /** An operation's primitive, from its descriptor, with a memory for each argument whose data the caller points. */
  const build = (described: Pointer, args: [number, Uint8Array][]) => {
    try {
      const primitive = created(dnnl.dnnl_primitive_create(ptr(handle), described), 'dnnl_primitive_create');
      const memories = args.map(([, memory]) => created(dnnl.dnnl_memory_create(ptr(handle), ptr(memory), engine, null), 'dnnl_memory_create'));
      // dnnl_exec_arg_t: { int arg; dnnl_memory_t memory }, 16 bytes.
      const execArgs = new BigUint64Array(args.flatMap(([arg], i) => [BigInt(arg), BigInt(memories[i]!)]));
      return { primitive, memories, execArgs };
    } finally {
      dnnl.dnnl_primitive_desc_destroy(described);
    }
  };
  type Built = ReturnType<typeof build>;
  /** The primitive descriptor of an operation that `describe` writes, with the attributes given, and for a gradient its forward one's as a hint. */
  const describeOperation = (describe: (operation: Uint8Array) => number, attributes: Pointer | null = null, forward: Pointer | null = null): Pointer => {
    const operation = new Uint8Array(DESCRIPTOR_BYTES);
    check(describe(operation), 'describing a oneDNN operation');
    return created(dnnl.dnnl_primitive_desc_create(ptr(handle), ptr(operation), attributes, engine, forward), 'dnnl_primitive_desc_create');
  };
  /** The primitive descriptor of an operation that `describe` writes, with attributes that `configure` sets (oneDNN copies them). */
  const describeWith = (configure: (attributes: Pointer) => void, describe: (operation: Uint8Array) => number): Pointer => {
    const attributes = created(dnnl.dnnl_primitive_attr_create(ptr(handle)), 'dnnl_primitive_attr_create');
    try {
      configure(attributes);
      return describeOperation(describe, attributes);
    } finally {
      dnnl.dnnl_primitive_attr_destroy(attributes);
    }
  };
  /** Attributes that multiply a product by `scale`. */
  const scaledBy = (scale: number) => (attributes: Pointer) => {
    const scales = new Float32Array([scale]);
    check(dnnl.dnnl_primitive_attr_set_output_scales(attributes, 1, 0, ptr(scales)), 'dnnl_primitive_attr_set_output_scales');
  };
  /** Attributes with the one post-op that `append` appends (the call named `call`). */
  const withPostOp = (append: (postOps: Pointer) => number, call: string) => (attributes: Pointer) => {
    const postOps = created(dnnl.dnnl_post_ops_create(ptr(handle)), 'dnnl_post_ops_create');
    try {
      check(append(postOps), call);
      check(dnnl.dnnl_primitive_attr_set_post_ops(attributes, postOps), 'dnnl_primitive_attr_set_post_ops');
    } finally {
      dnnl.dnnl_post_ops_destroy(postOps);
    }
  };
  /** Attributes that add a product onto the values its output holds. */
  const summing = withPostOp((postOps) => dnnl.dnnl_post_ops_append_sum(postOps, 1), 'dnnl_post_ops_append_sum');
  /** Attributes that pass a product through GELU (its tanh form) before it is written. */
  const throughGelu = withPostOp((postOps) => dnnl.dnnl_post_ops_append_eltwise(postOps, 1, GELU_TANH, 0, 0), 'dnnl_post_ops_append_eltwise');
  const reorder = (from: Uint8Array, to: Uint8Array): Built =>
    build(created(dnnl.dnnl_reorder_primitive_desc_create(ptr(handle), ptr(from), engine, ptr(to), engine, null), 'dnnl_reorder_primitive_desc_create'), [[SOURCE, from], [DESTINATION, to]]);

  const primitives = new Map<string, Built>();
  /** The primitive under `key`, built on first use; the least recently used goes when there are too many. */
  const primitiveFor = (key: string, make: () => Built): Built => {
    let found = primitives.get(key);
    if (found) primitives.delete(key);
    else {
      found = make();
      if (primitives.size >= CACHED_PRIMITIVES) {
        const [oldest, evicted] = primitives.entries().next().value!;
        primitives.delete(oldest);
        dnnl.dnnl_primitive_destroy(evicted.primitive);
        for (const memory of evicted.memories) dnnl.dnnl_memory_destroy(memory);
      }
    }
    primitives.set(key, found); // the most recently used last
    return found;
  };
  /** Runs a primitive on the data at `pointers`, one for each of its arguments in order, and waits for it. */
  const execute = ({ primitive, memories, execArgs }: Built, ...pointers: Pointer[]) => {
    memories.forEach((memory, i) => check(dnnl.dnnl_memory_set_data_handle(memory, pointers[i]!), 'dnnl_memory_set_data_handle'));
    check(dnnl.dnnl_primitive_execute(primitive, stream, memories.length, ptr(execArgs)), 'dnnl_primitive_execute');
    check(dnnl.dnnl_stream_wait(stream), 'dnnl_stream_wait');
  };
  const toBfloat16 = (x: Pointer, out: Pointer, n: number) => execute(primitiveFor(`bfloat16 ${n}`, () => reorder(dense([n]), dense([n], BFLOAT16))), x, out);

  /** The memories of a convolution, channels last: x and the output as (N, C, H, W) over NHWC data, the filter as (O, I, KH, KW) over HWIO. */
  const convolutionMemories = (info: tf.backend_util.Conv2DInfo) => {
    const { batchSize: n, inHeight, inWidth, inChannels, outHeight, outWidth, outChannels, filterHeight: kh, filterWidth: kw } = info;
    const channelsLast = (height: number, width: number, channels: number) => strided([n, channels, height, width], [height * width * channels, 1, width * channels, channels]);
    return {
      input: channelsLast(inHeight, inWidth, inChannels),
      filter: strided([outChannels, inChannels, kh, kw], [1, outChannels, kw * inChannels * outChannels, inChannels * outChannels]),
      output: channelsLast(outHeight, outWidth, outChannels),
    };
  };
  /** A convolution's strides, and its padding before and after (top and left, bottom and right). */
  const convolutionSteps = ({ strideHeight, strideWidth, padInfo: { top, left, bottom, right } }: tf.backend_util.Conv2DInfo) =>
    [int64s([strideHeight, strideWidth]), int64s([top, left]), int64s([bottom, right])] as const;
  const convolutionKey = (info: tf.backend_util.Conv2DInfo) => JSON.stringify([info.inShape, info.filterShape, info.strideHeight, info.strideWidth, info.padInfo]);
  /** The forward convolution's primitive descriptor: the primitive itself, and the hint that its gradients' descriptors take. */
  const describeConvolution = (info: tf.backend_util.Conv2DInfo): Pointer => {
    const { input, filter, output } = convolutionMemories(info);
    const [strides, before, after] = convolutionSteps(info);
    return describeOperation((operation) => dnnl.dnnl_convolution_forward_desc_init(ptr(operation), FORWARD_TRAINING, CONVOLUTION_DIRECT, ptr(input), ptr(filter), null, ptr(output), ptr(strides), ptr(before), ptr(after)));
  };
  /** A convolution gradient's primitive descriptor, which oneDNN makes with the forward one's as a hint. */
  const describeBackward = (info: tf.backend_util.Conv2DInfo, describe: (operation: Uint8Array) => number): Pointer => {
    const forward = describeConvolution(info);
    try {
      return describeOperation(describe, null, forward);
    } finally {
      dnnl.dnnl_primitive_desc_destroy(forward);
    }
  };

  /** The layout in which a k x n weight is packed: the one oneDNN's matmul prefers for it, on LAYOUT_ROWS rows. */
  const layouts = new Map<string, Uint8Array>();
  const layoutOf = (k: number, n: number): Uint8Array => {
    let layout = layouts.get(`${k} ${n}`);
    if (!layout) {
      const preferred = new Uint8Array(DESCRIPTOR_BYTES);
      const dimensions = int64s([k, n]);
      check(dnnl.dnnl_memory_desc_init_by_tag(ptr(preferred), 2, ptr(dimensions), BFLOAT16, ANY_LAYOUT), 'dnnl_memory_desc_init_by_tag');
      const [x, out] = [dense([LAYOUT_ROWS, k], BFLOAT16), dense([LAYOUT_ROWS, n])];
      const described = describeOperation((operation) => dnnl.dnnl_matmul_desc_init(ptr(operation), ptr(x), ptr(preferred), null, ptr(out)));
      try {
        layout = new Uint8Array(DESCRIPTOR_BYTES);
        layout.set(new Uint8Array(toArrayBuffer(dnnl.dnnl_primitive_desc_query_md(described, QUERY_WEIGHTS, 0)!, 0, MEMORY_DESCRIPTOR_BYTES)));
      } finally {
        dnnl.dnnl_primitive_desc_destroy(described);
      }
      layouts.set(`${k} ${n}`, layout);
    }
    return layout;
  };
  /**
   * The matmul primitive of m rows of bfloat16 by a packed k x n weight into float32: plus a bias
   * row where `bias`, added onto the output's values where `accumulate`; with `gelu`, the sum with
   * its bias through GELU into bfloat16, for a next product. (A bias of one a row would be taken
   * too, but by oneDNN's reference code, some 200x slower than its AMX kernels.)
   */
  const bfloat16Product = (m: number, k: number, n: number, { bias = false, accumulate = false, gelu = false }): Built =>
    primitiveFor(`bfloat16 product ${m} ${k} ${n}${bias ? ' bias' : ''}${accumulate ? ' accumulating' : ''}${gelu ? ' gelu' : ''}`, () => {
      const [xs, weights, outs, biases] = [dense([m, k], BFLOAT16), layoutOf(k, n), dense([m, n], gelu ? BFLOAT16 : FLOAT32), dense([1, n])];
      const describe = (operation: Uint8Array) => dnnl.dnnl_matmul_desc_init(ptr(operation), ptr(xs), ptr(weights), bias ? ptr(biases) : null, ptr(outs));
      const configure = gelu ? throughGelu : accumulate ? summing : undefined;
      const described = configure ? describeWith(configure, describe) : describeOperation(describe);
      return build(described, [[SOURCE, xs], [WEIGHTS, weights], ...(bias ? [[BIAS, biases] as [number, Uint8Array]] : []), [DESTINATION, outs]]);
    });
  /** x, rounded to bfloat16 for each product; it grows to the largest x and stays. */
  let rounded = new Uint16Array(0);
  /** The m x k floats at x rounded into `rounded`, where the product reads them. */
  const roundedRows = (x: Pointer, m: number, k: number): Pointer => {
    if (rounded.length < m * k) rounded = new Uint16Array(m * k);
    toBfloat16(x, ptr(rounded), m * k);
    return ptr(rounded);
  };
  /** A feed-forward's hidden rows in bfloat16, between its products; it grows to the largest and stays. */
  let hidden = new Uint16Array(0);
  /** Self-attention's heads, scores and weights, of the images it takes at once (wasm-attention.ts); it grows to the largest and stays. */
  let attentionScratch = new Uint8Array(0);
  /** The gradient that GELU's backward primitive multiplies its derivative by, here 1; it grows to the longest derivative and stays. */
  let ones = new Float32Array(0);

  return {
    gelu(x, out, n) {
      const gelu = primitiveFor(`gelu ${n}`, () => {
        const memory = dense([n]);
        return build(describeOperation((operation) => dnnl.dnnl_eltwise_forward_desc_init(ptr(operation), FORWARD_INFERENCE, GELU_TANH, ptr(memory), 0, 0)), [[SOURCE, memory], [DESTINATION, memory]]);
      });
      execute(gelu, x, out);
    },
    geluDerivative(x, out, n) {
      const derivative = primitiveFor(`gelu derivative ${n}`, () => {
        const memory = dense([n]);
        const described = describeOperation((operation) => dnnl.dnnl_eltwise_backward_desc_init(ptr(operation), GELU_TANH, ptr(memory), ptr(memory), 0, 0));
        return build(described, [[SOURCE, memory], [DIFF_DESTINATION, memory], [DIFF_SOURCE, memory]]);
      });
      if (ones.length < n) ones = new Float32Array(n).fill(1);
      execute(derivative, x, ptr(ones), out);
    },
    selfAttention(qkv, images, length, width, heads, out, precision) {
      const [type, bytes] = precision === 'bfloat16' ? [BFLOAT16, 2] : [FLOAT32, 4];
      const headWidth = width / heads;
      // Every image's heads as one batch of products: [images x heads, length, headWidth].
      const byHead = [images * heads, length, headWidth];
      const key = `${images} ${length} ${width} ${heads} ${precision}`;
      // [images, length, 3, heads, headWidth] -> [3, images, heads, length, headWidth]: each head's rows dense, for the products.
      const split = primitiveFor(`attention's heads ${key}`, () => {
        const dims = [3, images, heads, length, headWidth];
        return reorder(strided(dims, [width, 3 * length * width, headWidth, 3 * width, 1]), dense(dims, type));
      });
      const score = primitiveFor(`attention's scores ${key}`, () => {
        // Each head's keys, transposed: [headWidth, length] over its dense rows.
        const [queries, keys, scores] = [dense(byHead, type), strided([images * heads, headWidth, length], [length * headWidth, 1, headWidth], type), dense([images * heads, length, length])];
        const described = describeWith(scaledBy(1 / Math.sqrt(headWidth)), (operation) => dnnl.dnnl_matmul_desc_init(ptr(operation), ptr(queries), ptr(keys), null, ptr(scores)));
        return build(described, [[SOURCE, queries], [WEIGHTS, keys], [DESTINATION, scores]]);
      });
      // In place, in float32: rounded by the softmax's own bfloat16 output, a weight is up to a unit of
      // its last place off; rounded after, it is the nearest bfloat16, as a product's x is.
      const weigh = primitiveFor(`attention's weights ${key}`, () => {
        const scores = dense([images * heads * length, length]);
        return build(describeOperation((operation) => dnnl.dnnl_softmax_v2_forward_desc_init(ptr(operation), FORWARD_INFERENCE, SOFTMAX_ACCURATE, ptr(scores), ptr(scores), 1)), [[SOURCE, scores], [DESTINATION, scores]]);
      });
      const mix = primitiveFor(`attention's mix ${key}`, () => {
        const [weights, values, mixed] = [dense([images * heads, length, length], type), dense(byHead, type), dense(byHead)];
        return build(describeOperation((operation) => dnnl.dnnl_matmul_desc_init(ptr(operation), ptr(weights), ptr(values), null, ptr(mixed))), [[SOURCE, weights], [WEIGHTS, values], [DESTINATION, mixed]]);
      });
      // Each head's output to its columns of its image's [length, width] rows; written there by the
      // mix, the product would run on oneDNN's slower gemm.
      const merge = primitiveFor(`attention's output ${key}`, () => {
        const dims = [images, heads, length, headWidth];
        return reorder(dense(dims), strided(dims, [length * width, headWidth, width, 1]));
      });
      // The scratch: queries, keys and values by head; the scores; the weights in bfloat16; the mix.
      const [part, scoreCount] = [images * length * width * bytes, images * heads * length * length];
      const scoresAt = 3 * part;
      const weightsAt = bytes === 2 ? scoresAt + 4 * scoreCount : scoresAt;
      const mixedAt = weightsAt + bytes * scoreCount;
      const needed = mixedAt + 4 * images * length * width;
      if (attentionScratch.length < needed) attentionScratch = new Uint8Array(needed);
      const at = (offset: number) => ptr(attentionScratch, offset);
      execute(split, qkv, at(0));
      execute(score, at(0), at(part), at(scoresAt));
      execute(weigh, at(scoresAt), at(scoresAt));
      if (bytes === 2) toBfloat16(at(scoresAt), at(weightsAt), scoreCount);
      execute(mix, at(weightsAt), at(2 * part), at(mixedAt));
      execute(merge, at(mixedAt), out);
    },
    toBfloat16,
    packBfloat16(weight, k, n) {
      const layout = layoutOf(k, n);
      const bytes = new Uint8Array(Number(dnnl.dnnl_memory_desc_get_size(ptr(layout))));
      execute(primitiveFor(`pack ${k} ${n}`, () => reorder(dense([k, n]), layout)), weight, ptr(bytes));
      return { k, n, bytes };
    },
    multiplyBfloat16(x, m, { k, n, bytes }, bias, out, accumulate) {
      const product = bfloat16Product(m, k, n, { bias: bias !== undefined, accumulate });
      execute(product, roundedRows(x, m, k), ptr(bytes), ...(bias ? [bias] : []), out);
    },
    feedForwardBfloat16(x, m, up, upBias, down, downBias, out) {
      if (hidden.length < m * up.n) hidden = new Uint16Array(m * up.n);
      execute(bfloat16Product(m, up.k, up.n, { bias: true, gelu: true }), roundedRows(x, m, up.k), ptr(up.bytes), upBias, ptr(hidden));
      execute(bfloat16Product(m, down.k, down.n, { bias: true }), ptr(hidden), ptr(down.bytes), downBias, out);
    },
    convolve(info, x, filter, out) {
      const forward = primitiveFor(`convolution ${convolutionKey(info)}`, () => {
        const { input, filter: filters, output } = convolutionMemories(info);
        return build(describeConvolution(info), [[SOURCE, input], [WEIGHTS, filters], [DESTINATION, output]]);
      });
      execute(forward, x, filter, out);
    },
    convolutionInputGradient(info, dy, filter, dx) {
      const backward = primitiveFor(`convolution input gradient ${convolutionKey(info)}`, () => {
        const { input, filter: filters, output } = convolutionMemories(info);
        const [strides, before, after] = convolutionSteps(info);
        const described = describeBackward(info, (operation) => dnnl.dnnl_convolution_backward_data_desc_init(ptr(operation), CONVOLUTION_DIRECT, ptr(input), ptr(filters), ptr(output), ptr(strides), ptr(before), ptr(after)));
        return build(described, [[DIFF_DESTINATION, output], [WEIGHTS, filters], [DIFF_SOURCE, input]]);
      });
      execute(backward, dy, filter, dx);
    },
    convolutionFilterGradient(info, x, dy, dFilter) {
      const backward = primitiveFor(`convolution filter gradient ${convolutionKey(info)}`, () => {
        const { input, filter: filters, output } = convolutionMemories(info);
        const [strides, before, after] = convolutionSteps(info);
        const described = describeBackward(info, (operation) => dnnl.dnnl_convolution_backward_weights_desc_init(ptr(operation), CONVOLUTION_DIRECT, ptr(input), ptr(filters), null, ptr(output), ptr(strides), ptr(before), ptr(after)));
        return build(described, [[SOURCE, input], [DIFF_DESTINATION, output], [DIFF_WEIGHTS, filters]]);
      });
      execute(backward, x, dy, dFilter);
    },
  };
}

/**
 * The floats from which GELU and its derivative run on oneDNN rather than the SIMD module. Between
 * WASM's kernels a oneDNN call costs some 20-45 us whatever its length (2 in a loop of calls alone),
 * which the SIMD module's 2-2.75 ns a float beats up to about this length: a decoded token's GELUs
 * (1,536 and 2,048 floats) took 0.51-0.57 ms of its kernels on oneDNN, and take 0.17-0.21 there.
 */
const ONEDNN_FROM_FLOATS = 16384;

/** Registers GELU and its derivative for 'wasm' on oneDNN, from ONEDNN_FROM_FLOATS floats; the kernels registered before (the SIMD module's) keep shorter ones. */
export function registerOneDnnGelu(primitives: OneDnnPrimitives): void {
  const elementwise = (run: (x: Pointer, out: Pointer, n: number) => void, shorter: tf.KernelFunc | undefined): tf.KernelFunc => (args) => {
    const { inputs: { x }, backend: kernelBackend } = args;
    const n = tf.util.sizeFromShape(x!.shape);
    if (shorter && n < ONEDNN_FROM_FLOATS) return shorter(args);
    const backend = kernelBackend as BackendWasm;
    return filledOutput(backend, x!.shape, (out) => {
      const [xs, outs] = [x!, out].map((t) => backend.typedArrayFromHeap(t) as Float32Array) as [Float32Array, Float32Array];
      run(ptr(xs), ptr(outs), n);
    });
  };
  for (const [kernelName, run] of [[GELU_KERNEL, primitives.gelu], [GELU_DERIVATIVE_KERNEL, primitives.geluDerivative]] as const) {
    // tfjs types getKernel as always found; it is undefined where nothing is registered.
    const shorter = tf.getKernel(kernelName, 'wasm') as tf.KernelConfig | undefined;
    if (shorter) tf.unregisterKernel(kernelName, 'wasm');
    tf.registerKernel({ kernelName, backendName: 'wasm', kernelFunc: elementwise(run, shorter?.kernelFunc) });
  }
}
