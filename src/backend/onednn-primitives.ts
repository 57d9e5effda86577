/**
 * oneDNN's primitives for the WASM backend's elementwise work, where oneDNN runs the products: its
 * JIT code uses the CPU's full vector width (AVX-512 here) where WASM's SIMD has 128 bits, and the
 * instance's threads (docs/performance.md, "GELU and softmax on oneDNN"):
 * - GELU's forward (model/layers.ts GELU_KERNEL, tanh form): a ViT-B/16 GELU of 197 x 3072 took
 *   1.24 ms in the SIMD module and takes 0.15 on two threads; its values are the formula's within
 *   4e-7. The derivatives stay in the SIMD module (wasm-simd.ts).
 * - A softmax of rows in place, for a ViT's self-attention (wasm-attention.ts): a layer's 12 heads
 *   of 197 x 197 scores in 0.24 ms against 0.64.
 * - float32 rounded to bfloat16 (a reorder), x W + b's operands under MAC_MATMUL_PRECISION=bfloat16
 *   (bfloat16.ts): 0.09 ns a float against the SIMD module's 0.6, the same bits but for float32's
 *   subnormals, which it takes as zero.
 *
 * It speaks oneDNN 2's C API (Debian 12's libdnnl2). oneDNN 3 builds primitives through other
 * calls; there both stay in the SIMD module.
 */
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';
import * as tf from '@tensorflow/tfjs-core';
import { dlopen, FFIType, ptr, type Pointer } from 'bun:ffi';
import { GELU_KERNEL } from '../../model/layers.ts';

const [CPU_ENGINE, IN_ORDER_STREAM, BFLOAT16, FLOAT32, FORWARD_INFERENCE, GELU_TANH] = [1, 1, 2, 3, 96, 0xcf];
const [SOURCE, DESTINATION] = [1, 17];
/** oneDNN 2's descriptors are C structs that the caller allocates, each under 2 KB. */
const DESCRIPTOR_BYTES = 4096;
/** Primitives kept, one per operation and shape: a model runs a few shapes, a long prefill or training a few more. */
const CACHED_PRIMITIVES = 64;

export interface OneDnnPrimitives {
  /** GELU over n floats at x into out (the same address for in place). */
  gelu(x: Pointer, out: Pointer, n: number): void;
  /** Each of `rows` rows of n floats at x becomes its softmax, in place. */
  softmaxRows(x: Pointer, rows: number, n: number): void;
  /** n floats at x rounded to bfloat16 (to the nearest, ties to even) at out. */
  toBfloat16(x: Pointer, out: Pointer, n: number): void;
}

