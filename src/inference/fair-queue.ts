/**
 * Round-robin across clients: each client has its own FIFO, and the clients take turns. One client
 * that sends 30 requests delays another client's single request by at most one job per worker,
 * where a plain FIFO would make it wait behind all 30.
 */
export class FairQueue<T> {
  // A Map iterates in insertion order: the first key is the client whose turn it is, and a client
  // that was just served is re-inserted at the back.
  private readonly byClient = new Map<string, T[]>();
  private count = 0;

  get size(): number {
    return this.count;
  }

  push(client: string, item: T): void {
    const items = this.byClient.get(client);
    if (items) items.push(item);
    else this.byClient.set(client, [item]);
    this.count++;
  }

  /** The next item in turn, or undefined when empty. */
  shift(): T | undefined {
    return this.take(() => true, 1)[0];
  }

  /**
   * Up to `limit` items that `matches`, in turn: each client in turn gives its first item that
   * matches and goes to the back, until `limit` or no client has one. A client's items that do not
   * match keep their place.
   */
  take(matches: (item: T) => boolean, limit: number): T[] {
    const taken: T[] = [];
    for (let found = true; found && taken.length < limit; ) {
      found = false;
      for (const [client, items] of [...this.byClient]) {
        if (taken.length === limit) break;
        const at = items.findIndex(matches);
        if (at < 0) continue;
        taken.push(items.splice(at, 1)[0]!);
        this.count--;
        found = true;
        this.byClient.delete(client);
        if (items.length > 0) this.byClient.set(client, items);
      }
    }
    return taken;
  }

  /** Takes an item out of the queue (its request went away); false when it was not queued. */
  remove(item: T): boolean {
    for (const [client, items] of this.byClient) {
      const at = items.indexOf(item);
      if (at < 0) continue;
      items.splice(at, 1);
      if (items.length === 0) this.byClient.delete(client);
      this.count--;
      return true;
    }
    return false;
  }
}
