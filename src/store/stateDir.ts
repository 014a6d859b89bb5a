/**
 * The state dir holds sandbox disks, snapshots (guest memory), named volumes, control
 * sockets and the LMDB store: nobody but its owner may read it or reach into it.
 */

import { chmodSync, lstatSync, mkdirSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { CorralError, InvalidOptionError } from '../errors.ts';

/**
 * Creates `dir` (mode 0700) or checks an existing one: it must be a directory owned by this
 * process's user; a looser mode on it or on its direct subdirectories is tightened to 0700.
 * Returns `dir`. Throws E_INVALID_OPTION for a bad path, E_STORE for a dir it cannot use.
 *
 * @example
 * secureStateDir('/var/lib/corral');
 */
export function secureStateDir(dir: unknown): string {
  if (typeof dir !== 'string' || dir.length === 0 || dir.includes('\0')) throw new InvalidOptionError('stateDir', 'a directory path (non-empty, no NUL bytes)', dir);
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (err) {
    throw new CorralError('E_STORE', `cannot create the state dir ${dir}: ${(err as Error).message}`, { cause: err });
  }
  const st = statSync(dir);
  if (!st.isDirectory()) throw new CorralError('E_STORE', `the state dir ${dir} is not a directory`);
  const uid = process.getuid?.();
  if (uid !== undefined && st.uid !== uid) {
    throw new CorralError('E_STORE', `the state dir ${dir} belongs to uid ${st.uid}, not to this user (uid ${uid}): refusing to keep sandboxes where another user can change them`);
  }
  tighten(dir, st.mode);
  for (const entry of readdirSync(dir)) {
    const path = join(dir, entry);
    // Another process may remove an entry meanwhile (a sandbox dir, a temp dir).
    const sub = lstatSync(path, { throwIfNoEntry: false });
    if (sub?.isDirectory() && sub.uid === st.uid) tighten(path, sub.mode);
  }
  return dir;
}

function tighten(path: string, mode: number): void {
  if ((mode & 0o077) === 0) return;
  try {
    chmodSync(path, 0o700);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw new CorralError('E_STORE', `${path} is readable by other users (mode ${(mode & 0o777).toString(8)}) and cannot be made private: ${(err as Error).message}`, { cause: err });
  }
}
