/**
 * One pthread of the threaded WASM build, as a Bun worker_threads script (src/backend/wasm-threads.ts
 * starts eight). tfjs hands Emscripten this script as a `blob:` URL, which Bun's worker_threads
 * refuses, so wasm-threads.ts starts this file instead; it runs the package's own worker script,
 * whose node branch sets up `self`, `postMessage` and `importScripts` from `require` (a global in a
 * CommonJS script, given to it here).
 *
 * The stock script then imports the module's main script from another `blob:` URL that holds the
 * bundle's copy of the Emscripten factory, which names helpers that only exist inside the bundle. The
 * package ships the same factory as a standalone script, which needs nothing: `importScripts` runs
 * that one instead.
 *
 * A failure while loading is posted back (PTHREAD_LOAD_FAILED) rather than thrown: Emscripten rethrows a
 * worker's error on the main thread, which would end the process instead of falling back to one thread.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { parentPort } from 'node:worker_threads';
import { PTHREAD_LOAD_FAILED } from './threads.ts';

const require = createRequire(import.meta.url);
const PACKAGE_OUT = '@tensorflow/tfjs-backend-wasm/wasm-out/tfjs-backend-wasm-threaded-simd';

type Handler = (event: { data: { cmd?: string } }) => void;
const scope = globalThis as unknown as { onmessage: Handler; importScripts: () => void; require: NodeRequire; __filename: string };

try {
  const { wasmWorkerContents } = require(`${PACKAGE_OUT}.worker.js`) as { wasmWorkerContents: string };
  const mainScript = readFileSync(require.resolve(`${PACKAGE_OUT}.js`), 'utf8');
  Object.assign(globalThis, { require, __filename: import.meta.path });
  // The package turns '\n' inside the script's string literals into '\\n' before making its Blob (see
  // its locateFile); the same is done here.
  (0, eval)(wasmWorkerContents.replace(/\n/g, '\\n'));
  scope.importScripts = () => (0, eval)(mainScript);
  const stock = scope.onmessage;
  scope.onmessage = (event) => {
    if (event.data.cmd !== 'load') return stock(event);
    try {
      stock(event);
    } catch (error) {
      parentPort!.postMessage({ cmd: PTHREAD_LOAD_FAILED, reason: `pthread worker: ${error instanceof Error ? error.message : String(error)}` });
    }
  };
} catch (error) {
  parentPort!.postMessage({ cmd: PTHREAD_LOAD_FAILED, reason: `pthread worker: ${error instanceof Error ? error.message : String(error)}` });
}
