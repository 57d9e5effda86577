import { describe, expect, test } from 'bun:test';
import * as tf from '@tensorflow/tfjs-core';
import { ADAMW_KERNEL, AdamW, clipByGlobalNorm, learningRateAt } from '../../model/optim.ts';
import { withoutKernels } from '../src/backend/helpers.ts';

function values(tensor: tf.Tensor): number[] {
  return Array.from(tensor.dataSync());
}

function expectClose(actual: number[], expected: number[], tolerance = 1e-6): void {
  expect(actual.length).toBe(expected.length);
  actual.forEach((value, i) => expect(Math.abs(value - (expected[i] ?? NaN))).toBeLessThan(tolerance));
}

/** Runs `body` with fresh variables and disposes everything it made, so tests do not leak into each other. */
async function withVariables(shapes: Record<string, [number[], number[]]>, body: (vars: Record<string, tf.Variable>) => void | Promise<void>) {
  const vars: Record<string, tf.Variable> = {};
  for (const [name, [data, shape]] of Object.entries(shapes)) vars[name] = tf.variable(tf.tensor(data, shape));
  try {
    await body(vars);
  } finally {
    for (const variable of Object.values(vars)) variable.dispose();
  }
}

/** Runs `body` without the backend's ADAMW_KERNEL (wasm's), so that AdamW writes its update out in buckets. */
const writtenOut = <T>(body: () => T | Promise<T>) => withoutKernels([ADAMW_KERNEL], body);

