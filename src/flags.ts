/**
 * The flags of the project's commands (src/cli.ts, src/eval.ts): a value that is not what its flag
 * takes is a UsageError, which names the flag, what it takes and what was given.
 */

export class UsageError extends Error {
  override name = 'UsageError';
}

/** A whole number in [min, max]. */
export function wholeNumber(flag: string, value: string, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  if (!/^\d+$/.test(value) || Number(value) < min || Number(value) > max) {
    const bounds = [min > 0 && `>= ${min}`, max < Number.MAX_SAFE_INTEGER && `<= ${max}`].filter(Boolean).join(' and ');
    throw new UsageError(`${flag} must be a whole number${bounds ? ` ${bounds}` : ''}, got '${value}'`);
  }
  return Number(value);
}

/** A finite number in [min, max]. */
export function finiteNumber(flag: string, value: string, min = -Infinity, max = Infinity): number {
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n) || n < min || n > max) {
    const range = Number.isFinite(max) ? ` in [${min}, ${max}]` : Number.isFinite(min) ? ` >= ${min}` : '';
    throw new UsageError(`${flag} must be a number${range}, got '${value}'`);
  }
  return n;
}
