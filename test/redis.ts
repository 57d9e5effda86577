/**
 * A real redis-server for the tests: on a free port, in a temporary folder, with every write on disk
 * before it is acknowledged (append-only file, fsync always), so that a restart shows what
 * durability promises. Where redis-server is not installed, REDIS_SERVER is null and the suites that
 * need it skip, saying why.
 */
import { mkdtemp } from 'node:fs/promises';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const REDIS_SERVER = Bun.which('redis-server');

if (!REDIS_SERVER) console.warn('redis-server is not installed (Debian: apt-get install redis-server): the tests of the shared Redis job queue are skipped');

export interface TestRedis {
  url: string;
  port: number;
  /** Stops the server (SIGKILL: nothing is flushed on the way out) and waits for it to be gone. */
  kill(): Promise<void>;
  /** Starts it again on the same port and folder: what it had acknowledged is there. */
  restart(): Promise<void>;
}

export async function startRedis(): Promise<TestRedis> {
  const dir = await mkdtemp(join(tmpdir(), 'titans-redis-'));
  const port = await freePort();
  const args = ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--appendonly', 'yes', '--appendfsync', 'always', '--save', '', '--logfile', join(dir, 'redis.log')];
  let child = await launch(args, port);
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    kill: async () => {
      child.kill('SIGKILL');
      await child.exited;
    },
    restart: async () => {
      child = await launch(args, port);
    },
  };
}

async function launch(args: string[], port: number): Promise<Bun.Subprocess> {
  const child = Bun.spawn([REDIS_SERVER!, ...args], { stdout: 'ignore', stderr: 'inherit' });
  const deadline = Date.now() + 10_000;
  while (!(await answers(port))) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`redis-server did not start on port ${port}`);
    await Bun.sleep(25);
  }
  return child;
}

/** Whether a Redis answers PING on the port (in its inline protocol: no client needed). */
function answers(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1', () => socket.write('PING\r\n'));
    socket.once('data', (reply) => {
      socket.destroy();
      resolve(reply.toString().startsWith('+PONG'));
    });
    socket.once('error', () => resolve(false));
  });
}

/** A port no one listens on now (the OS's pick for port 0). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}
