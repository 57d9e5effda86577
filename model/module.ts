/**
 * The small base every network part builds on: it owns named trainable variables and child parts,
 * so that a checkpoint, an optimizer or a test can walk the whole model by stable dotted names
 * (`text.layers.0.attention.qkv.weight`), as PyTorch's `named_parameters()` does.
 */
import * as tf from '@tensorflow/tfjs-core';
// The Node build of tfjs-core that Bun loads does not attach the chained ops (x.reshape(...)) that
// the model is written with; this side-effect import does, on the shared global Tensor class.
import '@tensorflow/tfjs-core/dist/public/chained_ops/register_all_chained_ops';
import type { Random } from './random.ts';

export abstract class Module {
  private readonly params = new Map<string, tf.Variable>();
  private readonly children = new Map<string, Module>();
  private readonly parts = new Map<string, string[]>();

  protected param(name: string, value: tf.Tensor): tf.Variable {
    const variable = tf.variable(value, true);
    value.dispose();
    this.params.set(name, variable);
    return variable;
  }

  protected child<M extends Module>(name: string, module: M): M {
    this.children.set(name, module);
    return module;
  }

  /**
   * Declares that parameter `name` (dotted, below this module) is kept in checkpoints as `parts`:
   * equal blocks of its last axis, in order. A product fused for speed (queries, keys and values
   * in one) keeps the names and shapes its separate weights were saved under.
   */
  protected storeAsParts(name: string, parts: string[]): void {
    this.parts.set(name, parts);
  }

  /** Every parameter kept in checkpoints as parts: its full name -> the full names of its parts. */
  storedParts(prefix = ''): Map<string, string[]> {
    const out = new Map<string, string[]>();
    for (const [name, parts] of this.parts) out.set(prefix + name, parts.map((part) => prefix + part));
    for (const [name, module] of this.children) for (const entry of module.storedParts(`${prefix}${name}.`)) out.set(...entry);
    return out;
  }

  namedParameters(prefix = ''): [string, tf.Variable][] {
    const out: [string, tf.Variable][] = [];
    for (const [name, variable] of this.params) out.push([prefix + name, variable]);
    for (const [name, module] of this.children) out.push(...module.namedParameters(`${prefix}${name}.`));
    return out;
  }

  parameterCount(): number {
    return this.namedParameters().reduce((sum, [, v]) => sum + v.size, 0);
  }

  dispose(): void {
    for (const variable of this.params.values()) variable.dispose();
    for (const module of this.children.values()) module.dispose();
  }
}

/**
 * Initial values are drawn from the model's seeded generator so that a seed fixes the whole model.
 * With `blocks` > 1 the last axis is drawn block after block, as the separate weights that a fused
 * one replaces were: a seed still gives the model it gave before they were fused.
 */
export function normalInit(random: Random, shape: number[], std: number, blocks = 1): tf.Tensor {
  const size = shape.reduce((a, b) => a * b, 1);
  const width = shape[shape.length - 1]! / blocks;
  const rows = size / (width * blocks);
  const values = new Float32Array(size);
  for (let b = 0; b < blocks; b++) {
    for (let r = 0; r < rows; r++) for (let c = 0; c < width; c++) values[r * width * blocks + b * width + c] = random.normal() * std;
  }
  return tf.tensor(values, shape, 'float32');
}