function openLibrary(library: string) {
  const P = FFIType.ptr;
  const I32 = FFIType.i32;
  return dlopen(library, {
    dnnl_engine_create: { args: [P, I32, FFIType.u64], returns: I32 },
    dnnl_stream_create: { args: [P, P, FFIType.u32], returns: I32 },
    dnnl_stream_wait: { args: [P], returns: I32 },
    dnnl_memory_desc_init_by_strides: { args: [P, I32, P, I32, P], returns: I32 },
    dnnl_eltwise_forward_desc_init: { args: [P, I32, I32, P, FFIType.f32, FFIType.f32], returns: I32 },
    dnnl_softmax_forward_desc_init: { args: [P, I32, P, I32], returns: I32 },
    dnnl_reorder_primitive_desc_create: { args: [P, P, P, P, P, P], returns: I32 },
    dnnl_primitive_desc_create: { args: [P, P, P, P, P], returns: I32 },
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

  /** A dense row-major array of these dimensions. */
  const dense = (dims: number[], type = FLOAT32): Uint8Array => {
    const memory = new Uint8Array(DESCRIPTOR_BYTES);
    const strides = dims.map((_, i) => dims.slice(i + 1).reduce((size, dim) => size * dim, 1));
    check(dnnl.dnnl_memory_desc_init_by_strides(ptr(memory), dims.length, ptr(new BigInt64Array(dims.map(BigInt))), type, ptr(new BigInt64Array(strides.map(BigInt)))), 'dnnl_memory_desc_init_by_strides');
    return memory;
  };

  /** An operation's primitive, from its descriptor, with a source and a destination memory whose data the caller points. */
  const build = (described: Pointer, [from, to]: [Uint8Array, Uint8Array]) => {
    try {
      const primitive = created(dnnl.dnnl_primitive_create(ptr(handle), described), 'dnnl_primitive_create');
      const [source, destination] = [from, to].map((memory) => created(dnnl.dnnl_memory_create(ptr(handle), ptr(memory), engine, null), 'dnnl_memory_create')) as [Pointer, Pointer];
      const args = new BigUint64Array([BigInt(SOURCE), BigInt(source), BigInt(DESTINATION), BigInt(destination)]);
      return { primitive, source, destination, args };
    } finally {
      dnnl.dnnl_primitive_desc_destroy(described);
    }
  };
  type Built = ReturnType<typeof build>;
  /** The primitive of an operation that `describe` writes, from and to `memory`. */
  const buildOperation = (memory: Uint8Array, describe: (operation: Uint8Array) => number): Built => {
    const operation = new Uint8Array(DESCRIPTOR_BYTES);
    check(describe(operation), 'describing a oneDNN operation');
    return build(created(dnnl.dnnl_primitive_desc_create(ptr(handle), ptr(operation), null, engine, null), 'dnnl_primitive_desc_create'), [memory, memory]);
  };

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
        dnnl.dnnl_memory_destroy(evicted.source);
        dnnl.dnnl_memory_destroy(evicted.destination);
      }
    }
    primitives.set(key, found); // the most recently used last
    return found;
  };
  const execute = ({ primitive, source, destination, args }: Built, x: Pointer, out: Pointer) => {
    check(dnnl.dnnl_memory_set_data_handle(source, x), 'dnnl_memory_set_data_handle');
    check(dnnl.dnnl_memory_set_data_handle(destination, out), 'dnnl_memory_set_data_handle');
    check(dnnl.dnnl_primitive_execute(primitive, stream, 2, ptr(args)), 'dnnl_primitive_execute');
    check(dnnl.dnnl_stream_wait(stream), 'dnnl_stream_wait');
  };

  return {
    gelu(x, out, n) {
      const gelu = primitiveFor(`gelu ${n}`, () => {
        const memory = dense([n]);
        return buildOperation(memory, (operation) => dnnl.dnnl_eltwise_forward_desc_init(ptr(operation), FORWARD_INFERENCE, GELU_TANH, ptr(memory), 0, 0));
      });
      execute(gelu, x, out);
    },
    softmaxRows(x, rows, n) {
      const softmax = primitiveFor(`softmax ${rows} ${n}`, () => {
        const memory = dense([rows, n]);
        return buildOperation(memory, (operation) => dnnl.dnnl_softmax_forward_desc_init(ptr(operation), FORWARD_INFERENCE, ptr(memory), 1));
      });
      execute(softmax, x, x);
    },
    toBfloat16(x, out, n) {
      const reorder = primitiveFor(`bfloat16 ${n}`, () => {
        const [from, to] = [dense([n]), dense([n], BFLOAT16)];
        return build(created(dnnl.dnnl_reorder_primitive_desc_create(ptr(handle), ptr(from), engine, ptr(to), engine, null), 'dnnl_reorder_primitive_desc_create'), [from, to]);
      });
      execute(reorder, x, out);
    },
  };
}

/** Registers GELU's forward for 'wasm' on oneDNN, in place of the SIMD module's. */
export function registerOneDnnGelu(primitives: OneDnnPrimitives): void {
  const kernelFunc = ({ inputs: { x }, backend: kernelBackend }: { inputs: tf.NamedTensorInfoMap; backend: unknown }): tf.TensorInfo => {
    const backend = kernelBackend as BackendWasm;
    const out = backend.makeOutput(x!.shape, 'float32');
    const n = tf.util.sizeFromShape(x!.shape);
    if (n === 0) return out;
    // Views of the heap are taken after makeOutput, which may grow it.
    const [xs, outs] = [x!, out].map((t) => backend.typedArrayFromHeap(t) as Float32Array) as [Float32Array, Float32Array];
    try {
      primitives.gelu(ptr(xs), ptr(outs), n);
    } catch (error) {
      backend.disposeData(out.dataId);
      throw error;
    }
    return out;
  };
  if (tf.getKernel(GELU_KERNEL, 'wasm')) tf.unregisterKernel(GELU_KERNEL, 'wasm');
  tf.registerKernel({ kernelName: GELU_KERNEL, backendName: 'wasm', kernelFunc: kernelFunc as unknown as tf.KernelFunc });
}
