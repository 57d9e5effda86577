/**
 * The order in which a finite source is visited: epoch after epoch, each a fresh seeded permutation.
 * Position p is a pure function of (seed, p), so a resumed run reads what the uninterrupted run read.
 */
import { Random } from '../../model/random.ts';
import { deriveSeed } from './seed.ts';

export class EpochOrder {
  private epoch = -1;
  private permutation: Uint32Array = new Uint32Array(0);

  constructor(
    private readonly size: number,
    private readonly seed: number,
  ) {}

  /** The source index visited at position p. */
  at(position: number): number {
    if (!Number.isFinite(this.size)) return position;
    const epoch = Math.floor(position / this.size);
    if (epoch !== this.epoch) this.shuffle(epoch);
    return this.permutation[position - epoch * this.size]!;
  }

  private shuffle(epoch: number): void {
    const random = new Random(deriveSeed(this.seed, epoch));
    const p = Uint32Array.from({ length: this.size }, (_, i) => i);
    for (let i = p.length - 1; i > 0; i--) {
      const j = random.int(i + 1);
      [p[i], p[j]] = [p[j]!, p[i]!];
    }
    this.epoch = epoch;
    this.permutation = p;
  }
}

/** A seeded shuffle of a list (used to hold out a validation split). */
export function shuffled<T>(items: T[], seed: number): T[] {
  const order = new EpochOrder(items.length, seed);
  return items.map((_, i) => items[order.at(i)]!);
}
