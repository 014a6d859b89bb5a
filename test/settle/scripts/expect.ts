/** Helpers of the settle scripts: each runs as a plain Node process, as a user's script does. */
import { CorralError } from '../../../src/errors.ts';

/** Awaits `p` and returns the code of the CorralError it rejects with; throws if it resolves. */
export async function rejectsWith(p: Promise<unknown>, what: string): Promise<string> {
  try {
    await p;
  } catch (err) {
    if (err instanceof CorralError) return err.code;
    throw new Error(`${what}: rejected with a non-CorralError`, { cause: err });
  }
  throw new Error(`${what}: resolved, expected a rejection`);
}

/** Throws unless `actual === expected`. */
export function same(actual: unknown, expected: unknown, what: string): void {
  if (actual !== expected) throw new Error(`${what}: got ${JSON.stringify(actual)}, expected ${JSON.stringify(expected)}`);
}
