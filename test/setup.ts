/**
 * Test preload (bunfig.toml [test] preload): every test file runs on the backend production would
 * pick, but for webgpu, with gradients registered, as the server and the workers do at startup.
 */
import { selectBackend } from '../src/backend/select.ts';

// The tests read tensors synchronously (dataSync), which the webgpu tier cannot under Bun
// (docs/gpu.md), so on a GPU machine they run on the next tier; test/src/backend/webgpu.test.ts starts the GPU itself.
await selectBackend({ skip: { webgpu: 'the test suite reads tensors synchronously; webgpu.test.ts checks the GPU' } });
