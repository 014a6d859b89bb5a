/**
 * File-system probes that treat "not there" as an answer and anything else as a failure: a
 * bare `catch` around an lstat also swallows EACCES or EIO, and then a prune deletes what is
 * in use, or an extraction writes where it should have refused.
 */

/** Whether `err` says the path (or a parent of it) does not exist. */
export function isMissing(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return code === 'ENOENT' || code === 'ENOTDIR';
}

/**
 * `probe()`, or `fallback` when it failed because the path is missing; any other failure
 * is thrown.
 *
 * @example
 * const st = ifMissing(() => lstatSync(path), undefined);
 */
export function ifMissing<T, F>(probe: () => T, fallback: F): T | F {
  try {
    return probe();
  } catch (err) {
    if (isMissing(err)) return fallback;
    throw err;
  }
}
