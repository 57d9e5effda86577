/**
 * Training updates (DESIGN.md section 3, Training): AdamW (Loshchilov & Hutter, "Decoupled Weight
 * Decay Regularization", 2019, with PyTorch's bias correction), linear warmup + cosine decay, and
 * global-norm gradient clipping.
 *
 * AdamW is written with plain tensor ops rather than tf.train so that its moments are named tensors a
 * checkpoint can save (`optimizer.safetensors`) and a resumed run can load.
 */
import * as tf from '@tensorflow/tfjs-core';

export type Gradients = Record<string, tf.Tensor> | tf.NamedTensorMap;

export interface AdamWOptions {
  /** Default learning rate of `step()`; a schedule passes its own each step. */
  lr: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  weightDecay?: number;
  /** Which parameters are decayed; default `decaysByDefault`. */
  decays?: (name: string, param: tf.Variable) => boolean;
  /** Most elements updated together, default 2^22: see `AdamW.step`. */
  bucketSize?: number;
}

/**
 * Only matrices and larger (linear weights, embeddings, memory weights) are decayed. Vectors and
 * scalars (norm gains, biases) are not: pulling a norm's gain toward 0 fights the normalization, and a
 * bias has too few degrees of freedom to overfit. This is the rule of nanoGPT and most LLM recipes.
 * The memory's residual-norm gains ([H, 1, dim], memory-networks.ts) are decayed as matrices are:
 * stored as the gain less 1, they are pulled toward a gain of 1, which the normalization does not fight.
 */
export function decaysByDefault(_name: string, param: tf.Variable): boolean {
  return param.rank >= 2;
}

/**
 * One parameter's AdamW update as one kernel, for a backend that registers one (wasm): inputs
 * `param`, `grad`, `m`, `v`; attrs `beta1`, `beta2`, `eps`, `lr`, `decay` (the factor on the weight,
 * 1 - lr weightDecay or 1), `correction1`, `correction2`; outputs the next param, m and v, computed
 * as `AdamW.step` writes them out. Written out, an update is 14 passes over the parameters and their
 * moments, and the buckets' joins and splits more: 370 ms of a 2.4 s training step of the original
 * configuration on WASM.
 */
export const ADAMW_KERNEL = 'TitansAdamW';

/** The constants of one AdamW step: ADAMW_KERNEL's attrs, less the decay, which is a parameter's own. */
interface StepConstants {
  beta1: number;
  beta2: number;
  eps: number;
  lr: number;
  correction1: number;
  correction2: number;
}

interface Slot {
  name: string;
  param: tf.Variable;
  decays: boolean;
  m: tf.Variable;
  v: tf.Variable;
}

export class AdamW {
  /** Number of updates applied; the bias correction of the next one uses stepCount + 1. */
  stepCount = 0;
  private readonly slots: Slot[];
  private readonly names = new Set<string>();
  private readonly beta1: number;
  private readonly beta2: number;
  private readonly eps: number;
  private readonly weightDecay: number;
  private readonly bucketSize: number;

  constructor(
    params: [string, tf.Variable][],
    private readonly options: AdamWOptions,
  ) {
    this.beta1 = options.beta1 ?? 0.9;
    this.beta2 = options.beta2 ?? 0.95;
    this.eps = options.eps ?? 1e-8;
    this.weightDecay = options.weightDecay ?? 0.01;
    this.bucketSize = options.bucketSize ?? 2 ** 22;
    const decays = options.decays ?? decaysByDefault;
    this.slots = params.map(([name, param]) => {
      if (this.names.has(name)) throw new Error(`AdamW: parameter ${name} is listed twice`);
      this.names.add(name);
      return {
        name,
        param,
        decays: decays(name, param),
        m: zeroMoment(param),
        v: zeroMoment(param),
      };
    });
  }

