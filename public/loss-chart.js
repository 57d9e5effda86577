/**
 * The loss against the job's step, drawn on a canvas: axes with a few labelled ticks, a line per
 * series, a legend. A two-stage job is one axis: its vision steps, a dashed line, then its caption
 * steps. Colours come from the page's CSS (--chart-* variables), so dark mode works.
 */

const MARGIN = { top: 28, right: 16, bottom: 34, left: 52 };
const Y_TICKS = 4;
const X_TICKS = 4;

export class LossChart {
  #canvas;
  #visionSteps = 0;
  #steps = 1;
  #vision = [];
  #loss = [];
  #eval = [];
  #frame = 0;

  constructor(canvas) {
    this.#canvas = canvas;
    new ResizeObserver(() => this.#schedule()).observe(canvas);
  }

  /** A new job: `visionSteps` of vision pretraining (0 for none), then `steps` caption steps. */
  reset(steps, visionSteps = 0) {
    this.#visionSteps = visionSteps;
    this.#steps = Math.max(1, visionSteps + steps);
    this.#vision = [];
    this.#loss = [];
    this.#eval = [];
    this.#update();
  }

  addVisionLoss(step, loss) {
    this.#add(this.#vision, step, loss);
  }

  addLoss(step, loss) {
    this.#add(this.#loss, this.#visionSteps + step, loss);
  }

  addEval(step, loss) {
    this.#add(this.#eval, this.#visionSteps + step, loss);
  }

  /** A loss that is no longer finite (null from the server, as the run diverges) has no place on the axis. */
  #add(series, step, value) {
    if (!Number.isFinite(value)) return;
    series.push({ step, value });
    this.#update();
  }

