/**
 * Request bodies checked against their schema at the boundary: the typed, defaulted value, or a 400
 * that names the first bad field as the client spelled it.
 */
import type { z } from 'zod';
import { firstIssue } from '../schema/issues.ts';
import { invalidField } from './errors.ts';

export function parseFields<S extends z.ZodType>(schema: S, value: unknown): z.output<S> {
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  const { field, message } = firstIssue(result.error);
  throw invalidField(field || 'body', message);
}
