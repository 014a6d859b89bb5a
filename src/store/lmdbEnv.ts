/**
 * One LMDB root per state dir per thread, opened on first use and kept for the thread's
 * life. Components that share the state dir's environment (image index, template index)
 * take it from here instead of opening and closing it per call: the environment is shared
 * across threads and processes, and opening and closing it over and over while other
 * threads write to it is churn that LMDB bindings handle least well (a full test run once
 * saw "freelist entry had bad/duplicate entries" with per-call opens).
 *
 * A thread that ends closes its roots first ({@link closeSharedRoots}): a thread ended while
 * its environment is open has lmdb-js's clean-up hook abort its write transaction under the
 * thread pool's writer, and the store of every process sharing the file breaks
 * (`mdb_page_touch no parent`, `MDB_BAD_TXN`).
 */

import { join } from 'node:path';
import { open, type RootDatabase } from 'lmdb';
import { CorralError } from '../errors.ts';

const roots = new Map<string, RootDatabase>();
/** Set once this thread closed its roots for good: nothing may open one again. */
let closedForGood = false;

/** The (cached) root of `<stateDir>/store.lmdb`. Do not close it. */
export function sharedRoot(stateDir: string): RootDatabase {
  const path = join(stateDir, 'store.lmdb');
  if (closedForGood) throw new CorralError('E_CLOSED', `this thread is ending: it opens no state store (${path}) any more`);
  let root = roots.get(path);
  if (!root || (root as unknown as { status?: string }).status === 'closed') {
    root = open({ path, maxDbs: 16, compression: false });
    roots.set(path, root);
  }
  return root;
}

/**
 * Closes every root this thread opened, each once its queued writes are committed, and
 * refuses to open one again (E_CLOSED): for a thread about to end (a sandbox worker asked to
 * end by its pool). A root that fails to close is logged by `onError` and the others still
 * close. Resolves once all are closed.
 *
 * @example
 * await closeSharedRoots((err) => log.warn(String(err)));
 * process.exit(0);
 */
export async function closeSharedRoots(onError: (err: unknown) => void): Promise<void> {
  closedForGood = true;
  const all = [...roots.values()];
  roots.clear();
  await Promise.all(all.map((root) => root.close().catch(onError)));
}
