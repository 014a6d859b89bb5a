/** Reading a qcow2 overlay's header. */

import { closeSync, openSync, readSync } from 'node:fs';
import { isMissing } from '../runtime/errno.ts';

/**
 * The backing file named in a qcow2 header, if any (offset 8: u64 name offset, 16: u32
 * length). Read from disk, so a prune trusts what the overlays really point at.
 */
export function qcow2Backing(path: string): string | undefined {
  let fd: number | undefined;
  try {
    fd = openSync(path, 'r');
    const head = Buffer.alloc(20);
    readSync(fd, head, 0, 20, 0);
    if (head.readUInt32BE(0) !== 0x514649fb) return undefined; // "QFI\xfb"
    const off = Number(head.readBigUInt64BE(8));
    const len = head.readUInt32BE(16);
    if (off === 0 || len === 0 || len > 4096) return undefined;
    const name = Buffer.alloc(len);
    readSync(fd, name, 0, len, off);
    return name.toString('utf8');
  } catch (err) {
    // No overlay there: nothing depends on a template. Unreadable: the prune must not guess.
    if (isMissing(err)) return undefined;
    throw err;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}
