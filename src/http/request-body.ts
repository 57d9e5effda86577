/**
 * Reading request bodies at the boundary: the content type (415), the size (413, refused before
 * reading when Content-Length says so, else counted while streaming), the time it takes to arrive
 * (408), multipart forms and JSON, with text that must be valid UTF-8 (400). Handlers get checked
 * values or an ApiError.
 */
import type { Context, MiddlewareHandler } from 'hono';
import { ApiError, invalidField } from './errors.ts';

export type BodyKind = 'multipart' | 'json';

const MEDIA_TYPES: Record<BodyKind, string> = { multipart: 'multipart/form-data', json: 'application/json' };

// A byte-order mark before a JSON body, as some Windows clients send, is dropped (RFC 8259 allows it).
const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Each request's body limit (bodyLimit), which readBody counts the body against as it arrives. */
const limits = new WeakMap<Context, { maxBytes: number; tooLarge: () => ApiError }>();

/**
 * Bodies over maxBytes get 413 without being read in full; the message names the limit (`limitName`).
 * A body without Content-Length (chunked) is counted as the handler reads it, not read here first
 * (as hono/body-limit does): the handler's own checks, such as a full server's 429, come before the
 * body, and its read stays within BODY_TIMEOUT_MS (readBody).
 */
export function bodyLimit(maxBytes: number, limitName = 'MAX_UPLOAD_BYTES'): MiddlewareHandler {
  return async (c, next) => {
    const tooLarge = () => new ApiError(413, 'too_large', `the request body is larger than the limit of ${maxBytes} bytes (${limitName})`);
    const { headers } = c.req.raw;
    const declared = headers.has('transfer-encoding') ? null : headers.get('content-length');
    if (declared !== null && Number(declared) > maxBytes) throw tooLarge();
    limits.set(c, { maxBytes, tooLarge });
    await next();
  };
}

/** Bodies of the JSON control routes (a job, a checkpoint path) are small; more is a mistake or an attack. */
export function controlBodyLimit(): MiddlewareHandler {
  return bodyLimit(64 * 1024, 'the fixed limit of a job or model request');
}

/** When each request's body must have arrived by (performance.now()), and the time it was given (bodyDeadline). */
const deadlines = new WeakMap<Context, { at: number; timeoutMs: number }>();

/**
 * A body that has not arrived in full `timeoutMs` after its request gets 408 and its connection
 * closed, so that a client sending slowly, or not at all, holds nothing for long.
 */
export function bodyDeadline(timeoutMs: number): MiddlewareHandler {
  return async (c, next) => {
    deadlines.set(c, { at: performance.now() + timeoutMs, timeoutMs });
    await next();
  };
}

/**
 * The request's body as `take` reads it: from a copy of the request whose body is counted against
 * its bodyLimit, a 413 where it outgrows it; a 408 once its deadline (bodyDeadline) passes first.
 * The request itself stays the one the server made, by which Bun knows the client's address.
 */