describe('AdamW', () => {
  test('matches a hand computation for two steps (lr 0.1, betas 0.9/0.95, decay 0.01)', async () => {
    await withVariables({ w: [[1, -2, 0.5, 3], [2, 2]] }, ({ w }) => {
      const optimizer = new AdamW([['w', w!]], { lr: 0.1 });
      const step = (grad: number[]) => tf.tidy(() => optimizer.step({ w: tf.tensor(grad, [2, 2]) }));

      // Step 1: bias-corrected m/sqrt(v) is sign(g), so w <- w * (1 - 0.1 * 0.01) - 0.1 * sign(g);
      // a zero gradient gives a zero update.
      step([0.5, -1, 2, 0]);
      expectClose(values(w!), [1 * 0.999 - 0.1, -2 * 0.999 + 0.1, 0.5 * 0.999 - 0.1, 3 * 0.999]);
      expect(optimizer.stepCount).toBe(1);

      // Step 2, first element, g = -1:
      //   m = 0.9 * 0.05 + 0.1 * -1 = -0.055,      m^ = -0.055 / (1 - 0.9^2)    = -0.2894737
      //   v = 0.95 * 0.0125 + 0.05 * 1 = 0.061875, v^ = 0.061875 / (1 - 0.95^2) = 0.6346154
      //   w = 0.899 * 0.999 - 0.1 * m^ / sqrt(v^) = 0.898101 + 0.0363374 = 0.9344384
      step([-1, 0.25, 1.5, -0.5]);
      expectClose(values(w!), [0.9344384, -1.8486254, 0.3004953, 3.067499]);
      expect(optimizer.stepCount).toBe(2);
      optimizer.dispose();
    });
  });

  test('decays matrices but not vectors (norm gains, biases) by default', async () => {
    await withVariables({ weight: [[1, 1, 1, 1], [2, 2]], bias: [[1, 1], [2]] }, ({ weight, bias }) => {
      const optimizer = new AdamW([['weight', weight!], ['bias', bias!]], { lr: 0.5, weightDecay: 0.1 });
      // With a zero gradient Adam moves nothing, so what remains is the decay alone.
      tf.tidy(() => optimizer.step({ weight: tf.zeros([2, 2]), bias: tf.zeros([2]) }));
      expectClose(values(weight!), [0.95, 0.95, 0.95, 0.95]);
      expectClose(values(bias!), [1, 1]);
      optimizer.dispose();
    });
  });

  test('a predicate can choose which parameters decay', async () => {
    await withVariables({ embedding: [[1, 1], [1, 2]], gain: [[1, 1], [2]] }, ({ embedding, gain }) => {
      const optimizer = new AdamW([['embedding', embedding!], ['gain', gain!]], {
        lr: 0.5,
        weightDecay: 0.1,
        decays: (name) => name === 'gain',
      });
      tf.tidy(() => optimizer.step({ embedding: tf.zeros([1, 2]), gain: tf.zeros([2]) }));
      expectClose(values(embedding!), [1, 1]);
      expectClose(values(gain!), [0.95, 0.95]);
      optimizer.dispose();
    });
  });

  test('the learning rate of step() overrides the default', async () => {
    await withVariables({ w: [[0], [1]] }, ({ w }) => {
      const optimizer = new AdamW([['w', w!]], { lr: 1 });
      tf.tidy(() => optimizer.step({ w: tf.tensor([2]) }, 0.01));
      expectClose(values(w!), [-0.01]);
      optimizer.dispose();
    });
  });

  test('minimizes a quadratic', async () => {
    const target = tf.tensor([[3, -1], [0.5, 2]]);
    await withVariables({ w: [[0, 0, 0, 0], [2, 2]] }, ({ w }) => {
      const optimizer = new AdamW([['w', w!]], { lr: 0.05, weightDecay: 0 });
      const loss = () => tf.sum(tf.square(tf.sub(w!, target))) as tf.Scalar;
      const initial = tf.tidy(() => loss().dataSync()[0] ?? NaN);
      for (let i = 0; i < 400; i++) {
        tf.tidy(() => optimizer.step({ w: tf.variableGrads(loss, [w!]).grads[w!.name]! }));
      }
      const final = tf.tidy(() => loss().dataSync()[0] ?? NaN);
      expect(initial).toBeCloseTo(14.25, 5);
      expect(final).toBeLessThan(1e-4);
      expectClose(values(w!), [3, -1, 0.5, 2], 1e-2);
      optimizer.dispose();
    });
    target.dispose();
  });

  test('leaves a parameter without a gradient alone and refuses gradients for unknown names', async () => {
    await withVariables({ a: [[1, 1], [1, 2]], b: [[1, 1], [1, 2]] }, ({ a, b }) => {
      const optimizer = new AdamW([['a', a!], ['b', b!]], { lr: 0.1 });
      tf.tidy(() => optimizer.step({ a: tf.ones([1, 2]) }));
      expectClose(values(b!), [1, 1]);
      expectClose(values(optimizer.state()['m.b']!), [0, 0]);
      expect(() => tf.tidy(() => optimizer.step({ c: tf.ones([1, 2]) }))).toThrow(/unknown parameter c/);
      expect(() => tf.tidy(() => optimizer.step({ a: tf.ones([2]) }))).toThrow(/gradient of a has shape/);
      optimizer.dispose();
    });
  });

  test('a gradient of the wrong shape moves no parameter, not even those before it', async () => {
    await withVariables({ a: [[1, 1], [1, 2]], b: [[1, 1], [1, 2]] }, ({ a, b }) => {
      const optimizer = new AdamW([['a', a!], ['b', b!]], { lr: 0.1 });
      expect(() => tf.tidy(() => optimizer.step({ a: tf.ones([1, 2]), b: tf.ones([2]) }))).toThrow(/gradient of b has shape/);
      expectClose(values(a!), [1, 1]);
      expectClose(values(optimizer.state()['m.a']!), [0, 0]);
      optimizer.dispose();
    });
  });

  test('updates the parameters in buckets with the same result as one at a time, decayed or not, with a gradient or not', async () => {
    const shapes = { a: [2, 3], bias: [3], b: [3, 2], gain: [2], c: [4, 1], skipped: [2, 2] };
    const start = (name: string, shape: number[]) => tf.variable(tf.tensor(Array.from({ length: tf.util.sizeFromShape(shape) }, (_, i) => Math.sin(name.length + i)), shape));
    const run = (bucketSize: number) => {
      const params = Object.entries(shapes).map(([name, shape]) => [name, start(name, shape)] as [string, tf.Variable]);
      const optimizer = new AdamW(params, { lr: 0.1, weightDecay: 0.1, bucketSize });
      for (let step = 0; step < 3; step++) {
        tf.tidy(() => optimizer.step(Object.fromEntries(params.filter(([name]) => name !== 'skipped').map(([name, param]) => [name, param.square().add(step)]))));
      }
      const numbers = Object.fromEntries([...params.map(([name, param]) => [name, values(param)]), ...Object.entries(optimizer.state()).map(([name, t]) => [name, values(t)])]);
      optimizer.dispose();
      tf.dispose(params.map(([, param]) => param));
      return numbers;
    };
    const joined = await writtenOut(() => run(2 ** 22));
    expect(await writtenOut(() => run(1))).toEqual(joined);
    expect(await writtenOut(() => run(7))).toEqual(joined);
    expect(joined.skipped).toEqual(values(tf.tidy(() => start('skipped', [2, 2]))));
    // Where the backend has the one-kernel update, it gives the same numbers bit for bit.
    expect(run(2 ** 22)).toEqual(joined);
  });

  test.if(tf.getKernel(ADAMW_KERNEL, tf.getBackend()) !== undefined)('where the backend has ADAMW_KERNEL, a parameter\'s update is that one kernel, and no tensor is left over', async () => {
    const params = (['w', 'bias', 'odd'] as const).map((name, i) => [name, tf.variable(tf.randomNormal([[5, 8], [8], [7]][i]!, 0, 1, 'float32', i))] as [string, tf.Variable]);
    const grads = Object.fromEntries(params.map(([name, param]) => [name, tf.randomNormal(param.shape, 0, 1, 'float32', 9)]));
    const optimizer = new AdamW(params, { lr: 0.1 });
    const before = tf.memory().numTensors;
    const { kernels } = await tf.profile(() => optimizer.step(grads));
    expect(kernels.map((kernel) => kernel.name)).toEqual([ADAMW_KERNEL, ADAMW_KERNEL, ADAMW_KERNEL]);
    expect(tf.memory().numTensors).toBe(before);
    optimizer.dispose();
    tf.dispose([...params.map(([, param]) => param), ...Object.values(grads)]);
  });

  test('the kernels that compute a bucket\'s update are as many for 12 parameters as for 2 (on a GPU, each costs a launch)', async () => {
    const computing = async (count: number) => {
      const params = Array.from({ length: count }, (_, i) => [`w${i}`, tf.variable(tf.ones([3, 4]))] as [string, tf.Variable]);
      const grads = Object.fromEntries(params.map(([name]) => [name, tf.ones([3, 4])]));
      const optimizer = new AdamW(params, { lr: 0.1 });
      const { kernels } = await tf.profile(() => optimizer.step(grads));
      optimizer.dispose();
      tf.dispose([...params.map(([, param]) => param), ...Object.values(grads)]);
      // Reshape runs no shader on any backend; joining and splitting are one kernel each here.
      return kernels.filter((kernel) => kernel.name !== 'Reshape').length;
    };
    expect(await writtenOut(() => computing(12))).toBe(await writtenOut(() => computing(2)));
  });

  test('holds the temporaries of one bucket at a time, not of the whole model', async () => {
    const size = 10_000;
    const shapes = Object.fromEntries(Array.from({ length: 10 }, (_, i) => [`w${i}`, [new Array<number>(size).fill(1), [100, 100]]])) as Record<string, [number[], number[]]>;
    await withVariables(shapes, async (vars) => {
      const optimizer = new AdamW(Object.entries(vars), { lr: 0.1, bucketSize: 2 * size });
      const grads = Object.fromEntries(Object.keys(vars).map((name) => [name, tf.ones([100, 100])]));
      const { peakBytes, newBytes } = await writtenOut(() => tf.profile(() => optimizer.step(grads)));
      expect(newBytes).toBe(0);
      // A bucket's step makes some 30 temporaries of its size (here 2 parameters): 60 parameters'
      // worth, where one bucket of all ten would be 300.
      expect(peakBytes - tf.memory().numBytes).toBeLessThan(80 * 4 * size);
      tf.dispose(Object.values(grads));
      optimizer.dispose();
    });
  });

  test('allocates no tensors per step: tf.memory().numTensors is constant', async () => {
    await withVariables({ w: [[1, 2, 3, 4, 5, 6], [2, 3]], bias: [[0, 0, 0], [3]] }, async ({ w, bias }) => {
      const start = tf.memory().numTensors;
      const optimizer = new AdamW([['w', w!], ['bias', bias!]], { lr: 0.1 });
      expect(tf.memory().numTensors).toBe(start + 4); // two moments per parameter, nothing else
      const counts: number[] = [];
      for (let i = 0; i < 5; i++) {
        const grads = { w: tf.randomNormal([2, 3]), bias: tf.randomNormal([3]) };
        optimizer.step(grads);
        tf.dispose(grads);
        counts.push(tf.memory().numTensors);
      }
      expect(new Set(counts).size).toBe(1);
      const before = tf.memory().numTensors;
      optimizer.dispose();
      expect(tf.memory().numTensors).toBe(before - 4);
    });
  });

  test('state() round trip: a restored optimizer takes exactly the same next step', async () => {
    const gradient = (i: number) => tf.tensor([Math.sin(i), Math.cos(i), 0.5 - i, 1], [2, 2]);
    await withVariables({ original: [[1, 2, 3, 4], [2, 2]], restored: [[0, 0, 0, 0], [2, 2]] }, ({ original, restored }) => {
      const first = new AdamW([['w', original!]], { lr: 0.1 });
      for (let i = 0; i < 3; i++) tf.tidy(() => first.step({ w: gradient(i) }));

      // What a checkpoint does: copy the numbers out, build fresh tensors, load them.
      const saved = Object.fromEntries(
        Object.entries(first.state()).map(([key, tensor]) => [key, tf.tensor(values(tensor), tensor.shape)]),
      );
      expect(Object.keys(saved).sort()).toEqual(['m.w', 'v.w']);
      restored!.assign(original!);
      const second = new AdamW([['w', restored!]], { lr: 0.1 });
      second.loadState(saved, first.stepCount);
      tf.dispose(Object.values(saved));
      expect(second.stepCount).toBe(3);

      tf.tidy(() => first.step({ w: gradient(3) }));
      tf.tidy(() => second.step({ w: gradient(3) }));
      expect(values(restored!)).toEqual(values(original!));
      first.dispose();
      second.dispose();
    });
  });

  test('loadState names the first mismatch', async () => {
    await withVariables({ w: [[1, 2], [2]] }, ({ w }) => {
      const optimizer = new AdamW([['w', w!]], { lr: 0.1 });
      const m = tf.zeros([2]);
      const wrong = tf.zeros([3]);
      expect(() => optimizer.loadState({ 'm.w': m }, 1)).toThrow('AdamW state: missing v.w');
      expect(() => optimizer.loadState({ 'm.w': m, 'v.w': wrong }, 1)).toThrow(/v\.w is float32 \[3\], expected float32 \[2\]/);
      expect(() => optimizer.loadState({ 'm.w': m, 'v.w': m, 'm.x': m }, 1)).toThrow('unexpected m.x');
      expect(() => optimizer.loadState({ 'm.w': m, 'v.w': m }, -1)).toThrow(/stepCount/);
      tf.dispose([m, wrong]);
      optimizer.dispose();
    });
  });
});

