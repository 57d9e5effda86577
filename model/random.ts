/**
 * A small seeded generator (mulberry32) whose whole state is one 32-bit integer, so that a training
 * run can save it in a checkpoint and resume with exactly the same random draws.
 */
/** The largest seed: the state is 32 bits, so a larger seed would repeat a smaller one's draws. */
export const MAX_SEED = 2 ** 32 - 1;

export class Random {
  constructor(public state: number) {
    this.state = state >>> 0;
  }

  /** Uniform in [0, 1). */
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** Standard normal (Box-Muller). */
  normal(): number {
    const u = 1 - this.next();
    const v = this.next();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }

  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  /** A seed for TensorFlow.js ops that take one (dropout). */
  seed(): number {
    return this.int(2 ** 31);
  }
}
