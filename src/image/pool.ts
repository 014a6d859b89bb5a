/**
 * The image pool: a piscina pool running workers/image.worker.ts (squashing: extract the
 * merged layers, merge them, mkfs.erofs). A thin front: created on first use, closed when the
 * last pull of this thread that needed it is done, so no worker outlives the pulls that use
 * it. Single layers do not use it (src/image/unpackLayer.ts: booting a worker cost more CPU
 * than the JavaScript part of unpacking the python test layer).
 */

import { join } from 'node:path';
import { availableParallelism } from 'node:os';
import { Piscina } from 'piscina';
import { deserializeError } from '../errors.ts';
import { ROOT, distEntry } from '../runtime/dist.ts';
import { workerExecArgv } from '../runtime/execArgv.ts';
import { holding } from '../runtime/hold.ts';
import type { SquashResult, SquashTask } from './squash.ts';
import { logFailure } from '../runtime/log.ts';
import type { SerializedError } from '../errors.ts';

/** A task's result as it crosses back from the worker: errors as plain data with their code. */
export type UnpackOutcome = { ok: true; result: SquashResult } | { ok: false; error: SerializedError };

// From the repository's root: the precompiled runtime's module URL is its bundle's.
const BOOT = join(ROOT, 'workers', 'image.boot.mjs');

let pool: Piscina | undefined;
let users = 0;

/** Most squashes run at once (each also runs a decompressor and mkfs.erofs). */
export const UNPACK_CONCURRENCY = Math.max(1, Math.min(4, availableParallelism()));

/**
 * Holds the pool for the duration of `fn` (a pull that squashes nests this around its
 * downloads and the squash). A new pool starts one worker at once, so booting a thread and
 * loading its modules (~0.35 s of CPU here) happens while the caller downloads, not after.
 * A pull that joins a running pool shares its workers.
 *
 * @example
 * await withImagePool(async (squash) => squash(task));
 */
export async function withImagePool<T>(fn: (squash: (task: SquashTask, signal?: AbortSignal) => Promise<SquashResult>) => Promise<T>): Promise<T> {
  users++;
  pool ??= new Piscina({ filename: distEntry('image.worker') ?? BOOT, minThreads: 1, maxThreads: UNPACK_CONCURRENCY, idleTimeout: 1000, name: 'default', execArgv: workerExecArgv() });
  const p = pool;
  try {
    return await fn(async (task, signal) => {
      // Piscina's workers are unreferenced while idle: hold the process until the task is done.
      const out = (await holding(() => p.run(task, signal ? { signal } : {}))) as UnpackOutcome;
      if (!out.ok) throw deserializeError(out.error);
      return out.result;
    });
  } finally {
    if (--users === 0 && pool === p) {
      pool = undefined;
      await p.close({ force: true }).catch(logFailure('closing the image worker pool'));
    }
  }
}
