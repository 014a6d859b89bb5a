/**
 * A lock file that deduplicates work between threads and processes (two sandboxes pulling
 * the same layer at once: one builds it, the other waits for the result).
 *
 * The holder creates the file exclusively and touches it every second; a waiter takes over
 * a lock whose file was not touched for {@link STALE_MS} (its holder died) or that vanished.
 */

import { open, rm, stat, utimes } from 'node:fs/promises';
import { CorralError } from '../errors.ts';
import { logFailure } from '../runtime/log.ts';
import { isMissing } from '../runtime/errno.ts';

const HEARTBEAT_MS = 1000;
const STALE_MS = 15_000;
const POLL_MS = 50;

/** A held lock. */
export interface HeldLock {
  release(): Promise<void>;
}

/**
 * Runs `fn` under the lock at `path`, unless `done()` turns true while waiting for another
 * holder (then returns undefined: the work was done by someone else).
 *
 * @example
 * await withFileLock(`${out}.lock`, () => existsSync(out), () => build(out));
 */
export async function withFileLock<T>(path: string, done: () => boolean | Promise<boolean>, fn: () => Promise<T>, signal?: AbortSignal): Promise<T | undefined> {
  for (;;) {
    if (await done()) return undefined;
    signal?.throwIfAborted();
    let fh;
    try {
      fh = await open(path, 'wx', 0o600);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
        throw new CorralError('E_IMAGE_LAYER', `cannot create lock ${path}: ${(err as Error).message}`, { cause: err });
      }
      // Someone else holds it: wait for their result, or for the lock to go stale.
      try {
        const st = await stat(path);
        if (Date.now() - st.mtimeMs > STALE_MS) await rm(path, { force: true });
      } catch (err) {
        if (!isMissing(err)) throw err;
        continue; // vanished: retry at once
      }
      await new Promise((r) => setTimeout(r, POLL_MS));
      continue;
    }
    await fh.writeFile(`${process.pid}\n`);
    await fh.close();
    const beat = setInterval(() => {
      const now = new Date();
      utimes(path, now, now).catch(logFailure(`refreshing lock ${path}`));
    }, HEARTBEAT_MS);
    try {
      // It may have been done between our check and taking the lock.
      if (await done()) return undefined;
      return await fn();
    } finally {
      clearInterval(beat);
      await rm(path, { force: true });
    }
  }
}