  /**
   * Applies one update. A parameter without a gradient is left alone, moments included (as PyTorch
   * does for a parameter whose grad is None); a gradient for an unknown name is a bug and throws.
   *
   * Where the backend has ADAMW_KERNEL, each parameter is one kernel. Elsewhere the parameters that
   * have a gradient are updated in buckets (see `buckets`): each bucket's gradients, moments and
   * weights are joined into one vector each, the update runs once over them, and the results are
   * split back. On a GPU each kernel costs a launch whatever its size, and one parameter's update is
   * some 14 kernels; a bucket's is the same 14, plus a slice per tensor.
   */
  step(grads: Gradients, lr: number = this.options.lr): void {
    for (const name of Object.keys(grads)) {
      if (!this.names.has(name)) {
        throw new Error(`AdamW: gradient for unknown parameter ${name}`);
      }
    }
    // Checked before any parameter moves, so that a bad gradient leaves the model as it was.
    for (const { name, param } of this.slots) {
      const grad = grads[name];
      if (grad !== undefined && !tf.util.arraysEqual(grad.shape, param.shape)) {
        throw new Error(`AdamW: gradient of ${name} has shape [${grad.shape}], parameter [${param.shape}]`);
      }
    }
    this.stepCount++;
    const { beta1, beta2, eps } = this;
    const constants: StepConstants = { beta1, beta2, eps, lr, correction1: 1 - beta1 ** this.stepCount, correction2: 1 - beta2 ** this.stepCount };
    if (tf.getKernel(ADAMW_KERNEL, tf.getBackend()) !== undefined) {
      for (const slot of this.slots) {
        const grad = grads[slot.name];
        if (grad !== undefined) this.stepInKernel(slot, grad, constants);
      }
    } else {
      for (const bucket of this.buckets(grads)) this.stepWrittenOut(bucket, grads, constants);
    }
  }

  /** Decoupled: the decay shrinks the weight directly instead of entering the gradient moments. */
  private decayOf(slot: Slot, lr: number): number {
    return slot.decays && this.weightDecay > 0 ? 1 - lr * this.weightDecay : 1;
  }

  private stepInKernel(slot: Slot, grad: tf.Tensor, constants: StepConstants): void {
    const { param, m, v } = slot;
    const next = tf.engine().runKernel(ADAMW_KERNEL, { param, grad, m, v }, { ...constants, decay: this.decayOf(slot, constants.lr) }) as tf.Tensor[];
    // assign() shares the data and counts a reference: the kernel's outputs can go at once.
    [param, m, v].forEach((variable, i) => variable.assign(next[i]!));
    tf.dispose(next);
  }

  private stepWrittenOut(bucket: Slot[], grads: Gradients, { beta1, beta2, eps, lr, correction1, correction2 }: StepConstants): void {
    // One tidy per bucket: the temporaries of all parameters at once would be some 30 copies of
    // the model, far more than WASM's 4 GiB for the original configuration's 110M parameters.
    tf.tidy(() => {
      const grad = joined(bucket.map(({ name }) => grads[name]!));
      const m = joined(bucket.map((slot) => slot.m));
      const v = joined(bucket.map((slot) => slot.v));
      const param = joined(bucket.map((slot) => slot.param));
      const mNext = m.mul(beta1).add(grad.mul(1 - beta1));
      const vNext = v.mul(beta2).add(grad.square().mul(1 - beta2));
      const decay = this.decayOf(bucket[0]!, lr);
      const decayed = decay !== 1 ? param.mul(decay) : param;
      const denominator = vNext.div(correction2).sqrt().add(eps);
      const update = mNext.div(correction1).div(denominator).mul(lr);
      const paramNext = decayed.sub(update);
      const sizes = bucket.map((slot) => slot.param.size);
      const [ms, vs, params] = [mNext, vNext, paramNext].map((vector) => split(vector, sizes));
      bucket.forEach((slot, i) => {
        slot.m.assign(ms![i]!.reshape(slot.m.shape));
        slot.v.assign(vs![i]!.reshape(slot.v.shape));
        slot.param.assign(params![i]!.reshape(slot.param.shape));
      });
    });
  }

  /**
   * The slots with a gradient, those decayed apart from the others (a bucket has one decay factor),
   * cut where a bucket would pass `bucketSize` elements: its temporaries are some 30 copies of it.
   * A parameter larger than that is a bucket of its own.
   */
  private buckets(grads: Gradients): Slot[][] {
    const buckets: Slot[][] = [];
    for (const decays of [true, false]) {
      let bucket: Slot[] = [];
      let size = 0;
      for (const slot of this.slots) {
        if (slot.decays !== decays || grads[slot.name] === undefined) continue;
        if (bucket.length > 0 && size + slot.param.size > this.bucketSize) {
          buckets.push(bucket);
          bucket = [];
          size = 0;
        }
        bucket.push(slot);
        size += slot.param.size;
      }
      if (bucket.length > 0) buckets.push(bucket);
    }
    return buckets;
  }

  /** The moments as `m.<param>` / `v.<param>`. They stay owned by the optimizer: do not dispose them. */
  state(): Record<string, tf.Tensor> {
    const tensors: Record<string, tf.Tensor> = {};
    for (const { name, m, v } of this.slots) {
      tensors[`m.${name}`] = m;
      tensors[`v.${name}`] = v;
    }
    return tensors;
  }

