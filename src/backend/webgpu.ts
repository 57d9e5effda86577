/**
 * The WebGPU tier: TensorFlow.js's WebGPU backend over Dawn, whose native build ships inside the npm
 * package `webgpu`, so that a GPU machine needs nothing from outside the npm registry but its driver
 * and the Vulkan loader (DESIGN.md section 2). It starts only on a hardware adapter: Dawn's software
 * adapters (SwiftShader, or Mesa's lavapipe when Dawn accepts it) are slower than the WASM tier.
 */
import { dlopen, FFIType, ptr } from 'bun:ffi';
import * as tf from '@tensorflow/tfjs-core';
import { existsSync, readdirSync } from 'node:fs';
import { importInstalled, requireInstalled } from './optional-package.ts';
import { registerFusedKernels, registerGroupedAddN } from './webgpu-kernels.ts';

const DAWN_PACKAGE = 'webgpu';
const TFJS_WEBGPU_PACKAGE = '@tensorflow/tfjs-backend-webgpu';
const SOFTWARE_ADAPTER = /swiftshader|llvmpipe|lavapipe|software/i;
/** Where Vulkan's loader looks for drivers when VK_DRIVER_FILES / VK_ICD_FILENAMES name none. */
const ICD_FOLDERS = ['/usr/share/vulkan/icd.d', '/etc/vulkan/icd.d', '/usr/local/share/vulkan/icd.d'];

/** What is known of an adapter, from GPUAdapterInfo (older Dawn builds lack isFallbackAdapter). */
export interface AdapterDescription {
  vendor: string;
  architecture: string;
  device: string;
  description: string;
  isFallbackAdapter?: boolean;
}

/** The part of Dawn's GPU object used here; its full types (@webgpu/types) come with the optional package. */
interface DawnGPU {
  requestAdapter(options?: { powerPreference?: 'high-performance'; featureLevel?: 'compatibility' }): Promise<{ info: AdapterDescription } | null>;
}

/** Why an adapter is a software one, or undefined for a GPU. */
export function softwareAdapterReason(info: AdapterDescription): string | undefined {
  if (info.isFallbackAdapter) return `the adapter is Dawn's software fallback (${nameAdapter(info)})`;
  const text = [info.vendor, info.architecture, info.device, info.description].join(' ');
  if (SOFTWARE_ADAPTER.test(text)) return `the adapter is a software renderer (${nameAdapter(info)})`;
  return undefined;
}

/** The adapter as it names itself, e.g. "NVIDIA H100 80GB HBM3 (nvidia, hopper)". */
export function nameAdapter(info: AdapterDescription): string {
  const title = info.description || info.device || 'unnamed adapter';
  const details = [info.vendor, info.architecture].filter(Boolean).join(', ');
  return details ? `${title} (${details})` : title;
}

/**
 * Starts the `webgpu` tfjs backend on the first hardware adapter Dawn finds, or throws the reason it
 * cannot; select.ts turns the reason into a skipped tier (auto) or a startup error (forced).
 */
export async function startWebGPU(): Promise<string> {
  requireInstalled(DAWN_PACKAGE);
  requireInstalled(TFJS_WEBGPU_PACKAGE);
  // Loading Dawn costs every process (each worker too) startup time and a page of Vulkan warnings
  // on stderr; a machine without a GPU device node cannot have an adapter, so it is not asked.
  if (!hasGpuDeviceNode()) throw new Error('no GPU device node (/dev/nvidia0, /dev/dri/renderD*)');
  const gpu = await createDawn();
  const adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
  if (!adapter) throw new Error(`Dawn found no GPU adapter (${describeVulkanDrivers()})`);
  const { info } = adapter;
  const software = softwareAdapterReason(info);
  if (software) throw new Error(software);
  const name = nameAdapter(info);
  await startTfjsWebGPU(gpu, name);
  return name;
}

/** Dawn's GPU object, the navigator.gpu of a browser; `flags` are dawn.node's (e.g. 'backend=opengles'). */
async function createDawn(flags: string[] = []): Promise<DawnGPU> {
  const dawn = await importInstalled<{ create(flags: string[]): DawnGPU; globals: object }>(DAWN_PACKAGE);
  // The WebGPU constants (GPUBufferUsage, GPUMapMode, ...) that tfjs-backend-webgpu reads as globals.
  Object.assign(globalThis, dawn.globals);
  return dawn.create(flags);
}

/** Sets TensorFlow.js's backend to `webgpu` on the adapter `gpu` gives; `name` is the adapter's, for the error. */
async function startTfjsWebGPU(gpu: DawnGPU, name: string): Promise<void> {
  // tfjs-backend-webgpu registers itself at import time, and only where navigator.gpu exists, so
  // Dawn's GPU object is put where a browser has it before the import.
  Object.defineProperty(globalThis.navigator, 'gpu', { value: gpu, configurable: true });
  await importInstalled(TFJS_WEBGPU_PACKAGE);
  if (!(await tf.setBackend('webgpu'))) throw new Error(`tf.setBackend('webgpu') failed on ${name}`);
  const { device } = tf.backend() as unknown as { device: DawnDevice };
  keepBindGroupLayouts(device);
  // One storage buffer of the device's per-stage limit holds AddN's output.
  registerGroupedAddN('webgpu', device.limits.maxStorageBuffersPerShaderStage - 1);
  registerFusedKernels();
}

