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

import { open, readFile, stat } from 'node:fs/promises';
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
export async function privatePages(pid: number, file: string, bytes: number): Promise<PrivatePage[]> {
  const { ino } = await stat(file);
  const maps = await readFile(`/proc/${pid}/maps`, 'utf8');
  let start: bigint | undefined;
  for (const line of maps.split('\n')) {
    // 7f12…-7f22… rw-p 00000000 fd:01 1234   /path
    const m = /^([0-9a-f]+)-([0-9a-f]+) (\S{4}) ([0-9a-f]+) \S+ (\d+)/.exec(line);
    if (!m || m[3]![3] !== 'p' || BigInt(`0x${m[4]}`) !== 0n || Number(m[5]) !== ino) continue;
    const lo = BigInt(`0x${m[1]}`);
    if (BigInt(`0x${m[2]}`) - lo !== BigInt(bytes)) continue;
    start = lo;
    break;
  }
  if (start === undefined) throw new CorralError('E_SNAPSHOT', `process ${pid} has no private mapping of ${file} (${bytes} bytes)`);
  const pages = bytes / PAGE_BYTES;
  const words = Buffer.alloc(pages * 8);
  const pagemap = await open(`/proc/${pid}/pagemap`, 'r');
  try {
    await readFull(pagemap, words, (start / BigInt(PAGE_BYTES)) * 8n);
  } finally {
    await pagemap.close();
  }
  const changed: number[] = [];
  for (let i = 0; i < pages; i++) {
    const w = words.readBigUInt64LE(i * 8);
    if (w & (PRESENT | SWAPPED) && !(w & FILE_OR_SHARED)) changed.push(i);
  }
  const out: PrivatePage[] = [];
  const mem = await open(`/proc/${pid}/mem`, 'r');
  try {
    for (let i = 0; i < changed.length; ) {
      let n = 1;
      while (i + n < changed.length && n < MAX_RUN_PAGES && changed[i + n] === changed[i]! + n) n++;
      const buf = Buffer.allocUnsafe(n * PAGE_BYTES);
      await readFull(mem, buf, start + BigInt(changed[i]! * PAGE_BYTES));
      for (let k = 0; k < n; k++) out.push({ offset: (changed[i]! + k) * PAGE_BYTES, data: buf.subarray(k * PAGE_BYTES, (k + 1) * PAGE_BYTES) });
      i += n;
    }
  } finally {
    await mem.close();
  }
  return out;
}

async function readFull(fh: import('node:fs/promises').FileHandle, buf: Buffer, position: bigint): Promise<void> {
  for (let done = 0; done < buf.length; ) {
    // Addresses are below 2^47: exact as numbers.
    const { bytesRead } = await fh.read(buf, done, buf.length - done, Number(position) + done);
    if (bytesRead === 0) throw new CorralError('E_SNAPSHOT', `short read of process memory at 0x${(position + BigInt(done)).toString(16)}`);
    done += bytesRead;
  }
}
