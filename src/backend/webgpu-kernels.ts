/**
 * Kernels of the webgpu tier beyond tfjs-backend-webgpu 4.22's own.
 *
 * A repair of its AddN. Its shader binds every input as a storage buffer, and a WebGPU device allows
 * 8 per shader stage unless it asks for more, which tfjs does not: with more than 7 inputs the
 * pipeline is invalid, and the sum comes back unwritten, with nothing but a validation message on
 * stderr. Gradient clipping once summed one square per parameter (40 for the shapes preset). Here the
 * inputs are added in groups that fit, then the groups' sums.
 *
 * One-launch kernels for x W + b (and a gate's sigmoid of it), LayerNorm, RMSNorm, a row's L2
 * normalisation, GELU and its first two derivatives, one query's attention (model/layers.ts names
 * them and registers their gradients), the memory network's residual norm (model/memory-networks.ts)
 * and a decoding step's window and attention (model/attention.ts). On a GPU every launch costs about the same
 * whatever its size, and written out in TensorFlow.js ops these are 2 (3), 10, 6, 5, 6, 18, 21, 4,
 * 10 and 4 or more launches. The affine map is tfjs-backend-webgpu's own fused product, which adds
 * the bias and applies the sigmoid in the product's shader; the WASM tier registers none of these,
 * and keeps its BLAS product.
 */
import * as tf from '@tensorflow/tfjs-core';
import { PROJECTED_ATTENTION_KERNEL, WINDOW_APPEND_KERNEL } from '../../model/attention.ts';
import {
  AFFINE_KERNEL, ATTENTION_KERNEL, GELU_C, GELU_CUBIC, GELU_DDDU, GELU_DERIVATIVE_KERNEL, GELU_KERNEL, GELU_SECOND_DERIVATIVE_KERNEL, L2_NORM_KERNEL,
  LAYER_NORM_INPUT_GRADIENT_KERNEL, LAYER_NORM_KERNEL, RMS_NORM_KERNEL, SCALED_ROWS_GRADIENT_KERNEL,
} from '../../model/layers.ts';
import { RESIDUAL_NORM_KERNEL } from '../../model/memory-networks.ts';

type AddNKernel = (args: { inputs: tf.TensorInfo[]; backend: tf.KernelBackend }) => tf.TensorInfo;

/** Replaces the backend's AddN by one that adds at most `maxInputs` tensors per launch; call once. */
export function registerGroupedAddN(backendName: string, maxInputs: number): void {
  const stock = tf.getKernel(tf.AddN, backendName)!.kernelFunc as unknown as AddNKernel;
  const addN: AddNKernel = ({ inputs, backend }) => {
    const partialSums: tf.TensorInfo[] = [];
    let terms = inputs;
    while (terms.length > maxInputs) {
      const sums: tf.TensorInfo[] = [];
      for (let start = 0; start < terms.length; start += maxInputs) {
        const group = terms.slice(start, start + maxInputs);
        if (group.length === 1) {
          sums.push(group[0]!);
          continue;
        }
        const sum = stock({ inputs: group, backend });
        partialSums.push(sum);
        sums.push(sum);
      }
      terms = sums;
    }
    const total = stock({ inputs: terms, backend });
    for (const sum of partialSums) backend.disposeData(sum.dataId);
    return total;
  };
  tf.unregisterKernel(tf.AddN, backendName);
  tf.registerKernel({ kernelName: tf.AddN, backendName, kernelFunc: addN as unknown as tf.KernelFunc });
}

/** What tfjs-backend-webgpu takes as a program: its WGSL and how to dispatch it (its WebGPUProgram). */
interface Program {
  variableNames: string[];
  outputShape: number[];
  dispatchLayout: { x: number[] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number];
  shaderKey: string;
  size?: boolean;
  getUserCode(): string;
}

interface WebGPUBackend extends tf.KernelBackend {
  runWebGPUProgram(program: Program, inputs: tf.TensorInfo[], outputDtype: tf.DataType): tf.TensorInfo;
}

type KernelArgs = { inputs: tf.NamedTensorInfoMap; backend: WebGPUBackend; attrs: tf.NamedAttrMap };

/** Threads that share one row's reduction. */
const ROW_WORKGROUP = 64;

/**
 * A row's sum and largest value, which every thread of a workgroup calls with its own part and all
 * get: the parts are halved in workgroup memory, and the result passes through a variable that one
 * thread writes (returning partials[0] read after the last barrier gave a wrong LayerNorm on Mesa).
 */