describe('learningRateAt', () => {
  const schedule = { lr: 1e-3, warmup: 100, steps: 1100 };

  test('warms up linearly from 0 to lr', () => {
    expect(learningRateAt(0, schedule)).toBe(0);
    expect(learningRateAt(1, schedule)).toBeCloseTo(1e-5, 12);
    expect(learningRateAt(50, schedule)).toBeCloseTo(5e-4, 12);
    expect(learningRateAt(100, schedule)).toBeCloseTo(1e-3, 12);
  });

  test('decays along a cosine to lr / 10 at the last step, and stays there', () => {
    expect(learningRateAt(600, schedule)).toBeCloseTo((1e-3 + 1e-4) / 2, 12);
    expect(learningRateAt(1100, schedule)).toBeCloseTo(1e-4, 12);
    expect(learningRateAt(5000, schedule)).toBeCloseTo(1e-4, 12);
    for (let step = 100; step < 1100; step += 50) {
      expect(learningRateAt(step + 50, schedule)).toBeLessThan(learningRateAt(step, schedule));
    }
  });

  test('honours minLr and a schedule without warmup', () => {
    expect(learningRateAt(0, { lr: 1, warmup: 0, steps: 10, minLr: 0 })).toBe(1);
    expect(learningRateAt(5, { lr: 1, warmup: 0, steps: 10, minLr: 0 })).toBeCloseTo(0.5, 12);
    expect(learningRateAt(10, { lr: 1, warmup: 0, steps: 10, minLr: 0 })).toBe(0);
  });

  test('refuses a warmup longer than the run', () => {
    expect(() => learningRateAt(0, { lr: 1, warmup: 20, steps: 10 })).toThrow(/warmup <= steps/);
  });
});

