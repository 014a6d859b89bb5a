/**
 * One LMDB root per state dir per thread, opened on first use and kept for the thread's
 * life. Components that share the state dir's environment (image index, template index)
 * take it from here instead of opening and closing it per call: the environment is shared
 * across threads and processes, and opening and closing it over and over while other
 * threads write to it is churn that LMDB bindings handle least well (a full test run once
 * saw "freelist entry had bad/duplicate entries" with per-call opens).
 */

import { join } from 'node:path';
import { open, type RootDatabase } from 'lmdb';

const roots = new Map<string, RootDatabase>();

/** The (cached) root of `<stateDir>/store.lmdb`. Do not close it. */
export function sharedRoot(stateDir: string): RootDatabase {
  const path = join(stateDir, 'store.lmdb');
  let root = roots.get(path);
  if (!root || (root as unknown as { status?: string }).status === 'closed') {
    root = open({ path, maxDbs: 16, compression: false });
    roots.set(path, root);
  }
  return root;
}
