/**
 * GELU (model/layers.ts GELU_KERNEL) on oneDNN's eltwise primitive, where oneDNN runs the products:
 * its JIT code uses the CPU's full vector width (AVX-512 here) where WASM's SIMD has 128 bits, and
 * the instance's threads. A ViT-B/16 row of 197 x 3072 took 1.24 ms in the SIMD module and takes
 * 0.15 on two threads (docs/performance.md, "GELU on oneDNN"). Its values are the tanh form's
 * within 4e-7. The derivatives stay in the SIMD module (wasm-simd.ts).
 *
 * It speaks oneDNN 2's C API (Debian 12's libdnnl2). oneDNN 3 renamed the calls that build a
 * primitive; there GELU stays in the SIMD module.
 */
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';
import * as tf from '@tensorflow/tfjs-core';
import { dlopen, FFIType, ptr, type Pointer } from 'bun:ffi';
import { GELU_KERNEL } from '../../model/layers.ts';

const [CPU_ENGINE, IN_ORDER_STREAM, FLOAT32, FORWARD_INFERENCE, GELU_TANH] = [1, 1, 3, 96, 0xcf];
const [SOURCE, DESTINATION] = [1, 17];
/** oneDNN 2's descriptors are C structs that the caller allocates, each under 2 KB. */
const DESCRIPTOR_BYTES = 4096;
/** Primitives kept, one per length: a model runs a few lengths, a long prefill or training a few more. */
const CACHED_LENGTHS = 64;

type Library = ReturnType<typeof openLibrary>;

function openLibrary(library: string) {
  const P = FFIType.ptr;
  const I32 = FFIType.i32;
  return dlopen(library, {
    dnnl_engine_create: { args: [P, I32, FFIType.u64], returns: I32 },
    dnnl_stream_create: { args: [P, P, FFIType.u32], returns: I32 },
    dnnl_stream_wait: { args: [P], returns: I32 },
    dnnl_memory_desc_init_by_strides: { args: [P, I32, P, I32, P], returns: I32 },
    dnnl_eltwise_forward_desc_init: { args: [P, I32, I32, P, FFIType.f32, FFIType.f32], returns: I32 },
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

/** GELU over n floats at x into out (the same address for in place), on oneDNN. */
export type NativeGelu = (x: Pointer, out: Pointer, n: number) => void;

/** GELU on the oneDNN at `library`, or why it cannot run there (oneDNN 3, or no such library). */
export function openOneDnnGelu(library: string): NativeGelu | { reason: string } {
  let dnnl: Library;
  try {
    dnnl = openLibrary(library);
  } catch (error) {
    return { reason: `${library} has no oneDNN 2 primitive API (${error instanceof Error ? error.message : String(error)})` };
  }
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

  /** The primitive for n floats, with its source and destination memories, whose data the caller points. */
  const build = (n: number) => {
    const memory = new Uint8Array(DESCRIPTOR_BYTES);
    check(dnnl.dnnl_memory_desc_init_by_strides(ptr(memory), 1, ptr(new BigInt64Array([BigInt(n)])), FLOAT32, ptr(new BigInt64Array([1n]))), 'dnnl_memory_desc_init_by_strides');
    const operation = new Uint8Array(DESCRIPTOR_BYTES);
    check(dnnl.dnnl_eltwise_forward_desc_init(ptr(operation), FORWARD_INFERENCE, GELU_TANH, ptr(memory), 0, 0), 'dnnl_eltwise_forward_desc_init');
    const described = created(dnnl.dnnl_primitive_desc_create(ptr(handle), ptr(operation), null, engine, null), 'dnnl_primitive_desc_create');
    try {
      const primitive = created(dnnl.dnnl_primitive_create(ptr(handle), described), 'dnnl_primitive_create');
      const [source, destination] = [SOURCE, DESTINATION].map(() => created(dnnl.dnnl_memory_create(ptr(handle), ptr(memory), engine, null), 'dnnl_memory_create'));
      const args = new BigUint64Array([BigInt(SOURCE), BigInt(source!), BigInt(DESTINATION), BigInt(destination!)]);
      return { primitive, source: source!, destination: destination!, args };
    } finally {
      dnnl.dnnl_primitive_desc_destroy(described);
    }
  };
  const primitives = new Map<number, ReturnType<typeof build>>();
  const primitiveFor = (n: number) => {
    let found = primitives.get(n);
    if (found) primitives.delete(n);
    else {
      found = build(n);
      if (primitives.size >= CACHED_LENGTHS) {
        const [oldest, evicted] = primitives.entries().next().value!;
        primitives.delete(oldest);
        dnnl.dnnl_primitive_destroy(evicted.primitive);
        dnnl.dnnl_memory_destroy(evicted.source);
        dnnl.dnnl_memory_destroy(evicted.destination);
      }
    }
    primitives.set(n, found); // the most recently used last
    return found;
  };
  return (x, out, n) => {
    const { primitive, source, destination, args } = primitiveFor(n);
    check(dnnl.dnnl_memory_set_data_handle(source, x), 'dnnl_memory_set_data_handle');
    check(dnnl.dnnl_memory_set_data_handle(destination, out), 'dnnl_memory_set_data_handle');
    check(dnnl.dnnl_primitive_execute(primitive, stream, 2, ptr(args)), 'dnnl_primitive_execute');
    check(dnnl.dnnl_stream_wait(stream), 'dnnl_stream_wait');
  };
}

/** Registers GELU's forward for 'wasm' on `gelu`, in place of the SIMD module's. */
export function registerOneDnnGelu(gelu: NativeGelu): void {
  const kernelFunc = ({ inputs: { x }, backend: kernelBackend }: { inputs: tf.NamedTensorInfoMap; backend: unknown }): tf.TensorInfo => {
    const backend = kernelBackend as BackendWasm;
    const out = backend.makeOutput(x!.shape, 'float32');
    const n = tf.util.sizeFromShape(x!.shape);
    if (n === 0) return out;
    // Views of the heap are taken after makeOutput, which may grow it.
    const [xs, outs] = [x!, out].map((t) => backend.typedArrayFromHeap(t) as Float32Array) as [Float32Array, Float32Array];
    try {
      gelu(ptr(xs), ptr(outs), n);
    } catch (error) {
      backend.disposeData(out.dataId);
      throw error;
    }
    return out;
  };
  if (tf.getKernel(GELU_KERNEL, 'wasm')) tf.unregisterKernel(GELU_KERNEL, 'wasm');
  tf.registerKernel({ kernelName: GELU_KERNEL, backendName: 'wasm', kernelFunc: kernelFunc as unknown as tf.KernelFunc });
}
