import { describe, expect, test } from 'bun:test';
import { FairQueue } from '../../../src/inference/fair-queue.ts';

describe('FairQueue', () => {
  test('clients take turns; each client is first in, first out', () => {
    const queue = new FairQueue<string>();
    for (const item of ['a1', 'a2', 'a3']) queue.push('a', item);
    queue.push('b', 'b1');
    queue.push('c', 'c1');
    queue.push('b', 'b2');
    const order: string[] = [];
    for (let item = queue.shift(); item; item = queue.shift()) order.push(item);
    expect(order).toEqual(['a1', 'b1', 'c1', 'a2', 'b2', 'a3']);
    expect(queue.size).toBe(0);
  });

  test('a client arriving later waits behind one item per client, not behind a backlog', () => {
    const queue = new FairQueue<string>();
    for (let i = 0; i < 30; i++) queue.push('flood', `f${i}`);
    expect(queue.shift()).toBe('f0');
    queue.push('polite', 'p0');
    expect(queue.shift()).toBe('f1');
    expect(queue.shift()).toBe('p0');
  });

  test('remove() takes an item out wherever it waits', () => {
    const queue = new FairQueue<string>();
    queue.push('a', 'a1');
    queue.push('b', 'b1');
    queue.push('a', 'a2');
    expect(queue.remove('b1')).toBe(true);
    expect(queue.remove('b1')).toBe(false);
    expect(queue.size).toBe(2);
    expect([queue.shift(), queue.shift(), queue.shift()]).toEqual(['a1', 'a2', undefined]);
  });

  test('take() gives the matching items in turn, up to a limit, and leaves the others in their places', () => {
    const queue = new FairQueue<string>();
    for (const item of ['a1', 'a2:x', 'a3:x']) queue.push('a', item);
    queue.push('b', 'b1:x');
    queue.push('c', 'c1');
    queue.push('b', 'b2:x');
    const matches = (item: string) => item.endsWith(':x');
    expect(queue.take(matches, 3)).toEqual(['a2:x', 'b1:x', 'a3:x']);
    expect(queue.take(matches, 3)).toEqual(['b2:x']);
    expect(queue.take(matches, 3)).toEqual([]);
    expect(queue.size).toBe(2);
    // c's turn came before a's: a was served last.
    expect([queue.shift(), queue.shift(), queue.shift()]).toEqual(['c1', 'a1', undefined]);
  });
});
