import { expect, test } from 'bun:test';
import { Random } from '../../model/random.ts';

test('the same seed gives the same draws, and a saved state resumes them exactly', () => {
  const a = new Random(42);
  const b = new Random(42);
  const first = Array.from({ length: 10 }, () => a.next());
  expect(Array.from({ length: 10 }, () => b.next())).toEqual(first);
  const resumed = new Random(a.state);
  expect([resumed.next(), resumed.normal(), resumed.int(7)]).toEqual([a.next(), a.normal(), a.int(7)]);
  expect(new Random(43).next()).not.toBe(first[0]);
});

test('uniform in [0, 1), integers in [0, n), normals of mean 0 and variance 1', () => {
  const random = new Random(3);
  const uniforms = Array.from({ length: 20000 }, () => random.next());
  expect(uniforms.every((u) => u >= 0 && u < 1)).toBe(true);
  expect(uniforms.reduce((s, u) => s + u, 0) / uniforms.length).toBeCloseTo(0.5, 2);
  const ints = Array.from({ length: 7000 }, () => random.int(7));
  expect(new Set(ints)).toEqual(new Set([0, 1, 2, 3, 4, 5, 6]));
  const normals = Array.from({ length: 20000 }, () => random.normal());
  const mean = normals.reduce((s, x) => s + x, 0) / normals.length;
  const variance = normals.reduce((s, x) => s + (x - mean) ** 2, 0) / normals.length;
  expect(Math.abs(mean)).toBeLessThan(0.03);
  expect(Math.abs(variance - 1)).toBeLessThan(0.05);
  expect(random.seed()).toBeLessThan(2 ** 31);
});