const WORKGROUP_REDUCTIONS = Object.entries({ Sum: (a: string, b: string) => `${a} + ${b}`, Max: (a: string, b: string) => `max(${a}, ${b})` })
  .map(([name, combine]) => `
      var<workgroup> partial${name}s : array<f32, ${ROW_WORKGROUP}>;
      var<workgroup> row${name}Result : f32;

      fn row${name}(tid : i32, part : f32) -> f32 {
        partial${name}s[tid] = part;
        workgroupBarrier();
        for (var half = ${ROW_WORKGROUP / 2}; half > 0; half = half >> 1) {
          if (tid < half) {
            partial${name}s[tid] = ${combine(`partial${name}s[tid]`, `partial${name}s[tid + half]`)};
          }
          workgroupBarrier();
        }
        if (tid == 0) {
          row${name}Result = partial${name}s[0];
        }
        workgroupBarrier();
        return row${name}Result;
      }`)
  .join('\n');

/**
 * The inputs of each row norm, after the rows it normalizes (`x`); whether it centres them, and
 * whether it scales by the mean of their squares or by their sum; and the value it writes.
 */
const ROW_NORMS = {
  layer: { inputs: ['gain', 'bias'], centred: true, averaged: true, output: 'normalized * getGain(col) + getBias(col)' },
  rms: { inputs: ['gain'], centred: false, averaged: true, output: 'normalized * getGain(col)' },
  l2: { inputs: [], centred: false, averaged: false, output: 'normalized' },
  // gamma is one row per group of rows (a memory's batch and head), the residual one per row.
  residual: { inputs: ['gamma', 'residual'], centred: true, averaged: true, output: 'normalized * (1.0 + getGamma(row / (rows / uniforms.gammaShape[0]), col)) + getResidual(row, col)' },
};

type RowNorm = keyof typeof ROW_NORMS;

/**
 * A program that gives each row of a [rows, cols] output one workgroup. Its body sees `row` (the
 * workgroup's linear index, which the backend folds into two dimensions past 65,535 workgroups,
 * clamped to the last row so that every thread reaches the barriers), `tid`, `rows` and `cols`;
 * it reduces with rowSum and rowMax, and writes where `linearRow < rows` (the extra workgroups
 * write nothing). Each thread takes every ROW_WORKGROUP-th column (`for (var col = tid; ...)`).
 */
function rowProgram(shaderKey: string, variableNames: string[], rows: number, cols: number, body: string): Program {
  return {
    variableNames,
    outputShape: [rows, cols],
    dispatchLayout: { x: [0, 1] },
    dispatch: [rows, 1, 1],
    workgroupSize: [ROW_WORKGROUP, 1, 1],
    shaderKey,
    getUserCode: () => `
      ${WORKGROUP_REDUCTIONS}

      fn main(index : i32) {
        let rows = uniforms.outShape[0];
        let cols = uniforms.outShape[1];
        let linearRow = i32(workgroupId.y * numWorkgroups.x + workgroupId.x);
        let row = min(linearRow, rows - 1);
        let tid = i32(localId.x);
        ${body}
      }
    `,
  };
}

/** Every column of the row, a thread's share of them: the loop a row program's body runs. */
const EACH_COLUMN = `for (var col = tid; col < cols; col += ${ROW_WORKGROUP})`;

/**
 * A norm over the last axis: a thread's strided terms, then the partial sums halved in workgroup
 * memory. LayerNorm and the memory's residual norm centre each row on its mean first (two passes,
 * as the ops written out do); RMSNorm and L2 normalisation do not centre.
 */
function rowNormProgram(kind: RowNorm, rows: number, cols: number, eps: number): Program {
  const { inputs, centred, averaged, output } = ROW_NORMS[kind];
  return rowProgram(`titans_${kind}Norm_${eps}`, ['x', ...inputs], rows, cols, `
        var mean = 0.0;
        ${centred ? `
        var sum = 0.0;
        ${EACH_COLUMN} {
          sum += getX(row, col);
        }
        mean = rowSum(tid, sum) / f32(cols);` : ''}
        var squares = 0.0;
        ${EACH_COLUMN} {
          let centredValue = getX(row, col) - mean;
          squares += centredValue * centredValue;
        }
        let inverseStd = inverseSqrt(rowSum(tid, squares)${averaged ? ' / f32(cols)' : ''} + ${f32(eps)});
        if (linearRow < rows) {
          ${EACH_COLUMN} {
            let normalized = (getX(row, col) - mean) * inverseStd;
            setOutputAtCoords(row, col, ${output});
          }
        }`);
}

