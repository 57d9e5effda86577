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

/** Initial values are drawn from the model's seeded generator so that a seed fixes the whole model. */
export function normalInit(random: Random, shape: number[], std: number): tf.Tensor {
  const size = shape.reduce((a, b) => a * b, 1);
  const values = new Float32Array(size);
  for (let i = 0; i < size; i++) values[i] = random.normal() * std;
  return tf.tensor(values, shape, 'float32');
}
