/**
 * Synthetic shape scenes (docs/shapes.md): a seeded generator of scene specs that follow every rule
 * there, the exact caption of each, and a renderer (SVG drawn by sharp). The generator keeps a small
 * margin inside each numeric rule (sizes, colours, the two-object dominance) so that an image stays
 * unambiguous after anti-aliasing and resizing.
 */
import sharp from 'sharp';
import { Random } from '../../model/random.ts';
import { deriveSeed } from './seed.ts';

export type RGB = [number, number, number];
export type ShapeKind = 'circle' | 'square' | 'triangle' | 'star';
export type SizeClass = 'small' | 'large';

export const SHAPES: readonly ShapeKind[] = ['circle', 'square', 'triangle', 'star'];
export const COLORS: Readonly<Record<string, RGB>> = {
  red: [220, 40, 40],
  green: [40, 170, 60],
  blue: [40, 80, 220],
  yellow: [240, 210, 40],
  purple: [140, 60, 180],
  orange: [245, 140, 30],
};
/** Side of the bounding box / min(width, height), with a margin inside the rule's ranges. */
const SIZE_RANGES: Record<SizeClass, [number, number]> = { small: [0.17, 0.25], large: [0.37, 0.49] };
const COLOR_DEVIATION = 16; // the rule allows 20
const MIN_DOMINANT_OFFSET = 0.27; // the rule asks 0.25
const MIN_DOMINANCE = 2.4; // the rule asks 2
const MIN_GAP = 2; // pixels between the bounding boxes of two objects
const SIN72 = Math.sin((72 * Math.PI) / 180);
const COS36 = Math.cos((36 * Math.PI) / 180);

export interface SceneObject {
  shape: ShapeKind;
  color: string;
  size: SizeClass;
  /** The colour drawn: the anchor moved by at most COLOR_DEVIATION per channel. */
  rgb: RGB;
  /** Centre of the bounding box, canvas pixels. */
  cx: number;
  cy: number;
  /** Longer side of the bounding box, canvas pixels. */
  extent: number;
  /** Star only: inner radius / outer radius. */
  innerRatio: number;
}

export interface Scene {
  width: number;
  height: number;
  background: RGB;
  /** Standard deviation of the background's pixel noise, 0 for none. */
  noise: number;
  noiseSeed: number;
  /** Reading order of the caption: left before right, upper before lower. */
  objects: SceneObject[];
  relation: 'alone' | 'left of' | 'above';
}

export type Split = 'train' | 'validation';
/** A split's number in a seed path: every generator keeps the splits' draws apart with these. */
export const SPLIT_IDS: Record<Split, number> = { train: 0, validation: 1 };

/** Scene number `index` of a split: the splits draw from different seed paths (whose hashes may meet: deriveSeed). */
export function sceneAt(seed: number, split: Split, index: number): Scene {
  return generateScene(new Random(deriveSeed(seed, SPLIT_IDS[split], index)));
}

export function generateScene(random: Random): Scene {
  const width = between(random, 48, 800);
  const height = between(random, Math.max(48, Math.ceil((width * 3) / 4)), Math.min(800, Math.floor((width * 4) / 3)));
  const background: RGB = [between(random, 190, 255), between(random, 190, 255), between(random, 190, 255)];
  const noise = random.next() < 0.5 ? 0 : 8 * random.next();
  const noiseSeed = random.int(2 ** 31);
  const base = { width, height, background, noise, noiseSeed };
  if (random.next() < 0.5) return { ...base, objects: [placeAlone(random, drawObject(random, width, height), width, height)], relation: 'alone' };
  for (;;) {
    const pair = placePair(random, drawObject(random, width, height), drawObject(random, width, height), width, height);
    if (pair) return { ...base, ...pair };
  }
}

/** `a small red circle.`, `a ... to the left of a ....`, `a ... above a ....` */
export function sceneCaption(scene: Scene): string {
  const [first, second] = scene.objects.map((o) => `a ${o.size} ${o.color} ${o.shape}`);
  return scene.relation === 'alone' ? `${first}.` : `${first} ${scene.relation === 'left of' ? 'to the left of' : 'above'} ${second}.`;
}

/** A rectangle in coordinates relative to the canvas: 0 is the top (left) edge, 1 the bottom (right). */
export interface Region {
  top: number;
  left: number;
  bottom: number;
  right: number;
}

