/**
 * Kernels of the webgpu tier beyond tfjs-backend-webgpu 4.22's own.
 *
 * A repair of its AddN. Its shader binds every input as a storage buffer, and a WebGPU device allows
 * 8 per shader stage unless it asks for more, which tfjs does not: with more than 7 inputs the
 * pipeline is invalid, and the sum comes back unwritten, with nothing but a validation message on
 * stderr. Gradient clipping once summed one square per parameter (40 for the shapes preset). Here the
 * inputs are added in groups that fit, then the groups' sums.
 *
 * One-launch kernels for x W + b, LayerNorm, RMSNorm and GELU (model/layers.ts names them and
 * registers their gradients). On a GPU every launch costs about the same whatever its size, and
 * written out in TensorFlow.js ops the four are 2, 10, 6 and 6 launches. The affine map is
 * tfjs-backend-webgpu's own fused product, which adds the bias in the product's shader; the WASM
 * tier registers none of these, and keeps its BLAS product.
 */
import * as tf from '@tensorflow/tfjs-core';
import { AFFINE_KERNEL, GELU_KERNEL, LAYER_NORM_KERNEL, RMS_NORM_KERNEL } from '../../model/layers.ts';

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
 * A norm over the last axis, one workgroup a row: its threads sum strided terms, then halve the
 * partial sums in workgroup memory. LayerNorm centres each row on its mean first (two passes, as
 * the ops written out do); RMSNorm does not centre and has no bias. A row is the workgroup's linear
 * index (the backend folds more than 65,535 workgroups into two dimensions), clamped to the last row
 * so that every thread reaches the barriers; the extra workgroups write nothing.
 */
function rowNormProgram(kind: 'layer' | 'rms', rows: number, cols: number, eps: number): Program {
  const centred = kind === 'layer';
  return {
    variableNames: centred ? ['x', 'gain', 'bias'] : ['x', 'gain'],
    outputShape: [rows, cols],
    dispatchLayout: { x: [0, 1] },
    dispatch: [rows, 1, 1],
    workgroupSize: [ROW_WORKGROUP, 1, 1],
    shaderKey: `titans_${kind}Norm_${eps}`,
    getUserCode: () => `
      var<workgroup> partialSums : array<f32, ${ROW_WORKGROUP}>;
      var<workgroup> rowTotal : f32;

      // Every thread of the workgroup calls it, with its partial sum; all get the row's sum.
      fn rowSum(tid : i32, partial : f32) -> f32 {
        partialSums[tid] = partial;
        workgroupBarrier();
        for (var half = ${ROW_WORKGROUP / 2}; half > 0; half = half >> 1) {
          if (tid < half) {
            partialSums[tid] = partialSums[tid] + partialSums[tid + half];
          }
          workgroupBarrier();
        }
        if (tid == 0) {
          rowTotal = partialSums[0];
        }
        workgroupBarrier();
        return rowTotal;
      }

      fn main(index : i32) {
        let rows = uniforms.outShape[0];
        let cols = uniforms.outShape[1];
        let linearRow = i32(workgroupId.y * numWorkgroups.x + workgroupId.x);
        let row = min(linearRow, rows - 1);
        let tid = i32(localId.x);
        var mean = 0.0;
        ${centred ? `
        var sum = 0.0;
        for (var col = tid; col < cols; col += ${ROW_WORKGROUP}) {
          sum += getX(row, col);
        }
        mean = rowSum(tid, sum) / f32(cols);` : ''}
        var squares = 0.0;
        for (var col = tid; col < cols; col += ${ROW_WORKGROUP}) {
          let centredValue = getX(row, col) - mean;
          squares += centredValue * centredValue;
        }
        let inverseStd = inverseSqrt(rowSum(tid, squares) / f32(cols) + ${f32(eps)});
        if (linearRow < rows) {
          for (var col = tid; col < cols; col += ${ROW_WORKGROUP}) {
            setOutputAtCoords(row, col, (getX(row, col) - mean) * inverseStd * getGain(col)${centred ? ' + getBias(col)' : ''});
          }
        }
      }
    `,
  };
}

/** x * sigmoid(2u), u = sqrt(2 / pi) (x + 0.044715 x^3): model/layers.ts's gelu, one thread an element. */
function geluProgram(shape: number[]): Program {
  const workgroupSize: [number, number, number] = [128, 1, 1];
  return {
    variableNames: ['x'],
    outputShape: shape,
    dispatchLayout: { x: shape.map((_, i) => i) },
    dispatch: [Math.ceil(tf.util.sizeFromShape(shape) / workgroupSize[0]), 1, 1],
    workgroupSize,
    size: true,
    shaderKey: 'titansGelu',
    getUserCode: () => `
      fn main(index : i32) {
        if (index < uniforms.size) {
          let x = getXByOutputIndex(index);
          let twiceInner = x * (x * x * ${f32(2 * GELU_C * 0.044715)} + ${f32(2 * GELU_C)});
          setOutputAtIndex(index, x / (1.0 + exp(-twiceInner)));
        }
      }
    `,
  };
}

const GELU_C = Math.sqrt(2 / Math.PI);

/** A number as a WGSL f32 literal. */
function f32(value: number): string {
  return `${Math.fround(value).toExponential()}f`;
}

/** Registers the one-launch affine, LayerNorm, RMSNorm and GELU kernels for the webgpu backend; call once it is registered. */
export function registerFusedKernels(): void {
  const fusedMatMul = tf.getKernel(tf._FusedMatMul, 'webgpu')!.kernelFunc as unknown as (args: KernelArgs) => tf.TensorInfo;
  const affine = ({ inputs, backend }: KernelArgs): tf.TensorInfo =>
    fusedMatMul({ inputs: { a: inputs.x!, b: inputs.weight!, bias: inputs.bias! }, backend, attrs: { transposeA: false, transposeB: false, activation: 'linear' } });
  /** The norm over the rows of x as a matrix (the same buffer read through other strides), shaped back. */
  const rowNorm = (kind: 'layer' | 'rms') => ({ inputs, backend, attrs }: KernelArgs): tf.TensorInfo => {
    const { x, gain, bias } = inputs as { x: tf.TensorInfo; gain: tf.TensorInfo; bias?: tf.TensorInfo };
    const cols = x.shape.at(-1)!;
    const rows = tf.util.sizeFromShape(x.shape) / cols;
    const program = rowNormProgram(kind, rows, cols, attrs.eps as number);
    const out = backend.runWebGPUProgram(program, [{ ...x, shape: [rows, cols] }, gain, ...(bias ? [bias] : [])], 'float32');
    return { ...out, shape: x.shape };
  };
  const gelu = ({ inputs, backend }: KernelArgs): tf.TensorInfo => {
    const x = inputs.x as tf.TensorInfo;
    return backend.runWebGPUProgram(geluProgram(x.shape), [x], 'float32');
  };
  for (const [kernelName, kernelFunc] of [[AFFINE_KERNEL, affine], [LAYER_NORM_KERNEL, rowNorm('layer')], [RMS_NORM_KERNEL, rowNorm('rms')], [GELU_KERNEL, gelu]] as const) {
    if (!tf.getKernel(kernelName, 'webgpu')) tf.registerKernel({ kernelName, backendName: 'webgpu', kernelFunc: kernelFunc as unknown as tf.KernelFunc });
  }
}
