/** Bearer-token check for training and model-changing routes, active only when API_KEY is set. */
import { timingSafeEqual } from 'node:crypto';
import type { MiddlewareHandler } from 'hono';
import { ApiError } from './errors.ts';

export function requireApiKey(apiKey: string | undefined): MiddlewareHandler {
  const expected = apiKey === undefined ? undefined : Buffer.from(apiKey);
  return async (c, next) => {
    if (expected) {
      const match = /^Bearer\s+(.+)$/i.exec(c.req.header('authorization') ?? '');
      const given = Buffer.from(match?.[1]?.trim() ?? '');
      // Constant time, so that the response time does not reveal how much of a guess was right.
      if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
        throw new ApiError(401, 'unauthorized', 'this route needs the API key as a bearer token (Authorization: Bearer <API_KEY>)', undefined, {
          'WWW-Authenticate': 'Bearer',
        });
      }
    }
    await next();
  };
}