/**
 * model/layers.ts scaledRowsGradient: r u - x r^3 reduce(u x) with r = (reduce(x^2) + eps)^-1/2,
 * the two reductions sums, or means.
 */
function scaledRowsGradientProgram(rows: number, cols: number, eps: number, averaged: boolean): Program {
  const reduced = (sum: string) => (averaged ? `${sum} / f32(cols)` : sum);
  return rowProgram(`titansScaledRowsGradient_${eps}_${averaged}`, ['u', 'x'], rows, cols, `
        var squares = 0.0;
        var products = 0.0;
        ${EACH_COLUMN} {
          let x = getX(row, col);
          squares += x * x;
          products += getU(row, col) * x;
        }
        let inverse = inverseSqrt(${reduced('rowSum(tid, squares)')} + ${f32(eps)});
        let product = ${reduced('rowSum(tid, products)')};
        if (linearRow < rows) {
          ${EACH_COLUMN} {
            setOutputAtCoords(row, col, inverse * getU(row, col) - getX(row, col) * inverse * inverse * inverse * product);
          }
        }`);
}

/**
 * model/layers.ts layerNormInputGradient: r (u - mean(u) - n mean(u n)), n = (x - mean(x)) r and
 * r = (variance(x) + eps)^-1/2.
 */
function layerNormInputGradientProgram(rows: number, cols: number, eps: number): Program {
  return rowProgram(`titansLayerNormInputGradient_${eps}`, ['u', 'x'], rows, cols, `
        var sum = 0.0;
        var uSum = 0.0;
        ${EACH_COLUMN} {
          sum += getX(row, col);
          uSum += getU(row, col);
        }
        let mean = rowSum(tid, sum) / f32(cols);
        let uMean = rowSum(tid, uSum) / f32(cols);
        var squares = 0.0;
        ${EACH_COLUMN} {
          let centred = getX(row, col) - mean;
          squares += centred * centred;
        }
        let inverseStd = inverseSqrt(rowSum(tid, squares) / f32(cols) + ${f32(eps)});
        var products = 0.0;
        ${EACH_COLUMN} {
          products += getU(row, col) * (getX(row, col) - mean) * inverseStd;
        }
        let productMean = rowSum(tid, products) / f32(cols);
        if (linearRow < rows) {
          ${EACH_COLUMN} {
            let normalized = (getX(row, col) - mean) * inverseStd;
            setOutputAtCoords(row, col, inverseStd * (getU(row, col) - uMean - normalized * productMean));
          }
        }`);
}

/**
 * The attention of one query row over its keys (model/layers.ts attend, a decoding step's), one
 * workgroup a row of q [rows, dh] against keys and values [rows * Tk, dh]. With `projectedHeads`
 * H, the query is read from a projection [rows / H, 3 H dh] instead and rotated (q R, R [dh, dh]):
 * model/attention.ts attendFromProjection. The workgroup keeps the query in its memory. The softmax
 * takes the row's largest score first, as tfjs's does; then keys are taken in tiles of a workgroup's
 * size: each thread weighs one key of the tile, and each adds the weighted values into its own
 * columns. Rows and keys are uniforms, so that a decoding step's growing window compiles one shader.
 */
