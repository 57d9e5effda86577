/**
 * The Origin check against cross-site requests. A page on another site can have its visitors'
 * browsers send this server requests that need no preflight, such as an upload form's POST to
 * /v1/captions or a bodiless POST that cancels a job, though it can never read the answers (the API
 * sends no CORS headers). Browsers name the page's origin in Origin; a request that changes anything
 * (any method but GET and HEAD) from an origin other than this server's own gets 403. Clients that are
 * not browsers send no Origin, and the playground is served from the server's own origin. Behind a
 * proxy that rewrites Host, ALLOWED_HOSTS names the public host, whose pages are then this server's.
 */
import type { MiddlewareHandler } from 'hono';
import { ApiError } from './errors.ts';

const READS = new Set(['GET', 'HEAD']);

/** The middleware; undefined where ALLOWED_HOSTS is '*', which turns the host checks off. */
export function originCheck(allowedHosts: readonly string[]): MiddlewareHandler | undefined {
  if (allowedHosts.includes('*')) return undefined;
  const allowed = new Set(allowedHosts.map((name) => name.toLowerCase()));
  return async (c, next) => {
    const origin = c.req.header('origin');
    if (origin !== undefined && !READS.has(c.req.method) && !ownOrigin(origin, c.req.header('host') ?? '', allowed)) {
      throw new ApiError(403, 'cross_origin', `a page of another site (Origin '${origin}') may not send this request; ALLOWED_HOSTS names the hosts whose pages may`);
    }
    await next();
  };
}

/** Whether `origin` is the server's own (the Host the browser sent to) or a page of a host ALLOWED_HOSTS names, on its default port or the entry's. */
function ownOrigin(origin: string, host: string, allowed: Set<string>): boolean {
  let url: URL;
  try {
    url = new URL(origin);
  } catch {
    // `null` (a sandboxed frame, a file) or anything else that is not an origin.
    return false;
  }
  // A host ALLOWED_HOSTS names serves its pages on its scheme's own port, or on the port its entry
  // names (name:8443): a page on another port of that host is another origin, another application.
  return url.host === host.trim().toLowerCase() || allowed.has(url.host) || (allowed.has(url.hostname) && url.port === '');
}
