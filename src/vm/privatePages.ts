/**
 * The pages a process changed in a private (copy-on-write) mapping of a file: read from
 * outside it, through /proc. For a VM restored from a template, those are the guest pages
 * that differ from the template's RAM file (src/vm/migrationStream.ts says why that matters).
 *
 * /proc/PID/pagemap has one 64-bit word per page of the process's address space: bit 63
 * present, bit 62 swapped, bit 61 "file page or shared anonymous". A page of a private file
 * mapping that was written is an anonymous page (present or swapped, bit 61 clear); one never
 * written is the file's page (bit 61 set) or not mapped yet (reads the file when touched).
 * The process must be stopped (a VM paused) for the answer to hold while it is read.
 */

import { closeSync, openSync, readFileSync, readSync, statSync } from 'node:fs';
import { CorralError } from '../errors.ts';
import { PAGE_BYTES } from './migrationStream.ts';

const PRESENT = 1n << 63n;
const SWAPPED = 1n << 62n;
const FILE_OR_SHARED = 1n << 61n;
/** Longest run of pages read from /proc/PID/mem in one call. */
const MAX_RUN_PAGES = 256;

/** One changed page: its offset in the file (and so in the RAM block) and its bytes. */
export interface PrivatePage {
  readonly offset: number;
  readonly data: Buffer;
}

/**
 * The pages process `pid` holds privately in its mapping of `file` (the whole file, from
 * offset 0, `bytes` long). Throws when there is no such mapping or /proc cannot be read
 * (no permission to trace the process).
 */
export function privatePages(pid: number, file: string, bytes: number): PrivatePage[] {
  // Synchronous on purpose: a few reads of /proc while the VM is stopped, each cheaper than
  // a trip through libuv's thread pool, which on a loaded host costs the most (seen: 18 →
  // 385 ms for ~700 pages at a load of 16, with one async read per run of pages).
  const { ino } = statSync(file);
  const maps = readFileSync(`/proc/${pid}/maps`, 'utf8');
  let start: number | undefined;
  for (const line of maps.split('\n')) {
    // 7f12…-7f22… rw-p 00000000 fd:01 1234   /path
    const m = /^([0-9a-f]+)-([0-9a-f]+) (\S{4}) ([0-9a-f]+) \S+ (\d+)/.exec(line);
    if (!m || m[3]![3] !== 'p' || Number.parseInt(m[4]!, 16) !== 0 || Number(m[5]) !== ino) continue;
    // Addresses are below 2^47: exact as numbers.
    const lo = Number.parseInt(m[1]!, 16);
    if (Number.parseInt(m[2]!, 16) - lo !== bytes) continue;
    start = lo;
    break;
  }
  if (start === undefined) throw new CorralError('E_SNAPSHOT', `process ${pid} has no private mapping of ${file} (${bytes} bytes)`);
  const pages = bytes / PAGE_BYTES;
  const words = Buffer.alloc(pages * 8);
  readAt(`/proc/${pid}/pagemap`, [{ buf: words, position: (start / PAGE_BYTES) * 8 }]);
  const changed: number[] = [];
  for (let i = 0; i < pages; i++) {
    const w = words.readBigUInt64LE(i * 8);
    if (w & (PRESENT | SWAPPED) && !(w & FILE_OR_SHARED)) changed.push(i);
  }
  const out: PrivatePage[] = [];
  const reads: { buf: Buffer; position: number }[] = [];
  for (let i = 0; i < changed.length; ) {
    let n = 1;
    while (i + n < changed.length && n < MAX_RUN_PAGES && changed[i + n] === changed[i]! + n) n++;
    const buf = Buffer.allocUnsafe(n * PAGE_BYTES);
    reads.push({ buf, position: start + changed[i]! * PAGE_BYTES });
    for (let k = 0; k < n; k++) out.push({ offset: (changed[i]! + k) * PAGE_BYTES, data: buf.subarray(k * PAGE_BYTES, (k + 1) * PAGE_BYTES) });
    i += n;
  }
  readAt(`/proc/${pid}/mem`, reads);
  return out;
}

/** Fills each buffer from `path` at its position. */
function readAt(path: string, reads: readonly { buf: Buffer; position: number }[]): void {
  const fd = openSync(path, 'r');
  try {
    for (const { buf, position } of reads) {
      for (let done = 0; done < buf.length; ) {
        const n = readSync(fd, buf, done, buf.length - done, position + done);
        if (n === 0) throw new CorralError('E_SNAPSHOT', `short read of ${path} at 0x${(position + done).toString(16)}`);
        done += n;
      }
    }
  } finally {
    closeSync(fd);
  }
}
