/**
 * The Host header check against DNS rebinding. A server bound to a loopback address is meant for this
 * machine only, but a web page can point a host name of its own at 127.0.0.1 and have the visitor's
 * browser send it requests, with no API key by default. Those requests carry the page's host name in
 * Host, so a loopback server answers only the loopback names (localhost, 127.0.0.1, [::1], any port)
 * and the names ALLOWED_HOSTS adds; anything else gets 421 Misdirected Request: this server does not
 * serve that name. A server bound to another address checks only when ALLOWED_HOSTS is set.
 */
import { isIPv4, isIPv6 } from 'node:net';
import type { MiddlewareHandler } from 'hono';
import { ApiError } from './errors.ts';

const LOOPBACK_NAMES = ['localhost', '127.0.0.1', '[::1]'];

/** The middleware for a server bound to `host`; undefined when nothing is to be checked. */
export function hostCheck(host: string, allowedHosts: readonly string[]): MiddlewareHandler | undefined {
  if (allowedHosts.includes('*')) return undefined;
  // The bind address too, as a Host header writes it: a loopback address may be written otherwise.
  const loopback = isLoopback(host) ? [...LOOPBACK_NAMES, ...asHostNames(host)] : [];
  // An entry may name a port, for the Origin check (origin-check.ts); a Host is checked by its name.
  const allowed = new Set([...loopback, ...allowedHosts.map((entry) => hostName(entry) || entry.toLowerCase())]);
  if (allowed.size === 0) return undefined;
  return async (c, next) => {
    const header = c.req.header('host') ?? '';
    const name = hostName(header);
    if (!allowed.has(name)) {
      const shown = header === '' ? 'no Host header' : `Host '${name || header}'`;
      throw new ApiError(421, 'misdirected_request', `${shown} is not served here (this server answers ${[...allowed].join(', ')}; ALLOWED_HOSTS adds names)`);
    }
    await next();
  };
}

/**
 * `host` as a Host header names it: lower case, an IPv6 address in brackets, as written and as a
 * URL writes it (a browser sends ::ffff:127.0.0.1 as [::ffff:7f00:1]).
 */
function asHostNames(host: string): string[] {
  const bare = bareAddress(host);
  return isIPv6(bare) ? [`[${bare}]`, new URL(`http://[${bare}]`).hostname] : [bare];
}

/** `host` lower case, an IPv6 address without its brackets. */
function bareAddress(host: string): string {
  return host.replace(/^\[(.*)\]$/, '$1').toLowerCase();
}

/** 127.0.0.0/8, ::1 and localhost, however an address is written (0:0:0:0:0:0:0:1, ::ffff:127.0.0.1). */
export function isLoopback(host: string): boolean {
  const bare = bareAddress(host);
  if (bare === 'localhost') return true;
  if (isIPv4(bare)) return bare.startsWith('127.');
  if (!isIPv6(bare)) return false;
  // The URL parser writes an IPv6 address one way: ::1, and ::ffff:7f..:.... for IPv4's 127.x.x.x.
  const written = new URL(`http://[${bare}]`).hostname;
  return written === '[::1]' || /^\[::ffff:7f[0-9a-f]{2}:[0-9a-f]{1,4}\]$/.test(written);
}

/** A name or an address, and a port: what a Host header may be (RFC 9110), nothing a URL parser would read otherwise. */
const HOST_SYNTAX = /^(\[[0-9a-f:.]+\]|[a-z0-9.-]+)(:\d{1,5})?$/;

/**
 * The name of a Host header without its port, lower case; an IPv6 address keeps its brackets. '' for
 * a header that is no host: `localhost:3000@elsewhere` would pass as localhost here and be read as
 * another host by the URL parser.
 */
function hostName(header: string): string {
  const value = header.trim().toLowerCase();
  const parts = HOST_SYNTAX.exec(value);
  return parts ? parts[1]! : '';
}