function attentionProgram(rows: number, dh: number, projectedHeads: number | null): Program {
  const loadQuery = projectedHeads === null
    ? 'getQ(row, col)'
    : `rotatedQuery(row / ${projectedHeads}, row % ${projectedHeads}, col)`;
  return {
    variableNames: [...(projectedHeads === null ? ['q'] : ['projection', 'rotation']), 'k', 'v'],
    outputShape: [rows, dh],
    dispatchLayout: { x: [0, 1] },
    dispatch: [rows, 1, 1],
    workgroupSize: [ROW_WORKGROUP, 1, 1],
    shaderKey: `titansAttention_${dh}_${projectedHeads}`,
    getUserCode: () => `
      ${WORKGROUP_REDUCTIONS}
      var<workgroup> tileWeights : array<f32, ${ROW_WORKGROUP}>;
      var<workgroup> query : array<f32, ${dh}>;
      const columnsPerThread = ${Math.ceil(dh / ROW_WORKGROUP)};
      ${projectedHeads === null ? '' : `
      fn rotatedQuery(group : i32, head : i32, col : i32) -> f32 {
        var value = 0.0;
        for (var e = 0; e < ${dh}; e++) {
          value += getProjection(group, head * ${dh} + e) * getRotation(e, col);
        }
        return value;
      }`}

      fn score(row : i32, key : i32) -> f32 {
        let keys = uniforms.kShape[0] / uniforms.outShape[0];
        var dot = 0.0;
        for (var col = 0; col < ${dh}; col++) {
          dot += query[col] * getK(row * keys + key, col);
        }
        return dot * ${f32(1 / Math.sqrt(dh))};
      }

      fn main(index : i32) {
        let rows = uniforms.outShape[0];
        let keys = uniforms.kShape[0] / rows;
        let linearRow = i32(workgroupId.y * numWorkgroups.x + workgroupId.x);
        let row = min(linearRow, rows - 1);
        let tid = i32(localId.x);
        for (var col = tid; col < ${dh}; col += ${ROW_WORKGROUP}) {
          query[col] = ${loadQuery};
        }
        workgroupBarrier();
        var largest = -3.402823e38;
        for (var key = tid; key < keys; key += ${ROW_WORKGROUP}) {
          largest = max(largest, score(row, key));
        }
        largest = rowMax(tid, largest);
        var total = 0.0;
        var weighted : array<f32, columnsPerThread>;
        for (var tile = 0; tile < keys; tile += ${ROW_WORKGROUP}) {
          var weight = 0.0;
          if (tile + tid < keys) {
            weight = exp(score(row, tile + tid) - largest);
          }
          total += weight;
          tileWeights[tid] = weight;
          workgroupBarrier();
          for (var c = 0; c < columnsPerThread; c++) {
            let col = tid + c * ${ROW_WORKGROUP};
            if (col < ${dh}) {
              for (var j = 0; j < min(${ROW_WORKGROUP}, keys - tile); j++) {
                weighted[c] += tileWeights[j] * getV(row * keys + tile + j, col);
              }
            }
          }
          workgroupBarrier();
        }
        total = rowSum(tid, total);
        if (linearRow < rows) {
          for (var c = 0; c < columnsPerThread; c++) {
            let col = tid + c * ${ROW_WORKGROUP};
            if (col < ${dh}) {
              setOutputAtCoords(row, col, weighted[c] / total);
            }
          }
        }
      }
    `,
  };
}

/**
 * model/attention.ts appendToWindow, one thread an element of the window [G * H * W, dh] it writes:
 * row j of a head's W rows is cached row j for the P persistent ones, a row of the last `keep` after
 * them, and for the last the step's row, read from its part of the projection [G, 3 H dh] and
 * rotated (x R, R [dh, dh]) for keys. The window's lengths are uniforms (the cache's rows and the
 * output's), so that one shader serves every step.
 */
function windowAppendProgram(outputRows: number, dh: number, heads: number, part: number, persist: number, rotated: boolean): Program {
  const workgroupSize: [number, number, number] = [128, 1, 1];
  return {
    variableNames: ['cached', 'projection', ...(rotated ? ['rotation'] : [])],
    outputShape: [outputRows, dh],
    dispatchLayout: { x: [0, 1] },
    dispatch: [Math.ceil((outputRows * dh) / workgroupSize[0]), 1, 1],
    workgroupSize,
    size: true,
    shaderKey: `titansWindowAppend_${dh}_${heads}_${part}_${persist}_${rotated}`,
    getUserCode: () => `
      fn projected(group : i32, head : i32, col : i32) -> f32 {
        return getProjection(group, (${part * heads} + head) * ${dh} + col);
      }

      fn main(index : i32) {
        if (index < uniforms.size) {
          let groupHeads = uniforms.projectionShape[0] * ${heads};
          let windowRows = uniforms.outShape[0] / groupHeads;
          let cachedRows = uniforms.cachedShape[0] / groupHeads;
          let col = index % ${dh};
          let row = (index / ${dh}) % windowRows;
          let groupHead = index / (${dh} * windowRows);
          var value = 0.0;
          if (row < ${persist}) {
            value = getCached(groupHead * cachedRows + row, col);
          } else if (row < windowRows - 1) {
            // The last keep = windowRows - 1 - P of the cached rows.
            value = getCached(groupHead * cachedRows + cachedRows - (windowRows - 1 - row), col);
          } else {
            let group = groupHead / ${heads};
            let head = groupHead % ${heads};
            ${rotated ? `for (var e = 0; e < ${dh}; e++) {
              value += projected(group, head, e) * getRotation(e, col);
            }` : 'value = projected(group, head, col);'}
          }
          setOutputAtIndex(index, value);
        }
      }
    `,
  };
}

