/**
 * The WGSL programs of the webgpu tier's own kernels (webgpu-kernels.ts registers the kernels that
 * run them; model/ names the kernels and writes each one out in TensorFlow.js ops). Two frames:
 * row programs, one workgroup a row of the output, which reduce over the row in workgroup memory;
 * and element programs, one thread an element.
 */
import * as tf from '@tensorflow/tfjs-core';
import { GELU_C, GELU_CUBIC, GELU_DDDU } from '../../model/layers.ts';
import { CLIP_EPS } from '../../model/memory-update.ts';

/** What tfjs-backend-webgpu takes as a program: its WGSL and how to dispatch it (its WebGPUProgram). */
export interface Program {
  variableNames: string[];
  outputShape: number[];
  dispatchLayout: { x: number[] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number];
  shaderKey: string;
  size?: boolean;
  getUserCode(): string;
}

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
 * A program that gives each row of a [rows, cols] output one workgroup. Its body sees `row` (the
 * workgroup's linear index, which the backend folds into two dimensions past 65,535 workgroups,
 * clamped to the last row so that every thread reaches the barriers), `tid`, `rows` and `cols`;
 * it reduces with rowSum and rowMax, and writes where `linearRow < rows` (the extra workgroups
 * write nothing). `declarations` come before its entry point.
 */
