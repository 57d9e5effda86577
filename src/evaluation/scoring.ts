/**
 * Scores captions against the expected ones: exact match of the whole caption, per file variant,
 * per scene kind and per scene over its variants, and per attribute from the parsed captions, where
 * an unparseable prediction (or a failed request) counts as wrong for every attribute.
 */
import { parseCaption, type CaptionObject } from './caption-parser.ts';

export interface CaptionOutcome {
  /** The scene the file shows: its variants share it. */
  scene: number;
  variant: string;
  expected: string;
  /** The generated caption; null when the request failed. */
  predicted: string | null;
}

export interface Tally {
  correct: number;
  total: number;
  accuracy: number;
}

export interface CaptionScores {
  exact: Tally;
  byVariant: Record<string, Tally>;
  /** Exact match on one-object and on two-object scenes. */
  byObjects: { one: Tally; two: Tally };
  /**
   * Scenes whose every variant is exact, and scenes exact in some variants only: a miss in every
   * variant is the model misreading the scene; a mixed one is a file format or resize throwing it.
   */
  byScene: { everyVariant: Tally; someVariants: number };
  attributes: {
    /** Over every expected object. */
    shape: Tally;
    /** Shape over the objects of each expected size: a small object's shape is the harder to see. */
    shapeBySize: Record<string, Tally>;
    color: Tally;
    size: Tally;
    /** Two-object scenes. */
    relation: Tally;
    /** Two-object scenes: size, colour and shape of the second object all right. */
    secondObject: Tally;
  };
  unparseable: number;
  failed: number;
}

/** The rule of the data set: the whole caption, trimmed, equals the expected one. */
export function exactMatch(expected: string, predicted: string | null): boolean {
  return predicted !== null && predicted.trim() === expected;
}

export function scoreCaptions(outcomes: CaptionOutcome[]): CaptionScores {
  const counts = {
    exact: counter(),
    byVariant: groupedCounter(),
    one: counter(),
    two: counter(),
    shape: counter(),
    shapeBySize: groupedCounter(),
    color: counter(),
    size: counter(),
    relation: counter(),
    secondObject: counter(),
  };
  let unparseable = 0;
  const scenes = new Map<number, { exact: number; total: number }>();
  for (const { scene, variant, expected, predicted } of outcomes) {
    const exact = exactMatch(expected, predicted);
    counts.exact.add(exact);
    const variants = scenes.get(scene) ?? { exact: 0, total: 0 };
    scenes.set(scene, { exact: variants.exact + Number(exact), total: variants.total + 1 });
    counts.byVariant.add(variant, exact);
    const truth = parseCaption(expected);
    if (!truth) throw new Error(`expected caption ${JSON.stringify(expected)} is not of the data set's form`);
    const guess = predicted === null ? null : parseCaption(predicted);
    if (predicted !== null && !guess) unparseable++;
    (truth.objects.length === 1 ? counts.one : counts.two).add(exact);
    truth.objects.forEach((object, i) => {
      const other = guess?.objects[i];
      for (const attribute of ['shape', 'color', 'size'] as const) counts[attribute].add(other?.[attribute] === object[attribute]);
      counts.shapeBySize.add(object.size, other?.shape === object.shape);
    });
    if (truth.relation !== 'alone') {
      counts.relation.add(guess?.relation === truth.relation);
      counts.secondObject.add(sameObject(truth.objects[1]!, guess?.objects[1]));
    }
  }
  return {
    exact: counts.exact.tally(),
    byVariant: counts.byVariant.tallies(),
    byObjects: { one: counts.one.tally(), two: counts.two.tally() },
    byScene: {
      everyVariant: tally([...scenes.values()].filter((v) => v.exact === v.total).length, scenes.size),
      someVariants: [...scenes.values()].filter((v) => v.exact > 0 && v.exact < v.total).length,
    },
    attributes: {
      shape: counts.shape.tally(),
      shapeBySize: counts.shapeBySize.tallies(),
      color: counts.color.tally(),
      size: counts.size.tally(),
      relation: counts.relation.tally(),
      secondObject: counts.secondObject.tally(),
    },
    unparseable,
    failed: outcomes.filter((o) => o.predicted === null).length,
  };
}

function sameObject(expected: CaptionObject, predicted: CaptionObject | undefined): boolean {
  return predicted !== undefined && predicted.size === expected.size && predicted.color === expected.color && predicted.shape === expected.shape;
}

interface Counter {
  add(correct: boolean): void;
  tally(): Tally;
}

export function tally(correct: number, total: number): Tally {
  return { correct, total, accuracy: total === 0 ? 0 : correct / total };
}

/** One counter per key (a variant, a size), in the order the keys first appear. */
function groupedCounter(): { add(key: string, correct: boolean): void; tallies(): Record<string, Tally> } {
  const counters = new Map<string, Counter>();
  return {
    add: (key, ok) => {
      if (!counters.has(key)) counters.set(key, counter());
      counters.get(key)!.add(ok);
    },
    tallies: () => Object.fromEntries([...counters].map(([key, c]) => [key, c.tally()])),
  };
}

function counter(): Counter {
  let correct = 0;
  let total = 0;
  return {
    add: (ok) => {
      correct += ok ? 1 : 0;
      total++;
    },
    tally: () => tally(correct, total),
  };
}
