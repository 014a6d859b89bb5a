/**
 * Path rules for everything that names a place in the guest (volume mount points, patch
 * targets) or on the host (bind sources, copyDir sources). The agent checks guest paths
 * again (native/agent/setup.c): the host is the first line, not the only one.
 */

import { statSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import { InvalidOptionError } from '../errors.ts';
import { isMissing } from '../runtime/errno.ts';

/** Guest trees nothing may be mounted on or written into: the kernel's and the agent's. */
export const SYSTEM_PATHS: readonly string[] = ['/proc', '/sys', '/dev'];

/** Longest guest path accepted (the guest's PATH_MAX less the NUL). */
export const GUEST_PATH_MAX = 4095;

/**
 * Checks a guest path: absolute, no `.`/`..`/empty segments, no NUL, not `/`, not in
 * {@link SYSTEM_PATHS}. Returns it without a trailing slash.
 *
 * @example
 * guestPath('/app/src', 'volume')  // '/app/src'
 * guestPath('/app/../etc', 'volume')  // throws InvalidOptionError naming "volume"
 */
export function guestPath(value: unknown, option: string, { allowSystem = false } = {}): string {
  const allowed = `an absolute guest path without ".", ".." or empty segments, not "/"${allowSystem ? '' : ` and not inside ${SYSTEM_PATHS.join(', ')}`}`;
  if (typeof value !== 'string' || !value.startsWith('/') || value.includes('\0') || value.length > GUEST_PATH_MAX) {
    throw new InvalidOptionError(option, allowed, value);
  }
  const trimmed = value.length > 1 && value.endsWith('/') ? value.slice(0, -1) : value;
  const segments = trimmed.split('/').slice(1);
  if (trimmed === '/' || segments.some((s) => s === '' || s === '.' || s === '..')) throw new InvalidOptionError(option, allowed, value);
  if (!allowSystem && isSystemPath(trimmed)) throw new InvalidOptionError(option, allowed, value);
  return trimmed;
}

/** Whether a (checked) guest path is one of {@link SYSTEM_PATHS} or inside one. */
export function isSystemPath(path: string): boolean {
  return SYSTEM_PATHS.some((s) => path === s || path.startsWith(`${s}/`));
}

/** Whether guest path `inner` is `outer` or inside it. */
export function isWithin(inner: string, outer: string): boolean {
  return inner === outer || inner.startsWith(`${outer}/`);
}

/**
 * Resolves a host path (relative ones against the current directory) and checks that it
 * exists and is a directory. Returns the absolute path, so configs stay meaningful in
 * other processes.
 */
export function hostDir(value: unknown, option: string): string {
  if (typeof value !== 'string' || value.length === 0 || value.includes('\0')) {
    throw new InvalidOptionError(option, 'a path to an existing host directory', value);
  }
  const abs = isAbsolute(value) ? resolve(value) : resolve(process.cwd(), value);
  let isDir = false;
  try {
    isDir = statSync(abs).isDirectory();
  } catch (err) {
    const why = isMissing(err) ? 'does not exist' : `cannot be read: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`;
    throw new InvalidOptionError(option, `an existing host directory (${abs} ${why})`, value);
  }
  if (!isDir) throw new InvalidOptionError(option, `an existing host directory (${abs} is not a directory)`, value);
  return abs;
}