/**
 * The tanh GELU and its first two derivatives (model/layers.ts), one thread an element: each a WGSL
 * expression of x, and of u = GELU_C (x + GELU_CUBIC x^3) through t = tanh(u) and du = u'.
 * GELU itself is x * sigmoid(2u).
 */
const GELU_FUNCTIONS = {
  gelu: `x / (1.0 + exp(-x * (x * x * ${f32(2 * GELU_C * GELU_CUBIC)} + ${f32(2 * GELU_C)})))`,
  derivative: '0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du',
  secondDerivative: `(1.0 - t * t) * (du + 0.5 * x * (${f32(GELU_DDDU)} * x - 2.0 * t * du * du))`,
};

function geluProgram(kind: keyof typeof GELU_FUNCTIONS, shape: number[]): Program {
  const workgroupSize: [number, number, number] = [128, 1, 1];
  return {
    variableNames: ['x'],
    outputShape: shape,
    dispatchLayout: { x: shape.map((_, i) => i) },
    dispatch: [Math.ceil(tf.util.sizeFromShape(shape) / workgroupSize[0]), 1, 1],
    workgroupSize,
    size: true,
    shaderKey: `titansGelu_${kind}`,
    getUserCode: () => `
      // tanh through exp(-2|u|), which cannot overflow.
      fn stableTanh(u : f32) -> f32 {
        let e = exp(-2.0 * abs(u));
        return sign(u) * (1.0 - e) / (1.0 + e);
      }

      fn main(index : i32) {
        if (index < uniforms.size) {
          let x = getXByOutputIndex(index);
          let t = stableTanh(${f32(GELU_C)} * (x + ${f32(GELU_CUBIC)} * x * x * x));
          let du = ${f32(GELU_C)} * (1.0 + ${f32(3 * GELU_CUBIC)} * x * x);
          setOutputAtIndex(index, ${GELU_FUNCTIONS[kind]});
        }
      }
    `,
  };
}

/** A number as a WGSL f32 literal. */
function f32(value: number): string {
  return `${Math.fround(value).toExponential()}f`;
}