/**
 * Which object each region of the image shows, by index, or -1 for background: the object whose
 * bounding box covers most of the region, if it covers at least a fifth of the region or, for an
 * object smaller than the region, a fifth of the object (a small one may straddle four regions). An
 * object that so wins no region (a small one beside a large one) takes the region that holds most of
 * it, so that every object is shown somewhere.
 */
export function objectsInRegions(scene: Scene, regions: Region[]): number[] {
  const boxes = scene.objects.map((object) => {
    const [bw, bh] = boxSize(object);
    return { top: (object.cy - bh / 2) / scene.height, bottom: (object.cy + bh / 2) / scene.height, left: (object.cx - bw / 2) / scene.width, right: (object.cx + bw / 2) / scene.width };
  });
  const area = (r: Region) => (r.bottom - r.top) * (r.right - r.left);
  const overlaps = regions.map((region) => boxes.map((box) =>
    Math.max(0, Math.min(box.bottom, region.bottom) - Math.max(box.top, region.top)) * Math.max(0, Math.min(box.right, region.right) - Math.max(box.left, region.left))));
  const shown = overlaps.map((row, r) => {
    let best = -1;
    row.forEach((overlap, o) => {
      if (overlap >= 0.2 * Math.min(area(regions[r]!), area(boxes[o]!)) && overlap > (row[best] ?? 0)) best = o;
    });
    return best;
  });
  boxes.forEach((_, o) => {
    if (shown.includes(o)) return;
    const most = overlaps.reduce((best, row, r) => (row[o]! > overlaps[best]![o]! ? r : best), 0);
    shown[most] = o;
  });
  return shown;
}

/** The scene as SVG, drawn at width x height pixels (default: the canvas size; other sizes stretch it). */
export function sceneSvg(scene: Scene, options: { width?: number; height?: number; background?: boolean } = {}): string {
  const { width = scene.width, height = scene.height, background = true } = options;
  const fill = background ? `<rect width="${scene.width}" height="${scene.height}" fill="${hex(scene.background)}"/>` : '';
  const shapes = scene.objects.map(objectSvg).join('');
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${scene.width} ${scene.height}" preserveAspectRatio="none">${fill}${shapes}</svg>`;
}

export interface RenderedScene {
  /** RGB, 3 bytes per pixel, row-major. */
  data: Uint8Array;
  width: number;
  height: number;
}

/**
 * Draws the scene at width x height (default: the canvas size). Rendering straight at a model's
 * imageSize equals rendering the canvas and resizing it with the `fill` mode, without the big image.
 * The background noise is added here, under the objects, so that their colours stay within the rule.
 */
export async function renderScene(scene: Scene, size: { width?: number; height?: number } = {}): Promise<RenderedScene> {
  const { width = scene.width, height = scene.height } = size;
  const rgba = await sharp(Buffer.from(sceneSvg(scene, { width, height, background: false })))
    .ensureAlpha()
    .raw()
    .toBuffer();
  const random = new Random(scene.noiseSeed);
  const data = new Uint8Array(width * height * 3);
  for (let i = 0; i < width * height; i++) {
    const alpha = rgba[4 * i + 3]! / 255;
    for (let c = 0; c < 3; c++) {
      const ground = scene.noise > 0 ? scene.background[c]! + scene.noise * random.normal() : scene.background[c]!;
      data[3 * i + c] = clampByte(alpha * rgba[4 * i + c]! + (1 - alpha) * ground);
    }
  }
  return { data, width, height };
}

/** The rendered scene encoded as PNG, e.g. for image files on disk. */
export async function renderScenePng(scene: Scene, size: { width?: number; height?: number } = {}): Promise<Buffer> {
  const { data, width, height } = await renderScene(scene, size);
  return sharp(data, { raw: { width, height, channels: 3 } }).png().toBuffer();
}

function drawObject(random: Random, width: number, height: number): SceneObject {
  const shape = SHAPES[random.int(SHAPES.length)]!;
  const names = Object.keys(COLORS);
  const color = names[random.int(names.length)]!;
  const size: SizeClass = random.next() < 0.5 ? 'small' : 'large';
  const [low, high] = SIZE_RANGES[size];
  const rgb = COLORS[color]!.map((v) => clampByte(v + between(random, -COLOR_DEVIATION, COLOR_DEVIATION))) as RGB;
  const extent = (low + (high - low) * random.next()) * Math.min(width, height);
  return { shape, color, size, rgb, cx: 0, cy: 0, extent, innerRatio: 0.4 + 0.1 * random.next() };
}