describe('clipByGlobalNorm', () => {
  test('scales every gradient in place by one factor so the global norm is maxNorm, and returns the norm before', () => {
    const grads = [Float32Array.of(3), null, Float32Array.of(4, 0)];
    expect(clipByGlobalNorm(grads, 1)).toBeCloseTo(5, 6);
    expectClose(Array.from(grads[0]!), [0.6]);
    expectClose(Array.from(grads[2]!), [0.8, 0]);
    expect(grads[1]).toBeNull();
  });

  test('leaves a gradient below maxNorm unchanged', () => {
    const grads = [Float32Array.of(0.3, 0.4)];
    expect(clipByGlobalNorm(grads, 1)).toBeCloseTo(0.5, 6);
    expect(Array.from(grads[0]!)).toEqual(Array.from(Float32Array.of(0.3, 0.4)));
  });

  test('reports a non-finite norm so that the trainer can skip the step', () => {
    expect(Number.isFinite(clipByGlobalNorm([Float32Array.of(Number.NaN, 1)], 1))).toBe(false);
    expect(clipByGlobalNorm([Float32Array.of(Number.POSITIVE_INFINITY)], 1)).toBe(Number.POSITIVE_INFINITY);
  });

  test('refuses a maxNorm that is not positive', () => {
    expect(() => clipByGlobalNorm([], 0)).toThrow(/maxNorm/);
  });
});
