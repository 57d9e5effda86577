import { dlopen, FFIType, ptr } from 'bun:ffi';
import { createDawn, startTfjsWebGPU, type DawnGPU } from '../../../src/backend/webgpu.ts';

/** Whether an optional package (a GPU tier's) is installed here: its tests run only where it is. */
export function isInstalled(name: string): boolean {
  try {
    Bun.resolveSync(name, import.meta.dir);
    return true;
  } catch {
    return false;
  }
}

/**
 * The webgpu tier on a software device, so that its numerics are checked where there is no GPU: Dawn's
 * OpenGL ES backend over Mesa's llvmpipe, which offers WebGPU's compatibility mode only. Production
 * refuses software adapters (src/backend/webgpu.ts); the tests want the same kernels and shaders, not
 * the speed. Throws the reason where Mesa's EGL and GLES are missing.
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
