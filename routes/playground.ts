/**
 * The playground: GET / is a page that captions images and trains models through this API. Its files
 * in public/ are served as they are (plain ES modules and CSS, no build step).
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { extname } from 'node:path';
import { Hono } from 'hono';

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

export function playgroundRouter(): Hono {
  const router = new Hono();
  for (const file of FILES) {
    // Read once, when the app is built: a few kilobytes that change only with a deploy, so no disk
    // read or hash per request, and a missing file fails at startup rather than in a user's browser.
    const body = readFileSync(new URL(file, DIR), 'utf8');
    const etag = `"${createHash('sha256').update(body).digest('base64url').slice(0, 27)}"`;
    // no-cache: the browser keeps the file but asks each time, so a deploy shows at once (a 304 is cheap).
    const cache = { 'Cache-Control': 'no-cache', ETag: etag };
    const headers = { ...cache, 'Content-Type': CONTENT_TYPES[extname(file)]!, 'X-Content-Type-Options': 'nosniff', 'Content-Security-Policy': CONTENT_SECURITY_POLICY };
    router.get(file === 'index.html' ? '/' : `/playground/${file}`, (c) => {
      const known = c.req.header('if-none-match')?.split(',').some((tag) => tag.trim() === etag);
      return known ? c.body(null, 304, cache) : c.body(body, 200, headers);
    });
  }
  return router;
}
