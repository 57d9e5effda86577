/**
 * Test preload (bunfig.toml [test] preload): every test file runs on the backend production would
 * pick, with gradients registered, as the server and the workers do at startup.
 */
import { selectBackend } from '../src/backend/select.ts';

await selectBackend();
