/**
 * The image pool: a piscina pool running workers/image.worker.ts (decompress, extract,
 * mkfs.erofs). A thin front: created on first use, closed when the last pull of this thread
 * that needed it is done, so no worker outlives the pulls that use it.
 */

import { fileURLToPath } from 'node:url';
import { availableParallelism } from 'node:os';
import { Piscina } from 'piscina';
import { deserializeError } from '../errors.ts';
import { workerExecArgv } from '../runtime/execArgv.ts';
import { holding } from '../runtime/hold.ts';
import type { SquashResult, SquashTask } from './squash.ts';
import type { UnpackResult, UnpackTask } from './unpackLayer.ts';
import { logFailure } from '../runtime/log.ts';
import type { SerializedError } from '../errors.ts';

/** A task's result as it crosses back from the worker: errors as plain data with their code. */
export type UnpackOutcome = { ok: true; result: UnpackResult | SquashResult } | { ok: false; error: SerializedError };

const BOOT = fileURLToPath(new URL('../../workers/image.boot.mjs', import.meta.url));

let pool: Piscina | undefined;
let users = 0;

/** Most layers unpacked at once (each also runs a decompressor and mkfs.erofs). */
export const UNPACK_CONCURRENCY = Math.max(1, Math.min(4, availableParallelism()));

/**
 * Holds the pool for the duration of `fn` (pulls nest this around all their unpacks, and
 * only when they have something to unpack). `layers` sizes a new pool: that many workers,
 * up to {@link UNPACK_CONCURRENCY}, start at once, so booting a thread and loading its
 * modules (~0.7 s here) happens while the caller downloads, not after; no more, since a
 * task that finds no ready worker would start one of its own. A pull that joins a running
 * pool shares its workers.
 *
 * @example
 * await withImagePool(async (unpack) => unpack(task), { layers: 1 });
 */
export async function withImagePool<T>(
  fn: (unpack: (task: UnpackTask, signal?: AbortSignal) => Promise<UnpackResult>, squash: (task: SquashTask, signal?: AbortSignal) => Promise<SquashResult>) => Promise<T>,
  options: { layers?: number } = {},
): Promise<T> {
  users++;
  const threads = Math.max(1, Math.min(UNPACK_CONCURRENCY, options.layers ?? UNPACK_CONCURRENCY));
  pool ??= new Piscina({ filename: BOOT, minThreads: threads, maxThreads: threads, idleTimeout: 1000, name: 'default', execArgv: workerExecArgv() });
  const p = pool;
  try {
    const run = async (task: UnpackTask | SquashTask, signal?: AbortSignal) => {
      // Piscina's workers are unreferenced while idle: hold the process until the task is done.
      const out = (await holding(() => p.run(task, signal ? { signal } : {}))) as UnpackOutcome;
      if (!out.ok) throw deserializeError(out.error);
      return out.result;
    };
    return await fn(
      (task, signal) => run(task, signal) as Promise<UnpackResult>,
      (task, signal) => run(task, signal) as Promise<SquashResult>,
    );
  } finally {
    if (--users === 0 && pool === p) {
      pool = undefined;
      await p.close({ force: true }).catch(logFailure('closing the image worker pool'));
    }
  }
}
