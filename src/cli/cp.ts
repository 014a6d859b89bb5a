/**
 * `corral cp SRC DST`: copies a file or directory tree between the host and a sandbox, one
 * side written `NAME:/path` (like `docker cp`). A DST that is an existing directory receives
 * SRC inside it, under SRC's own name.
 */

import { stat } from 'node:fs/promises';
import { basename, join, posix } from 'node:path';
import { CorralError } from '../errors.ts';
import { Sandbox } from '../sdk/Sandbox.ts';
import type { Supervisor } from '../supervisor/Supervisor.ts';
import type { Cluster } from '../cluster/Cluster.ts';

/** One side of a copy: a sandbox path (`NAME:/path`) or a host path. */
export interface CpEnd {
  readonly sandbox?: string;
  readonly path: string;
}

/**
 * Reads `NAME:/abs/path` as a sandbox path, anything else as a host path.
 *
 * @example
 * parseCpEnd('web:/etc/hosts'); // { sandbox: 'web', path: '/etc/hosts' }
 */
export function parseCpEnd(arg: string): CpEnd {
  const m = /^([A-Za-z0-9][A-Za-z0-9_.-]*):(.*)$/.exec(arg);
  if (!m) return { path: arg };
  if (!m[2]!.startsWith('/')) throw new CorralError('E_USAGE', `a sandbox path is NAME:/absolute/path (got ${JSON.stringify(arg)})`);
  return { sandbox: m[1]!, path: m[2]! };
}

/** What {@link copy} did. */
export interface CpResult {
  readonly direction: 'in' | 'out';
  readonly sandbox: string;
  readonly from: string;
  readonly to: string;
}

/**
 * Copies between the host and a running sandbox; resolves with where things went.
 *
 * @example
 * await copy({ supervisor: sup }, './site', 'web:/srv'); // → web:/srv/site when /srv exists
 */
export async function copy(where: { supervisor: Supervisor } | { cluster: Cluster }, src: string, dst: string): Promise<CpResult> {
  const from = parseCpEnd(src);
  const to = parseCpEnd(dst);
  if ((from.sandbox === undefined) === (to.sandbox === undefined)) {
    throw new CorralError('E_USAGE', 'cp copies between the host and a sandbox: exactly one of SRC and DST is NAME:/path');
  }
  const name = (from.sandbox ?? to.sandbox)!;
  const sb = await Sandbox.get(name, where);
  try {
    const fs = sb.fs();
    if (to.sandbox !== undefined) {
      const st = await fs.stat(to.path).catch(() => undefined);
      const target = st?.type === 'directory' ? posix.join(to.path, basename(from.path)) : to.path;
      await fs.copyIn(from.path, target);
      return { direction: 'in', sandbox: name, from: from.path, to: target };
    }
    const st = await stat(to.path).catch(() => undefined);
    const target = st?.isDirectory() ? join(to.path, posix.basename(from.path)) : to.path;
    await fs.copyOut(from.path, target);
    return { direction: 'out', sandbox: name, from: from.path, to: target };
  } finally {
    await sb.detach();
  }
}