/** The part of Dawn's GPUDevice used here. */
interface DawnDevice {
  limits: { maxStorageBuffersPerShaderStage: number };
  createComputePipeline(descriptor: object): DawnPipeline;
  createComputePipelineAsync(descriptor: object): Promise<DawnPipeline>;
}

interface DawnPipeline {
  getBindGroupLayout(index: number): object;
}

/**
 * tfjs-backend-webgpu asks a launch's pipeline for its bind group layout at every launch, and Dawn's
 * binding makes a new object of it each time, some 5% of a decoded token's host time (Dawn's null
 * device, bun --cpu-prof): each pipeline the device makes keeps the layouts it has given.
 */
function keepBindGroupLayouts(device: DawnDevice): void {
  const keepingLayouts = (pipeline: DawnPipeline): DawnPipeline => {
    const layoutOf = pipeline.getBindGroupLayout.bind(pipeline);
    const layouts = new Map<number, object>();
    pipeline.getBindGroupLayout = (index) => layouts.get(index) ?? layouts.set(index, layoutOf(index)).get(index)!;
    return pipeline;
  };
  const [create, createAsync] = [device.createComputePipeline.bind(device), device.createComputePipelineAsync.bind(device)];
  device.createComputePipeline = (descriptor) => keepingLayouts(create(descriptor));
  device.createComputePipelineAsync = async (descriptor) => keepingLayouts(await createAsync(descriptor));
}

/**
 * The webgpu tier on a software device, for checks where there is no GPU: Dawn's OpenGL ES backend
 * over Mesa's llvmpipe, which offers WebGPU's compatibility mode only. It runs the same kernels and
 * shaders as a GPU, so the tests check their numerics and the bench counts their launches on it;
 * selectBackend never starts it, as it refuses every software adapter. Throws the reason where Mesa's
 * EGL and GLES are missing.
 */
export async function startSoftwareWebGPU(): Promise<void> {
  // Without a display, Mesa's EGL needs its surfaceless platform. It reads the variable with
  // getenv, which assigning process.env does not reach under Bun; libc's setenv does.
  const libc = dlopen('libc.so.6', { setenv: { args: [FFIType.cstring, FFIType.cstring, FFIType.i32], returns: FFIType.i32 } });
  const text = (value: string) => ptr(Buffer.from(`${value}\0`));
  libc.symbols.setenv(text('EGL_PLATFORM'), text('surfaceless'), 1);
  libc.close();
  const dawn = await createDawn(['backend=opengles']);
  const compatible: DawnGPU = { requestAdapter: (options = {}) => dawn.requestAdapter({ ...options, featureLevel: 'compatibility' }) };
  if (!(await compatible.requestAdapter())) throw new Error("Dawn found no OpenGL ES adapter (Mesa's EGL and GLES: libegl-mesa0, libgles2)");
  await startTfjsWebGPU(compatible, 'Mesa llvmpipe through OpenGL ES');
}

/**
 * The webgpu tier on Dawn's null device, for benches: Dawn validates and records every launch as it
 * would for a GPU and runs none, so the time a piece of work takes there is the host's share of it
 * (TensorFlow.js's bookkeeping, bind groups, uniforms), what a GPU infinitely fast would still take
 * on this CPU. What it reads back is not what a GPU would compute, and it holds 512 MiB.
 */
export async function startNullWebGPU(): Promise<void> {
  await startTfjsWebGPU(await createDawn(['backend=null']), "Dawn's null device");
}

/** A GPU's device file: NVIDIA's driver, or a DRM render node (AMD, Intel). */
export function hasGpuDeviceNode(): boolean {
  if (existsSync('/dev/nvidia0')) return true;
  return existsSync('/dev/dri') && readdirSync('/dev/dri').some((node) => node.startsWith('renderD'));
}

/** Which Vulkan drivers the loader would see: the usual reason Dawn finds no adapter. */
function describeVulkanDrivers(): string {
  const named = process.env.VK_DRIVER_FILES || process.env.VK_ICD_FILENAMES;
  if (named) return `Vulkan drivers named by VK_DRIVER_FILES/VK_ICD_FILENAMES: ${named}`;
  const drivers = ICD_FOLDERS.filter(existsSync).flatMap((folder) => readdirSync(folder).filter((file) => file.endsWith('.json')));
  if (drivers.length === 0) return 'no Vulkan driver is installed: a GPU driver provides one, e.g. nvidia_icd.json';
  return `Vulkan drivers installed: ${drivers.join(', ')}; none gave Dawn a usable GPU`;
}
