/**
 * Seeds derived from a base seed and a path of integers (split, epoch, step, sample...). Everything
 * random in training is a pure function of such a path, so a run resumed at step s draws exactly
 * what the uninterrupted run drew there, with nothing to save but s.
 */

/** A 32-bit seed for `new Random(...)`, a hash of (seed, ...path): two paths meet rarely, but can. */
export function deriveSeed(seed: number, ...path: number[]): number {
  let h = mix(seed >>> 0 ^ 0x9e3779b9);
  for (const part of path) h = mix((h ^ mix(part >>> 0)) + 0x7f4a7c15);
  return h >>> 0;
}

/** The finalizer of MurmurHash3: every input bit flips about half the output bits. */
function mix(x: number): number {
  x = Math.imul(x ^ (x >>> 16), 0x85ebca6b);
  x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35);
  return (x ^ (x >>> 16)) >>> 0;
}
