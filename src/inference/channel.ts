/**
 * An unbounded async queue with one reader: a producer pushes events as they arrive (the pool a
 * job's worker messages, the scheduler a training job's events) and a request handler iterates
 * them. Unbounded is safe because the producers are slow: a generation's events are bounded by its
 * max_tokens plus a few progress events per second, a training job's by a few per step.
 */
export class Channel<T> implements AsyncIterable<T> {
  private readonly items: T[] = [];
  private wake: (() => void) | undefined;
  private closed = false;
  private error: Error | undefined;

  push(item: T): void {
    if (this.closed) return;
    this.items.push(item);
    this.notify();
  }

  close(): void {
    this.closed = true;
    this.notify();
  }

  /** Ends the channel: the reader gets the items already pushed, then this error. */
  fail(error: Error): void {
    if (this.closed) return;
    this.error = error;
    this.close();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    for (;;) {
      const item = this.items.shift();
      if (item !== undefined) {
        yield item;
        continue;
      }
      if (this.closed) {
        if (this.error) throw this.error;
        return;
      }
      await new Promise<void>((resolve) => (this.wake = resolve));
    }
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }
}