function placeAlone(random: Random, object: SceneObject, width: number, height: number): SceneObject {
  const [bw, bh] = boxSize(object);
  return { ...object, cx: bw / 2 + random.next() * (width - bw), cy: bh / 2 + random.next() * (height - bh) };
}

/**
 * Rejection sampling of two positions that satisfy the dominance rule and keep the boxes apart;
 * null when this pair of objects found no such placement (the caller draws new objects).
 */
function placePair(random: Random, a: SceneObject, b: SceneObject, width: number, height: number): Pick<Scene, 'objects' | 'relation'> | null {
  for (let attempt = 0; attempt < 100; attempt++) {
    const p = placeAlone(random, a, width, height);
    const q = placeAlone(random, b, width, height);
    const dx = (q.cx - p.cx) / width;
    const dy = (q.cy - p.cy) / height;
    const horizontal = Math.abs(dx) >= MIN_DOMINANT_OFFSET && Math.abs(dx) >= MIN_DOMINANCE * Math.abs(dy);
    const vertical = Math.abs(dy) >= MIN_DOMINANT_OFFSET && Math.abs(dy) >= MIN_DOMINANCE * Math.abs(dx);
    if ((!horizontal && !vertical) || overlaps(p, q)) continue;
    if (horizontal) return { objects: dx > 0 ? [p, q] : [q, p], relation: 'left of' };
    return { objects: dy > 0 ? [p, q] : [q, p], relation: 'above' };
  }
  return null;
}

function overlaps(p: SceneObject, q: SceneObject): boolean {
  const [pw, ph] = boxSize(p);
  const [qw, qh] = boxSize(q);
  return Math.abs(p.cx - q.cx) < (pw + qw) / 2 + MIN_GAP && Math.abs(p.cy - q.cy) < (ph + qh) / 2 + MIN_GAP;
}

/** Bounding box [width, height] of an object whose longer side is its extent. */
function boxSize({ shape, extent }: SceneObject): [number, number] {
  if (shape === 'triangle') return [extent, (extent * Math.sqrt(3)) / 2];
  if (shape === 'star') return [extent, (extent * (1 + COS36)) / (2 * SIN72)];
  return [extent, extent];
}

function objectSvg(object: SceneObject): string {
  const { shape, cx, cy, extent } = object;
  const fill = `fill="${hex(object.rgb)}"`;
  if (shape === 'circle') return `<circle cx="${cx}" cy="${cy}" r="${extent / 2}" ${fill}/>`;
  if (shape === 'square') return `<rect x="${cx - extent / 2}" y="${cy - extent / 2}" width="${extent}" height="${extent}" ${fill}/>`;
  const [, boxHeight] = boxSize(object);
  const top = cy - boxHeight / 2;
  if (shape === 'triangle') {
    return polygon([[cx, top], [cx + extent / 2, top + boxHeight], [cx - extent / 2, top + boxHeight]], fill);
  }
  // Five points, one up: outer radius R spans the box width 2R sin 72; the top point sits on the box top.
  const outer = extent / (2 * SIN72);
  const centerY = top + outer;
  const points: [number, number][] = [];
  for (let k = 0; k < 10; k++) {
    const radius = k % 2 === 0 ? outer : outer * object.innerRatio;
    const angle = -Math.PI / 2 + (k * Math.PI) / 5;
    points.push([cx + radius * Math.cos(angle), centerY + radius * Math.sin(angle)]);
  }
  return polygon(points, fill);
}

function polygon(points: [number, number][], fill: string): string {
  return `<polygon points="${points.map(([x, y]) => `${x.toFixed(2)},${y.toFixed(2)}`).join(' ')}" ${fill}/>`;
}

function hex(rgb: RGB): string {
  return `#${rgb.map((v) => v.toString(16).padStart(2, '0')).join('')}`;
}

/** Uniform integer in [low, high]. */
function between(random: Random, low: number, high: number): number {
  return low + random.int(high - low + 1);
}

function clampByte(v: number): number {
  return Math.max(0, Math.min(255, Math.round(v)));
}
