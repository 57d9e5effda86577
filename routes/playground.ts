/**
 * The playground: GET / is a page that captions images and trains models through this API. Its files
 * in public/ are served as they are (plain ES modules and CSS, no build step).
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { extname } from 'node:path';
import { Hono, type Context } from 'hono';
import type { RouteDoc } from '../src/http/openapi.ts';

const DIR = new URL('../public/', import.meta.url);

const FILES = ['index.html', 'style.css', 'icon.svg', 'main.js', 'api.js', 'sse.js', 'model-info.js', 'caption.js', 'training.js', 'loss-chart.js'];

const CONTENT_TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.svg': 'image/svg+xml',
};

// The page talks only to this origin: the browser then refuses any other script, style or request,
// which also keeps the page working where there is no internet.
const CONTENT_SECURITY_POLICY = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' blob:",
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

export const PLAYGROUND_DOCS: RouteDoc[] = [
  { method: 'get', path: '/', summary: 'The playground: a page that captions images and trains models through this API', responses: { 200: { description: 'the page', type: 'text/html' } } },
  { method: 'get', path: '/playground/:file', summary: "The playground's scripts, style and icon", responses: { 200: { description: 'the file', type: 'text/javascript' }, 404: 'no such file' } },
];

interface Asset {
  body: string;
  etag: string;
  type: string;
}

export function playgroundRouter(): Hono {
  const router = new Hono();
  // Read once, when the app is built: a few kilobytes that change only with a deploy, so no disk
  // read or hash per request, and a missing file fails at startup rather than in a user's browser.
  const assets = new Map<string, Asset>();
  for (const file of FILES) {
    const body = readFileSync(new URL(file, DIR), 'utf8');
    const etag = `"${createHash('sha256').update(body).digest('base64url').slice(0, 27)}"`;
    assets.set(file, { body, etag, type: CONTENT_TYPES[extname(file)]! });
  }
  const serve = (c: Context, { body, etag, type }: Asset) => {
    // no-cache: the browser keeps the file but asks each time, so a deploy shows at once (a 304 is cheap).
    const cache = { 'Cache-Control': 'no-cache', ETag: etag };
    const known = c.req.header('if-none-match')?.split(',').some((tag) => tag.trim() === etag);
    if (known) return c.body(null, 304, cache);
    return c.body(body, 200, { ...cache, 'Content-Type': type, 'X-Content-Type-Options': 'nosniff', 'Content-Security-Policy': CONTENT_SECURITY_POLICY });
  };
  router.get('/', (c) => serve(c, assets.get('index.html')!));
  router.get('/playground/:file', (c) => {
    const asset = c.req.param('file') !== 'index.html' ? assets.get(c.req.param('file')) : undefined;
    return asset ? serve(c, asset) : c.notFound();
  });
  return router;
}