async function readBody<T>(c: Context, take: (request: Request) => Promise<T>): Promise<T> {
  const limit = limits.get(c);
  let request = c.req.raw;
  let outgrown: ApiError | undefined;
  if (limit && request.body) {
    let size = 0;
    const counted = request.body.pipeThrough(new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, controller) {
        size += chunk.byteLength;
        if (size <= limit.maxBytes) return controller.enqueue(chunk);
        outgrown = limit.tooLarge();
        controller.error(outgrown);
      },
    }));
    request = new Request(request, { body: counted, duplex: 'half' } as RequestInit);
  }
  const read = take(request).catch((error: unknown) => {
    if (outgrown) throw outgrown;
    // The client went away mid-body: its fault, not the server's, though nobody reads the answer.
    if (error instanceof DOMException && error.name === 'AbortError') throw new ApiError(400, 'invalid_request', 'the connection closed before the body arrived in full');
    throw error;
  });
  const deadline = deadlines.get(c);
  if (deadline === undefined) return read;
  // Once the 408 is sent, the read may still fail when the connection closes; nobody waits for it then.
  read.catch(() => {});
  let timer: Timer | undefined;
  const timeout = new Promise<never>((_, reject) => {
    const message = `the request body did not arrive in full within ${deadline.timeoutMs} ms (BODY_TIMEOUT_MS)`;
    timer = setTimeout(() => reject(new ApiError(408, 'request_timeout', message, undefined, { Connection: 'close' })), deadline.at - performance.now());
  });
  try {
    return await Promise.race([read, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** 415 before anything else when the Content-Type is none of `accepted`. */
export function acceptBodies(accepted: BodyKind[]): MiddlewareHandler {
  return async (c, next) => {
    bodyKind(c, accepted);
    await next();
  };
}

/** Which of the accepted kinds the request's Content-Type is; 415 otherwise. */
export function bodyKind(c: Context, accepted: BodyKind[]): BodyKind {
  const mediaType = (c.req.header('content-type') ?? '').split(';')[0]!.trim().toLowerCase();
  const kind = accepted.find((k) => MEDIA_TYPES[k] === mediaType);
  if (!kind) {
    const expected = accepted.map((k) => MEDIA_TYPES[k]).join(' or ');
    throw new ApiError(415, 'unsupported_media', `Content-Type must be ${expected}, got '${mediaType || 'none'}'`);
  }
  return kind;
}

/** The fields of a multipart/form-data body, parsed by the runtime's own FormData parser. */
export class Form {
  constructor(private readonly data: FormData) {}

  static async read(c: Context): Promise<Form> {
    try {
      return new Form(await readBody(c, (request) => request.formData()));
    } catch (error) {
      if (error instanceof ApiError) throw error;
      // The runtime's parser words its errors for its own developers, not for our clients.
      throw new ApiError(400, 'invalid_request', 'the body is not well-formed multipart/form-data (check the boundary and the part headers)');
    }
  }

  /**
   * Every field as one value, for the route's schema: text checked as UTF-8, a file as its File, and
   * the fields named in `lists` (such as `stop`) as the list of their values; any other field given
   * twice is a 400, and so is a field named in `files` sent as text (a part without a filename).
   */
  fields({ lists = [], files = [] }: { lists?: readonly string[]; files?: readonly string[] }): Record<string, unknown> {
    // One pass over the entries: looking each name up again (getAll) costs the square of their count.
    const byName = new Map<string, FormDataEntryValue[]>();
    for (const [name, value] of this.data.entries()) {
      const values = byName.get(name);
      if (values) values.push(value);
      else byName.set(name, [value]);
    }
    const fields: Record<string, unknown> = {};
    for (const [name, values] of byName) {
      if (lists.includes(name)) {
        fields[name] = values.map((value) => checkText(name, value));
        continue;
      }
      if (values.length > 1) throw invalidField(name, 'must be given once');
      const value = values[0]!;
      if (typeof value === 'string' && files.includes(name)) throw invalidField(name, `must be a file part, with a filename (as curl -F ${name}=@file sends it)`);
      fields[name] = typeof value === 'string' ? checkText(name, value) : value;
    }
    return fields;
  }
}

/**
 * FormData decodes text fields leniently, turning each invalid UTF-8 sequence into U+FFFD, so a
 * replacement character is how invalid bytes show; a text field must not hold one.
 */
function checkText(field: string, value: FormDataEntryValue): string {
  if (typeof value !== 'string') throw invalidField(field, 'must be a text field, not a file');
  if (value.includes('\uFFFD')) throw invalidField(field, 'is not valid UTF-8 (or holds U+FFFD, which is how invalid bytes arrive)');
  return value;
}

/** A JSON object body; the bytes must be valid UTF-8 before they are parsed. */
export async function readJsonObject(c: Context): Promise<Record<string, unknown>> {
  const text = decodeText('body', new Uint8Array(await readBody(c, (request) => request.arrayBuffer())));
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new ApiError(400, 'invalid_request', 'the body is not valid JSON');
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new ApiError(400, 'invalid_request', 'the body must be a JSON object');
  }
  return value as Record<string, unknown>;
}

function decodeText(field: string, bytes: Uint8Array): string {
  try {
    return utf8.decode(bytes);
  } catch {
    throw invalidField(field, 'is not valid UTF-8');
  }
}
