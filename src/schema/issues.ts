/**
 * What a failed zod parse tells a client: the first issue, its field written as the client writes
 * it (`data.passkey.depth`, `messages[0].content[1].image_url`), and its message. The HTTP routes
 * (src/http/validation.ts), the job specs (src/training/spec.ts) and the server settings
 * (src/http/settings.ts) all name a bad field this way.
 */
import type { z } from 'zod';

export interface FieldIssue {
  /** The field at fault; '' for the value as a whole. */
  field: string;
  message: string;
  /** True when the field is one the schema does not know (a typo such as `max_token`). */
  unknown: boolean;
}

/** A path of keys and indices as one field name: ['messages', 0, 'content'] is messages[0].content. */
export function fieldPath(path: readonly PropertyKey[]): string {
  return path.reduce<string>((field, key) => (typeof key === 'number' ? `${field}[${key}]` : field ? `${field}.${String(key)}` : String(key)), '');
}

export function firstIssue(error: z.ZodError): FieldIssue {
  const issue = deepest(error.issues[0]!);
  if (issue.code === 'unrecognized_keys') return { field: fieldPath([...issue.path, issue.keys[0]!]), message: issue.message, unknown: true };
  return { field: fieldPath(issue.path), message: issue.message, unknown: false };
}

/**
 * A union that failed because the one option matching the value's kind failed inside it (an array of
 * content parts, one of them bad) is told by that inner issue, at its own path: the client learns
 * which part is wrong, not only that the whole matched no option.
 */
function deepest(issue: z.core.$ZodIssue): z.core.$ZodIssue {
  if (issue.code !== 'invalid_union') return issue;
  const inner = issue.errors.map((issues) => issues[0]).filter((first) => first !== undefined && first.path.length > 0);
  if (inner.length !== 1) return issue;
  return deepest({ ...inner[0]!, path: [...issue.path, ...inner[0]!.path] });
}

/** zod's error option: a message made from the value that was given. */
export function failsWith(message: (input: unknown) => string): { error: (issue: { input?: unknown }) => string } {
  return { error: (issue) => message(issue.input) };
}

/**
 * A value as the client sent it, in JSON; but a number too large for a double (1e400), which
 * JSON.parse read as Infinity and JSON.stringify would show as null, is said to be one.
 */
export function shown(input: unknown): string {
  return typeof input === 'number' && !Number.isFinite(input) ? `${input}, which is not a finite number` : JSON.stringify(input);
}