function rowProgram(shaderKey: string, variableNames: string[], [rows, cols]: [number, number], body: string, declarations = ''): Program {
  return {
    variableNames,
    outputShape: [rows, cols],
    dispatchLayout: { x: [0, 1] },
    dispatch: [rows, 1, 1],
    workgroupSize: [ROW_WORKGROUP, 1, 1],
    shaderKey,
    getUserCode: () => `
      ${WORKGROUP_REDUCTIONS}
      ${declarations}

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

/** A thread's share of a row's columns, every ROW_WORKGROUP-th: the loop of a row program's body. */
const EACH_COLUMN = `for (var col = tid; col < cols; col += ${ROW_WORKGROUP})`;

/** A program that gives each element of its output one thread: its body sees `index`, and writes it. */
function elementProgram(shaderKey: string, variableNames: string[], shape: number[], body: string, declarations = ''): Program {
  const workgroupSize: [number, number, number] = [128, 1, 1];
  return {
    variableNames,
    outputShape: shape,
    dispatchLayout: { x: shape.map((_, i) => i) },
    dispatch: [Math.ceil(tf.util.sizeFromShape(shape) / workgroupSize[0]), 1, 1],
    workgroupSize,
    size: true,
    shaderKey,
    getUserCode: () => `
      ${declarations}

      fn main(index : i32) {
        if (index < uniforms.size) {
          ${body}
        }
      }
    `,
  };
}

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

export type RowNorm = keyof typeof ROW_NORMS;

/**
 * A norm over the last axis: a thread's strided terms, then the partial sums halved in workgroup
 * memory. LayerNorm and the memory's residual norm centre each row on its mean first (two passes,
 * as the ops written out do); RMSNorm and L2 normalisation do not centre.
 */
export function rowNormProgram(kind: RowNorm, size: [number, number], eps: number): Program {
  const { inputs, centred, averaged, output } = ROW_NORMS[kind];
  return rowProgram(`titans_${kind}Norm_${eps}`, ['x', ...inputs], size, `
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
export function scaledRowsGradientProgram(size: [number, number], eps: number, averaged: boolean): Program {
  const reduced = (sum: string) => (averaged ? `${sum} / f32(cols)` : sum);
  return rowProgram(`titansScaledRowsGradient_${eps}_${averaged}`, ['u', 'x'], size, `
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
export function layerNormInputGradientProgram(size: [number, number], eps: number): Program {
  return rowProgram(`titansLayerNormInputGradient_${eps}`, ['u', 'x'], size, `
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
 * Where an attention program reads its rows' queries, keys and values: WGSL expressions in `row`
 * (the program's output row), `col` and `key`, with the inputs they read and the declarations they need.
 */
export interface AttentionLayout {
  name: string;
  variableNames: string[];
  /** The number of keys each row attends to. */
  keys: string;
  query: string;
  key: string;
  value: string;
  declarations: string;
}

/** q [rows, dh] against keys and values [rows * Tk, dh] (model/layers.ts attend, a decoding step's). */
export const ROWS_LAYOUT: AttentionLayout = {
  name: 'rows', variableNames: ['q', 'k', 'v'], keys: 'uniforms.kShape[0] / uniforms.outShape[0]',
  query: 'getQ(row, col)', key: 'getK(row * keys + key, col)', value: 'getV(row * keys + key, col)', declarations: '',
};

/**
 * The query of row (group, head) read from a projection [groups, 3 H dh] and rotated (q R, R [dh, dh]),
 * keys and values as in ROWS_LAYOUT: model/attention.ts attendFromProjection.
 */
export function projectedLayout(heads: number, dh: number): AttentionLayout {
  return {
    ...ROWS_LAYOUT, name: `projected${heads}`, variableNames: ['projection', 'rotation', 'k', 'v'], query: `rotatedQuery(row / ${heads}, row % ${heads}, col)`,
    declarations: `
      fn rotatedQuery(group : i32, head : i32, col : i32) -> f32 {
        var value = 0.0;
        for (var e = 0; e < ${dh}; e++) {
          value += getProjection(group, head * ${dh} + e) * getRotation(e, col);
        }
        return value;
      }`,
  };
}

/**
 * Queries, keys and values all read from a packed projection qkv [B T, 3 H dh] (model/layers.ts
 * selfAttention, a ViT's): row (b T + t) H + h of the output, which is then [B, T, H dh], attends
 * from position t of image b, head h, to the `length` positions of its image.
 */
export function packedLayout(heads: number, dh: number, length: number): AttentionLayout {
  const width = heads * dh;
  const column = `(row % ${heads}) * ${dh} + col`;
  const position = (part: number) => `getQkv((row / ${heads * length}) * ${length} + key, ${part * width} + ${column})`;
  return {
    name: `packed${heads}x${length}`, variableNames: ['qkv'], keys: `${length}`,
    query: `getQkv(row / ${heads}, ${column})`, key: position(1), value: position(2), declarations: '',
  };
}

/**
 * The attention of each query row over its keys, a row of the output [rows, dh] a workgroup, read
 * as `layout` says. The workgroup keeps the query in its memory. The softmax takes the row's
 * largest score first, as tfjs's does; then keys are taken in tiles of a workgroup's size: each
 * thread weighs one key of the tile, and each adds the weighted values into its own columns. Where
 * the number of keys is a uniform, a decoding step's growing window compiles one shader.
 */
export function attentionProgram(rows: number, dh: number, layout: AttentionLayout): Program {
  const declarations = `
      var<workgroup> tileWeights : array<f32, ${ROW_WORKGROUP}>;
      var<workgroup> query : array<f32, ${dh}>;
      const columnsPerThread = ${Math.ceil(dh / ROW_WORKGROUP)};
      ${layout.declarations}

      fn score(row : i32, key : i32) -> f32 {
        let keys = ${layout.keys};
        var dot = 0.0;
        for (var col = 0; col < ${dh}; col++) {
          dot += query[col] * ${layout.key};
        }
        return dot * ${f32(1 / Math.sqrt(dh))};
      }

      fn value(row : i32, key : i32, col : i32) -> f32 {
        let keys = ${layout.keys};
        return ${layout.value};
      }`;
  return rowProgram(`titansAttention_${dh}_${layout.name}`, layout.variableNames, [rows, dh], `
        let keys = ${layout.keys};
        ${EACH_COLUMN} {
          query[col] = ${layout.query};
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
            if (col < cols) {
              for (var j = 0; j < min(${ROW_WORKGROUP}, keys - tile); j++) {
                weighted[c] += tileWeights[j] * value(row, tile + j, col);
              }
            }
          }
          workgroupBarrier();
        }
        total = rowSum(tid, total);
        if (linearRow < rows) {
          for (var c = 0; c < columnsPerThread; c++) {
            let col = tid + c * ${ROW_WORKGROUP};
            if (col < cols) {
              setOutputAtCoords(row, col, weighted[c] / total);
            }
          }
        }`, declarations);
}

/**
 * model/neural-memory.ts retrieve for a decoding step (MEMORY_READ_KERNEL), a row of the output
 * [B H n, dh] a workgroup: its head's query, read from the projection [B n, 3 H dh] and L2-normalised
 * when asked, through the MLP whose layers take `widths` (dh, the hidden widths, dh; GELU between
 * its products; weight l as a matrix [B H widths[l], widths[l + 1]]), then with `residualNormEps` the
 * residual norm LayerNorm(y) (1 + gamma) + q. A layer's input waits in workgroup memory, and each
 * thread computes every ROW_WORKGROUP-th of its outputs.
 */
export function memoryReadProgram(rows: number, heads: number, widths: number[], normalizeQueries: boolean, residualNormEps: number): Program {
  const dh = widths[0]!;
  const depth = widths.length - 1;
  const widest = Math.max(...widths);
  const weightNames = widths.slice(1).map((_, l) => `weight${l}`);
  // Layer l reads half l % 2 of layerValues and writes the other.
  const layers = weightNames.map((name, l) => {
    const [from, to] = [(l % 2) * widest, ((l + 1) % 2) * widest];
    const getter = `get${name[0]!.toUpperCase()}${name.slice(1)}`;
    return `
        for (var j = tid; j < ${widths[l + 1]}; j += ${ROW_WORKGROUP}) {
          var product = 0.0;
          for (var i = 0; i < ${widths[l]}; i++) {
            product += layerValues[${from} + i] * ${getter}(groupHead * ${widths[l]} + i, j);
          }
          layerValues[${to} + j] = ${l < depth - 1 ? 'gelu(product)' : 'product'};
        }
        workgroupBarrier();`;
  });
  const output = `layerValues[${(depth % 2) * widest} + col]`;
  const variableNames = ['projected', ...weightNames, ...(residualNormEps > 0 ? ['gamma'] : [])];
  return rowProgram(`titansMemoryRead_${heads}_${widths.join('x')}_${normalizeQueries}_${residualNormEps}`, variableNames, [rows, dh], `
        let groupHeads = uniforms.weight0Shape[0] / ${dh};
        let rowsPerHead = rows / groupHeads;
        let groupHead = row / rowsPerHead;
        let projectedRow = (groupHead / ${heads}) * rowsPerHead + row % rowsPerHead;
        var squares = 0.0;
        ${EACH_COLUMN} {
          let value = getProjected(projectedRow, (groupHead % ${heads}) * ${dh} + col);
          query[col] = value;
          squares += value * value;
        }
        let scale = ${normalizeQueries ? `inverseSqrt(rowSum(tid, squares) + ${f32(1e-6)})` : '1.0'};
        ${EACH_COLUMN} {
          query[col] = query[col] * scale;
          layerValues[col] = query[col];
        }
        workgroupBarrier();
        ${layers.join('')}
        ${residualNormEps > 0 ? `
        var sum = 0.0;
        ${EACH_COLUMN} {
          sum += ${output};
        }
        let mean = rowSum(tid, sum) / f32(cols);
        var centredSquares = 0.0;
        ${EACH_COLUMN} {
          let centred = ${output} - mean;
          centredSquares += centred * centred;
        }
        let inverseStd = inverseSqrt(rowSum(tid, centredSquares) / f32(cols) + ${f32(residualNormEps)});` : ''}
        if (linearRow < rows) {
          ${EACH_COLUMN} {
            setOutputAtCoords(row, col, ${residualNormEps > 0 ? `(${output} - mean) * inverseStd * (1.0 + getGamma(groupHead, col)) + query[col]` : output});
          }
        }`, `
      var<workgroup> query : array<f32, ${dh}>;
      var<workgroup> layerValues : array<f32, ${2 * widest}>;

      fn gelu(x : f32) -> f32 {
        return ${GELU_FUNCTIONS.gelu};
      }`);
}

/**
 * model/layers.ts normalizedProduct, and with `affineGelu` normalizedAffineGelu, for a few rows:
 * RMSNorm(x) W, or GELU(RMSNorm(x) W + b), x [rows, in], each workgroup 64 columns of one row's
 * output. Its threads take the row's RMS together, then the product a tile of inputs at a time:
 * each tile, normalised and scaled by the gain, waits in workgroup memory while every thread adds
 * its column's share.
 */
export function normalizedProductProgram([rows, , outDim]: [number, number, number], eps: number, affineGelu: boolean): Program {
  const tiles = Math.ceil(outDim / ROW_WORKGROUP);
  return {
    variableNames: ['x', 'gain', 'weight', ...(affineGelu ? ['bias'] : [])],
    outputShape: [rows, outDim],
    dispatchLayout: { x: [0, 1] },
    dispatch: [rows * tiles, 1, 1],
    workgroupSize: [ROW_WORKGROUP, 1, 1],
    shaderKey: `titansNormalizedProduct_${eps}_${tiles}_${affineGelu}`,
    getUserCode: () => `
      ${WORKGROUP_REDUCTIONS}
      var<workgroup> scaledInputs : array<f32, ${ROW_WORKGROUP}>;

      fn gelu(x : f32) -> f32 {
        return ${GELU_FUNCTIONS.gelu};
      }

      fn main(index : i32) {
        let rows = uniforms.outShape[0];
        let inputs = uniforms.xShape[1];
        let outputs = uniforms.outShape[1];
        // Folded into two dimensions past 65,535 workgroups, as in rowProgram.
        let linearTile = i32(workgroupId.y * numWorkgroups.x + workgroupId.x);
        let row = min(linearTile / ${tiles}, rows - 1);
        let tid = i32(localId.x);
        let col = (linearTile % ${tiles}) * ${ROW_WORKGROUP} + tid;
        var squares = 0.0;
        for (var i = tid; i < inputs; i += ${ROW_WORKGROUP}) {
          let value = getX(row, i);
          squares += value * value;
        }
        let inverseRms = inverseSqrt(rowSum(tid, squares) / f32(inputs) + ${f32(eps)});
        var product = 0.0;
        for (var start = 0; start < inputs; start += ${ROW_WORKGROUP}) {
          var scaled = 0.0;
          if (start + tid < inputs) {
            scaled = getX(row, start + tid) * inverseRms * getGain(start + tid);
          }
          scaledInputs[tid] = scaled;
          workgroupBarrier();
          if (col < outputs) {
            for (var k = 0; k < min(${ROW_WORKGROUP}, inputs - start); k++) {
              product += scaledInputs[k] * getWeight(start + k, col);
            }
          }
          workgroupBarrier();
        }
        if (linearTile / ${tiles} < rows && col < outputs) {
          setOutputAtCoords(row, col, ${affineGelu ? 'gelu(product + getBias(col))' : 'product'});
        }
      }
    `,
  };
}

/**
 * model/attention.ts appendToWindow, an element of the window [G * H * W, dh] it writes: row j of a
 * head's W rows is cached row j for the P persistent ones, a row of the last `keep` after them, and
 * for the last the step's row, read from its part of the projection [G, 3 H dh] and rotated (x R,
 * R [dh, dh]) for keys. The window's lengths are uniforms (the cache's rows and the output's), so
 * that one shader serves every step.
 */
export function windowAppendProgram(outputRows: number, dh: number, heads: number, part: number, persist: number, rotated: boolean): Program {
  const variableNames = ['cached', 'projection', ...(rotated ? ['rotation'] : [])];
  return elementProgram(`titansWindowAppend_${dh}_${heads}_${part}_${persist}_${rotated}`, variableNames, [outputRows, dh], `
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
          setOutputAtIndex(index, value);`, `
      fn projected(group : i32, head : i32, col : i32) -> f32 {
        return getProjection(group, (${part * heads} + head) * ${dh} + col);
      }`);
}

/**
 * model/layers.ts causalConvolution, an element of its output [B, n, C]: the sum over the K taps
 * w [K, C] of x [B, K - 1 + n, C] at the row each reaches back to.
 */
export function causalConvolutionProgram(shape: number[]): Program {
  return elementProgram('titansCausalConv', ['x', 'weight'], shape, `
          let channels = uniforms.outShape[2];
          let rows = uniforms.outShape[1];
          let taps = uniforms.weightShape[0];
          let channel = index % channels;
          let row = (index / channels) % rows;
          let batch = index / (channels * rows);
          var value = 0.0;
          for (var j = 0; j < taps; j++) {
            value += getWeight(j, channel) * getX(batch, row + taps - 1 - j, channel);
          }
          setOutputAtIndex(index, value);`);
}

/**
 * model/neural-memory.ts PROJECTED_HEADS_KERNEL: part `part` of projected rows [B, n, 3 H dh] as
 * heads, one workgroup a row of the output [B H n, dh], L2-normalised (eps 1e-6) where asked.
 */
export function projectedHeadsProgram(rows: number, dh: number, heads: number, part: number, normalize: boolean): Program {
  return rowProgram(`titansProjectedHeads_${heads}_${part}_${normalize}`, ['projected'], [rows, dh], `
        let n = uniforms.projectedShape[1];
        let batch = row / (${heads} * n);
        let offset = (${part * heads} + (row / n) % ${heads}) * cols;
        let source = row % n;
        var squares = 0.0;
        ${normalize ? `${EACH_COLUMN} {
          let value = getProjected(batch, source, offset + col);
          squares += value * value;
        }` : ''}
        let scale = ${normalize ? `inverseSqrt(rowSum(tid, squares) + ${f32(1e-6)})` : '1.0'};
        if (linearRow < rows) {
          ${EACH_COLUMN} {
            setOutputAtCoords(row, col, getProjected(batch, source, offset + col) * scale);
          }
        }`);
}

/**
 * model/memory-networks.ts RESIDUAL_NORM_SURPRISE_KERNEL, from y, x, values [B H n, dim], gamma
 * [B H, dim] and the row weights r [B H n]: with n = (y - mean) s the normalised rows (s the inverse
 * std), e = (n (1 + gamma) + x - values) r 2 / dim and u = e (1 + gamma), LayerNorm's backward pass
 * s (u - mean(u) - n mean(u n)) for `part` 'input', one workgroup a row of y; for 'gamma' the sum of
 * e n over each head's n rows, one workgroup a head, each thread summing its own columns.
 */
export function residualNormSurpriseProgram(part: 'input' | 'gamma', size: [number, number], eps: number): Program {
  const columnsPerThread = Math.ceil(size[1] / ROW_WORKGROUP);
  const declarations = `
      struct RowStatistics {
        mean : f32,
        inverseStd : f32,
      }

      // LayerNorm's mean and inverse std of row yRow of y, which every thread of the workgroup calls.
      fn rowStatistics(tid : i32, yRow : i32, cols : i32) -> RowStatistics {
        var sum = 0.0;
        ${EACH_COLUMN} {
          sum += getY(yRow, col);
        }
        let mean = rowSum(tid, sum) / f32(cols);
        var squares = 0.0;
        ${EACH_COLUMN} {
          let centred = getY(yRow, col) - mean;
          squares += centred * centred;
        }
        return RowStatistics(mean, inverseSqrt(rowSum(tid, squares) / f32(cols) + ${f32(eps)}));
      }

      // e of row yRow at col, and its normalised value n.
      fn weightedError(yRow : i32, head : i32, col : i32, cols : i32, statistics : RowStatistics) -> vec2<f32> {
        let n = (getY(yRow, col) - statistics.mean) * statistics.inverseStd;
        let e = (n * (1.0 + getGamma(head, col)) + getX(yRow, col) - getValues(yRow, col)) * getRowWeights(yRow) * 2.0 / f32(cols);
        return vec2<f32>(e, n);
      }`;
  const body = part === 'input' ? `
        let head = row / (uniforms.yShape[0] / uniforms.gammaShape[0]);
        let statistics = rowStatistics(tid, row, cols);
        var uSum = 0.0;
        var unSum = 0.0;
        ${EACH_COLUMN} {
          let en = weightedError(row, head, col, cols, statistics);
          let u = en.x * (1.0 + getGamma(head, col));
          uSum += u;
          unSum += u * en.y;
        }
        let uMean = rowSum(tid, uSum) / f32(cols);
        let unMean = rowSum(tid, unSum) / f32(cols);
        if (linearRow < rows) {
          ${EACH_COLUMN} {
            let en = weightedError(row, head, col, cols, statistics);
            let u = en.x * (1.0 + getGamma(head, col));
            setOutputAtCoords(row, col, statistics.inverseStd * (u - uMean - en.y * unMean));
          }
        }` : `
        let rowsPerHead = uniforms.yShape[0] / uniforms.gammaShape[0];
        var sums : array<f32, ${columnsPerThread}>;
        for (var i = 0; i < rowsPerHead; i++) {
          let yRow = row * rowsPerHead + i;
          let statistics = rowStatistics(tid, yRow, cols);
          for (var k = 0; k < ${columnsPerThread}; k++) {
            let col = tid + k * ${ROW_WORKGROUP};
            if (col < cols) {
              let en = weightedError(yRow, row, col, cols, statistics);
              sums[k] += en.x * en.y;
            }
          }
        }
        if (linearRow < rows) {
          for (var k = 0; k < ${columnsPerThread}; k++) {
            let col = tid + k * ${ROW_WORKGROUP};
            if (col < cols) {
              setOutputAtCoords(row, col, sums[k]);
            }
          }
        }`;
  return rowProgram(`titansResidualNormSurprise_${part}_${eps}_${columnsPerThread}`, ['y', 'gamma', 'x', 'values', 'rowWeights'], size, body, declarations);
}

/**
 * model/memory-update.ts clipFactor, for each of the memory's B H heads (a row): min(1, maxNorm /
 * |g|), the squares summed over the head's row of each of `count` surprises, [B H, n_i].
 */
export function clipFactorProgram(heads: number, count: number, maxNorm: number): Program {
  const names = Array.from({ length: count }, (_, i) => `surprise${i}`);
  return rowProgram(`titansClipFactor_${count}_${maxNorm}`, names, [heads, 1], `
        var squares = 0.0;
        ${names.map((name, i) => `for (var col = tid; col < uniforms.${name}Shape[1]; col += ${ROW_WORKGROUP}) {
          let g = getSurprise${i}(row, col);
          squares += g * g;
        }`).join('\n        ')}
        let factor = min(inverseSqrt(rowSum(tid, squares) + ${f32(CLIP_EPS)}) * ${f32(maxNorm)}, 1.0);
        if (linearRow < rows && tid == 0) {
          setOutputAtCoords(row, 0, factor);
        }`);
}

/**
 * model/memory-update.ts momentumStep, an element of S' [B H, n]: eta S - c g, or without momentum
 * -c g, with the per-head factors c and eta [B H].
 */
export function momentumStepProgram(shape: [number, number], clipped: boolean, withMomentum: boolean): Program {
  const variableNames = ['surprise', ...(clipped ? ['clip'] : []), ...(withMomentum ? ['eta', 'momentum'] : [])];
  return elementProgram(`titansMomentumStep_${clipped}_${withMomentum}`, variableNames, shape, `
          let head = index / uniforms.outShape[1];
          let g = getSurpriseByOutputIndex(index)${clipped ? ' * getClip(head)' : ''};
          setOutputAtIndex(index, ${withMomentum ? 'getEta(head) * getMomentumByOutputIndex(index) - g' : '-g'});`);
}

/** model/memory-update.ts forgetStep, an element of W' [B H, n]: (1 - alpha) W + U, alpha [B H]. */
export function forgetStepProgram(shape: [number, number]): Program {
  return elementProgram('titansForgetStep', ['weights', 'forgetting', 'update'], shape, `
          let head = index / uniforms.outShape[1];
          setOutputAtIndex(index, (1.0 - getForgetting(head)) * getWeightsByOutputIndex(index) + getUpdateByOutputIndex(index));`);
}

/**
 * The tanh GELU and its first two derivatives (model/layers.ts), each a WGSL expression of x, and
 * of u = GELU_C (x + GELU_CUBIC x^3) through t = tanh(u) and du = u'. GELU itself is x * sigmoid(2u).
 */
const GELU_FUNCTIONS = {
  gelu: `x / (1.0 + exp(-x * (x * x * ${f32(2 * GELU_C * GELU_CUBIC)} + ${f32(2 * GELU_C)})))`,
  derivative: '0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du',
  secondDerivative: `(1.0 - t * t) * (du + 0.5 * x * (${f32(GELU_DDDU)} * x - 2.0 * t * du * du))`,
};

export type GeluFunction = keyof typeof GELU_FUNCTIONS;

export function geluProgram(kind: GeluFunction, shape: number[]): Program {
  return elementProgram(`titansGelu_${kind}`, ['x'], shape, `
          let x = getXByOutputIndex(index);
          let t = stableTanh(${f32(GELU_C)} * (x + ${f32(GELU_CUBIC)} * x * x * x));
          let du = ${f32(GELU_C)} * (1.0 + ${f32(3 * GELU_CUBIC)} * x * x);
          setOutputAtIndex(index, ${GELU_FUNCTIONS[kind]});`, `
      // tanh through exp(-2|u|), which cannot overflow.
      fn stableTanh(u : f32) -> f32 {
        let e = exp(-2.0 * abs(u));
        return sign(u) * (1.0 - e) / (1.0 + e);
      }`);
}

/** A number as a WGSL f32 literal. */
function f32(value: number): string {
  return `${Math.fround(value).toExponential()}f`;
}