  /** Records what the chart holds on the element at once (for assistive tech and tests); draws on the next frame. */
  #update() {
    const canvas = this.#canvas;
    canvas.dataset.visionPoints = String(this.#vision.length);
    canvas.dataset.lossPoints = String(this.#loss.length);
    canvas.dataset.evalPoints = String(this.#eval.length);
    const latest = (points, name) => (points.length ? `, ${name} ${points.at(-1).value.toFixed(3)} at step ${points.at(-1).step}` : '');
    const stages = this.#visionSteps ? ` (${this.#visionSteps} vision, then captions)` : '';
    const empty = this.#loss.length + this.#vision.length === 0;
    canvas.setAttribute('aria-label', empty ? 'Loss chart: no data yet' : `Loss chart over ${this.#steps} steps${stages}${latest(this.#vision, 'vision loss')}${latest(this.#loss, 'loss')}${latest(this.#eval, 'eval loss')}`);
    this.#schedule();
  }

  // A job's history can replay thousands of events at once: one drawing per frame is enough.
  #schedule() {
    if (!this.#frame) this.#frame = requestAnimationFrame(() => this.#draw());
  }

  #draw() {
    this.#frame = 0;
    const canvas = this.#canvas;
    const { width, height } = canvas.getBoundingClientRect();
    if (width === 0 || height === 0) return;
    // Backing pixels at the screen's density keep lines and text sharp on high-DPI screens.
    const ratio = window.devicePixelRatio || 1;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext('2d');
    ctx.scale(ratio, ratio);

    const style = getComputedStyle(canvas);
    const color = (name) => style.getPropertyValue(`--chart-${name}`).trim();
    ctx.font = `12px ${style.fontFamily}`;
    const plot = { left: MARGIN.left, top: MARGIN.top, width: width - MARGIN.left - MARGIN.right, height: height - MARGIN.top - MARGIN.bottom };
    const yAxis = valueAxis([...this.#vision, ...this.#loss, ...this.#eval]);
    const xAxis = { ticks: ticks(0, this.#steps, Math.max(1, niceStep(this.#steps / X_TICKS))) };
    const x = (step) => plot.left + (step / this.#steps) * plot.width;
    const y = (value) => plot.top + (1 - (value - yAxis.low) / (yAxis.high - yAxis.low)) * plot.height;

    drawAxes(ctx, plot, { x, y, xAxis, yAxis }, color);
    if (this.#visionSteps) drawStageBoundary(ctx, plot, x(this.#visionSteps), color('ink'));
    if (this.#loss.length + this.#vision.length === 0) drawNote(ctx, plot, 'The loss of a training job appears here', color('ink'));
    drawLine(ctx, this.#vision, x, y, color('vision'), false);
    drawLine(ctx, this.#loss, x, y, color('loss'), false);
    drawLine(ctx, this.#eval, x, y, color('eval'), true);
    const legend = [['train loss', color('loss')], ['eval loss', color('eval')]];
    if (this.#visionSteps) legend.unshift(['vision loss', color('vision')]);
    drawLegend(ctx, plot, legend, color('ink'));
  }
}

/** The loss axis: the points' range, widened to round tick values (0..1 before any point). */
function valueAxis(points) {
  let low = Infinity;
  let high = -Infinity;
  for (const { value } of points) {
    low = Math.min(low, value);
    high = Math.max(high, value);
  }
  if (points.length === 0) [low, high] = [0, 1];
  const pad = points.length === 0 ? 0 : Math.max((high - low) * 0.02, 0.01);
  const step = niceStep((high - low + 2 * pad) / Y_TICKS);
  // A cross-entropy is never negative: the axis stops at 0.
  const axis = { low: Math.max(0, Math.floor((low - pad) / step) * step), high: Math.ceil((high + pad) / step) * step };
  return { ...axis, ticks: ticks(axis.low, axis.high, step), decimals: Math.max(0, -Math.floor(Math.log10(step))) };
}

/** The smallest of 1, 2 or 5 times a power of ten that is at least `raw`: ticks a reader can add up. */
function niceStep(raw) {
  const power = 10 ** Math.floor(Math.log10(raw));
  const mantissa = raw / power;
  return (mantissa <= 1 ? 1 : mantissa <= 2 ? 2 : mantissa <= 5 ? 5 : 10) * power;
}

function ticks(low, high, step) {
  const values = [];
  // Counted, not summed, so that floating point error does not add or drop the last tick.
  for (let i = 0; low + i * step <= high + step * 1e-9; i++) values.push(low + i * step);
  return values;
}

function drawAxes(ctx, plot, { x, y, xAxis, yAxis }, color) {
  ctx.lineWidth = 1;
  ctx.fillStyle = color('ink');
  ctx.textAlign = 'right';
  ctx.textBaseline = 'middle';
  for (const value of yAxis.ticks) {
    const at = Math.round(y(value)) + 0.5;
    ctx.strokeStyle = color('grid');
    ctx.beginPath();
    ctx.moveTo(plot.left, at);
    ctx.lineTo(plot.left + plot.width, at);
    ctx.stroke();
    ctx.fillText(value.toFixed(yAxis.decimals), plot.left - 6, at);
  }
  ctx.textAlign = 'center';
  ctx.textBaseline = 'top';
  const bottom = plot.top + plot.height;
  for (const step of xAxis.ticks) ctx.fillText(String(step), x(step), bottom + 6);
  ctx.strokeStyle = color('ink');
  ctx.beginPath();
  ctx.moveTo(plot.left + 0.5, plot.top);
  ctx.lineTo(plot.left + 0.5, bottom + 0.5);
  ctx.lineTo(plot.left + plot.width, bottom + 0.5);
  ctx.stroke();
  ctx.textAlign = 'right';
  ctx.fillText('step', plot.left + plot.width, bottom + 20);
  ctx.textAlign = 'left';
  ctx.textBaseline = 'bottom';
  ctx.fillText('loss', 4, plot.top - 10);
}

function drawStageBoundary(ctx, plot, at, ink) {
  ctx.strokeStyle = ink;
  ctx.lineWidth = 1;
  ctx.setLineDash([4, 4]);
  ctx.beginPath();
  ctx.moveTo(Math.round(at) + 0.5, plot.top);
  ctx.lineTo(Math.round(at) + 0.5, plot.top + plot.height);
  ctx.stroke();
  ctx.setLineDash([]);
}

function drawNote(ctx, plot, text, ink) {
  ctx.fillStyle = ink;
  ctx.textAlign = 'center';
  ctx.textBaseline = 'middle';
  ctx.fillText(text, plot.left + plot.width / 2, plot.top + plot.height / 2);
}

function drawLine(ctx, points, x, y, color, dots) {
  ctx.strokeStyle = color;
  ctx.fillStyle = color;
  ctx.lineWidth = 2;
  ctx.lineJoin = 'round';
  ctx.beginPath();
  points.forEach(({ step, value }, i) => (i === 0 ? ctx.moveTo(x(step), y(value)) : ctx.lineTo(x(step), y(value))));
  ctx.stroke();
  if (!dots) return;
  for (const { step, value } of points) {
    ctx.beginPath();
    ctx.arc(x(step), y(value), 3.5, 0, 2 * Math.PI);
    ctx.fill();
  }
}

function drawLegend(ctx, plot, entries, ink) {
  ctx.textAlign = 'left';
  ctx.textBaseline = 'middle';
  let right = plot.left + plot.width;
  for (const [label, color] of entries.reverse()) {
    const left = right - ctx.measureText(label).width - 22;
    ctx.fillStyle = color;
    ctx.fillRect(left, plot.top - 15, 14, 3);
    ctx.fillStyle = ink;
    ctx.fillText(label, left + 18, plot.top - 14);
    right = left - 14;
  }
}