/** Registers the one-launch kernels for the webgpu backend; call once it is registered. */
export function registerFusedKernels(): void {
  const fusedMatMul = tf.getKernel(tf._FusedMatMul, 'webgpu')!.kernelFunc as unknown as (args: KernelArgs) => tf.TensorInfo;
  const affine = ({ inputs, backend, attrs }: KernelArgs): tf.TensorInfo =>
    fusedMatMul({ inputs: { a: inputs.x!, b: inputs.weight!, bias: inputs.bias! }, backend, attrs: { transposeA: false, transposeB: false, activation: attrs.activation! } });
  /** The norm over the rows of x as a matrix (the same buffers read through other strides), shaped back. */
  const rowNorm = (kind: RowNorm, x: tf.TensorInfo, others: tf.TensorInfo[], backend: WebGPUBackend, eps: number): tf.TensorInfo => {
    const cols = x.shape.at(-1)!;
    const rows = tf.util.sizeFromShape(x.shape) / cols;
    // Vectors (a gain, a bias) stay vectors; the rows, a residual and gamma become matrices.
    const asMatrix = (t: tf.TensorInfo) => (t.shape.length === 1 ? t : { ...t, shape: [tf.util.sizeFromShape(t.shape) / cols, cols] });
    const out = backend.runWebGPUProgram(rowNormProgram(kind, rows, cols, eps), [x, ...others].map(asMatrix), 'float32');
    return { ...out, shape: x.shape };
  };
  const layerNorm = ({ inputs, backend, attrs }: KernelArgs) => rowNorm('layer', inputs.x!, [inputs.gain!, inputs.bias!], backend, attrs.eps as number);
  const rmsNorm = ({ inputs, backend, attrs }: KernelArgs) => rowNorm('rms', inputs.x!, [inputs.gain!], backend, attrs.eps as number);
  const l2Norm = ({ inputs, backend, attrs }: KernelArgs) => rowNorm('l2', inputs.x!, [], backend, attrs.eps as number);
  /** A row program over the rows of u and x as matrices (the same buffers read through other strides), shaped back. */
  const rowGradient = (makeProgram: (rows: number, cols: number) => Program) => ({ inputs, backend }: KernelArgs): tf.TensorInfo => {
    const [u, x] = [inputs.u!, inputs.x!];
    const cols = x.shape.at(-1)!;
    const rows = tf.util.sizeFromShape(x.shape) / cols;
    const out = backend.runWebGPUProgram(makeProgram(rows, cols), [u, x].map((t) => ({ ...t, shape: [rows, cols] })), 'float32');
    return { ...out, shape: x.shape };
  };
  const scaledRowsGradient = (args: KernelArgs) =>
    rowGradient((rows, cols) => scaledRowsGradientProgram(rows, cols, args.attrs.eps as number, args.attrs.reduction === 'mean'))(args);
  const layerNormInputGradient = (args: KernelArgs) => rowGradient((rows, cols) => layerNormInputGradientProgram(rows, cols, args.attrs.eps as number))(args);
  const residualNorm = ({ inputs, backend, attrs }: KernelArgs) => rowNorm('residual', inputs.y!, [inputs.gamma!, inputs.x!], backend, attrs.eps as number);
  /** Keys and values [G, H, Tk, dh] as matrices [G * H * Tk, dh]. */
  const byRow = (t: tf.TensorInfo) => ({ ...t, shape: [tf.util.sizeFromShape(t.shape) / t.shape.at(-1)!, t.shape.at(-1)!] });
  const attention = ({ inputs, backend }: KernelArgs): tf.TensorInfo => {
    const [q, k, v] = [inputs.q!, inputs.k!, inputs.v!];
    const dh = q.shape.at(-1)!;
    const out = backend.runWebGPUProgram(attentionProgram(tf.util.sizeFromShape(q.shape) / dh, dh, null), [q, k, v].map(byRow), 'float32');
    return { ...out, shape: q.shape };
  };
  const projectedAttention = ({ inputs, backend }: KernelArgs): tf.TensorInfo => {
    const [projection, rotation, k, v] = [inputs.projection!, inputs.rotation!, inputs.keys!, inputs.values!];
    const [groups, heads, , dh] = k.shape as [number, number, number, number];
    const program = attentionProgram(groups * heads, dh, heads);
    const out = backend.runWebGPUProgram(program, [{ ...projection, shape: [groups, 3 * heads * dh] }, rotation, byRow(k), byRow(v)], 'float32');
    return { ...out, shape: [groups, heads, 1, dh] };
  };
  const windowAppend = ({ inputs, backend, attrs }: KernelArgs): tf.TensorInfo => {
    const { cached, projection, rotation } = inputs as { cached: tf.TensorInfo; projection: tf.TensorInfo; rotation?: tf.TensorInfo };
    const [groups, heads, , dh] = cached.shape as [number, number, number, number];
    const [part, keep, persist] = [attrs.part, attrs.keep, attrs.persist] as number[];
    const windowRows = persist! + keep! + 1;
    const program = windowAppendProgram(groups * heads * windowRows, dh, heads, part!, persist!, rotation !== undefined);
    const matrices = [{ ...cached, shape: [groups * heads * cached.shape[2]!, dh] }, { ...projection, shape: [groups, 3 * heads * dh] }, ...(rotation ? [rotation] : [])];
    const out = backend.runWebGPUProgram(program, matrices, 'float32');
    return { ...out, shape: [groups, heads, windowRows, dh] };
  };
  const gelu = (kind: keyof typeof GELU_FUNCTIONS) => ({ inputs, backend }: KernelArgs): tf.TensorInfo => {
    const x = inputs.x as tf.TensorInfo;
    return backend.runWebGPUProgram(geluProgram(kind, x.shape), [x], 'float32');
  };
  const kernels = [
    [AFFINE_KERNEL, affine], [LAYER_NORM_KERNEL, layerNorm], [RMS_NORM_KERNEL, rmsNorm], [L2_NORM_KERNEL, l2Norm],
    [SCALED_ROWS_GRADIENT_KERNEL, scaledRowsGradient], [LAYER_NORM_INPUT_GRADIENT_KERNEL, layerNormInputGradient], [RESIDUAL_NORM_KERNEL, residualNorm], [GELU_KERNEL, gelu('gelu')],
    [GELU_DERIVATIVE_KERNEL, gelu('derivative')], [GELU_SECOND_DERIVATIVE_KERNEL, gelu('secondDerivative')], [ATTENTION_KERNEL, attention],
    [PROJECTED_ATTENTION_KERNEL, projectedAttention], [WINDOW_APPEND_KERNEL, windowAppend],
  ] as const;
  for (const [kernelName, kernelFunc] of kernels) {
    if (!tf.getKernel(kernelName, 'webgpu')) tf.registerKernel({ kernelName, backendName: 'webgpu', kernelFunc: kernelFunc as unknown as tf.KernelFunc });
  }
}