  /** Restores what `state()` saved. The tensors are copied; the caller keeps ownership of its own. */
  loadState(tensors: Record<string, tf.Tensor> | tf.NamedTensorMap, stepCount: number): void {
    if (!Number.isInteger(stepCount) || stepCount < 0) {
      throw new RangeError(`AdamW: stepCount must be an integer >= 0, got ${stepCount}`);
    }
    const expected = new Map<string, tf.Variable>();
    for (const { name, m, v } of this.slots) {
      expected.set(`m.${name}`, m);
      expected.set(`v.${name}`, v);
    }
    for (const [key, target] of expected) {
      const tensor = tensors[key];
      if (tensor === undefined) throw new Error(`AdamW state: missing ${key}`);
      if (!tf.util.arraysEqual(tensor.shape, target.shape) || tensor.dtype !== target.dtype) {
        throw new Error(
          `AdamW state: ${key} is ${tensor.dtype} [${tensor.shape}], expected ${target.dtype} [${target.shape}]`,
        );
      }
    }
    for (const key of Object.keys(tensors)) {
      if (!expected.has(key)) throw new Error(`AdamW state: unexpected ${key}`);
    }
    // assign() shares the data and counts a reference, so the caller may dispose its tensors.
    for (const [key, target] of expected) target.assign(tensors[key] as tf.Tensor);
    this.stepCount = stepCount;
  }

  dispose(): void {
    for (const { m, v } of this.slots) {
      m.dispose();
      v.dispose();
    }
  }
}

export interface ScheduleOptions {
  /** Peak learning rate, reached at the end of warmup. */
  lr: number;
  warmup: number;
  /** Total steps: the rate reaches minLr here and stays there. */
  steps: number;
  /** Default lr / 10. */
  minLr?: number;
}

/**
 * Learning rate of update number `step`, counted from 1 so that the first update does not use the
 * warmup's 0: linear from 0 at step 0 to lr at `warmup`, then half a cosine down to minLr at `steps`.
 */
export function learningRateAt(step: number, { lr, warmup, steps, minLr = lr / 10 }: ScheduleOptions): number {
  if (!(warmup >= 0 && steps >= warmup)) {
    throw new RangeError(`schedule needs 0 <= warmup <= steps, got warmup ${warmup}, steps ${steps}`);
  }
  if (step < warmup) return (lr * step) / warmup;
  if (step >= steps) return minLr;
  const progress = (step - warmup) / (steps - warmup);
  return minLr + 0.5 * (lr - minLr) * (1 + Math.cos(Math.PI * progress));
}

/**
 * Scales all gradients in place by one factor so that their global L2 norm is at most maxNorm
 * (PyTorch's clip_grad_norm_), and returns the norm before clipping; a non-finite one tells the
 * trainer to skip the step. The gradients are host arrays (null: no gradient this step), as the
 * trainer averages them: summed there in float64, the norm costs a GPU neither kernels nor a read.
 */
export function clipByGlobalNorm(grads: readonly (Float32Array | null)[], maxNorm: number): number {
  if (!(maxNorm > 0)) throw new RangeError(`maxNorm must be > 0, got ${maxNorm}`);
  let squares = 0;
  for (const grad of grads) if (grad) for (let i = 0; i < grad.length; i++) squares += grad[i]! * grad[i]!;
  const norm = Math.sqrt(squares);
  // The epsilon keeps the factor finite at norm 0 and lands just under maxNorm, as PyTorch's does.
  const scale = Math.min(1, maxNorm / (norm + 1e-6));
  if (scale < 1) for (const grad of grads) if (grad) for (let i = 0; i < grad.length; i++) grad[i]! *= scale;
  return norm;
}

/** The tensors as one vector: joined, or for one tensor the same data reshaped. */
function joined(tensors: tf.Tensor[]): tf.Tensor {
  if (tensors.length === 1) return tensors[0]!.reshape([-1]);
  return tf.concat(tensors.map((tensor) => tensor.reshape([-1])));
}

/** `joined` undone: the vector cut into pieces of these sizes. */
function split(vector: tf.Tensor, sizes: number[]): tf.Tensor[] {
  return sizes.length === 1 ? [vector] : tf.split(vector, sizes);
}

/** A moment buffer of zeros; tf.variable copies its initial value, which is then freed. */
function zeroMoment(param: tf.Variable): tf.Variable {
  const zeros = tf.zerosLike(param);
  const moment = tf.variable(zeros, false);
  zeros.dispose();
  return moment;
}
