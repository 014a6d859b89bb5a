/**
 * Disk-image roots (QCOW2, raw, VMDK): the format from the file extension (or given), the
 * filesystem probed by the guest agent (or given). The guest gets the block device itself,
 * read-write: there is no copy-on-write between sandboxes on one disk file, so a second
 * running sandbox on the same file is refused (qemu's own image locking backs this up).
 */

import { extname, resolve } from 'node:path';
import { InvalidOptionError } from '../errors.ts';

export type DiskFormat = 'qcow2' | 'raw' | 'vmdk';
export const DISK_FORMATS: readonly DiskFormat[] = ['qcow2', 'raw', 'vmdk'];

/** The disk part of a config: present iff `image` is a disk file (an absolute path). */
export interface DiskImageConfig {
  readonly format: DiskFormat;
  /** A filesystem type (`ext4`, `erofs`…) or `auto` (probed in the guest). */
  readonly fstype: string;
}

const FSTYPE_RE = /^[a-z0-9]{2,16}$/;

/** The format a file name implies: `.qcow2`, `.vmdk`, else raw (`.raw`, `.img`, anything). */
export function diskFormatOf(path: string): DiskFormat {
  const ext = extname(path).toLowerCase();
  return ext === '.qcow2' ? 'qcow2' : ext === '.vmdk' ? 'vmdk' : 'raw';
}

/** Validates a disk config (field paths in errors). */
export function normalizeDisk(raw: unknown, path: string, option = 'disk'): DiskImageConfig {
  const d = (raw ?? {}) as Record<string, unknown>;
  if (typeof d !== 'object' || Array.isArray(d)) throw new InvalidOptionError(option, '{ format, fstype }', raw);
  for (const k of Object.keys(d)) if (k !== 'format' && k !== 'fstype') throw new InvalidOptionError(`${option}.${k}`, 'a known field (format, fstype)', k);
  const format = d.format ?? diskFormatOf(path);
  if (!DISK_FORMATS.includes(format as DiskFormat)) throw new InvalidOptionError(`${option}.format`, `one of ${DISK_FORMATS.map((f) => `"${f}"`).join(', ')}`, format);
  const fstype = d.fstype ?? 'auto';
  if (typeof fstype !== 'string' || !FSTYPE_RE.test(fstype)) throw new InvalidOptionError(`${option}.fstype`, '"auto" or a filesystem type such as "ext4"', fstype);
  return { format: format as DiskFormat, fstype };
}

/** An absolute path for a disk image given relative to the current directory. */
export function absoluteDiskPath(path: string): string {
  return resolve(path);
}
