/** Threads of this process that run a Bun Worker (Linux's /proc), to see a Worker's thread end. */
import { existsSync, readdirSync, readFileSync } from 'node:fs';

/** The ids of the threads named as Bun names a Worker's. */
export const workerThreads = () => readdirSync('/proc/self/task').filter((task) => readFileSync(`/proc/self/task/${task}/comm`, 'utf8').trim() === 'Worker');

/** Those of `tasks` still running after up to 5 s: none once their Workers have ended. */
export async function stillRunning(tasks: string[]): Promise<string[]> {
  const alive = () => tasks.filter((task) => existsSync(`/proc/self/task/${task}`));
  for (let i = 0; i < 200 && alive().length > 0; i++) await Bun.sleep(25);
  return alive();
}
