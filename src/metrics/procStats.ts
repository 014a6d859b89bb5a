/**
 * What Linux says about a process, read from /proc: CPU time (`stat`) and memory
 * (`smaps_rollup`). Used to sample a VM process from the host side.
 */

import { readFile } from 'node:fs/promises';
import { CorralError } from '../errors.ts';

/** Clock ticks per second of /proc/<pid>/stat times (USER_HZ: 100 on every Linux ABI). */
const USER_HZ = 100;

/** CPU time a process used so far. */
export interface ProcCpu {
  /** user + system time, in seconds. */
  readonly cpuSeconds: number;
  /** When it was read (performance.now(), ms). */
  readonly at: number;
}

/** Memory of a process, bytes. */
export interface ProcMemory {
  readonly rssBytes: number;
  /** Proportional set size: shared pages (a template's RAM) split among their users. */
  readonly pssBytes: number;
}

/**
 * Reads user + system CPU time of `pid`.
 *
 * @example
 * const a = await readProcCpu(pid); … const b = await readProcCpu(pid);
 * const percent = cpuPercent(a, b);
 */
export async function readProcCpu(pid: number): Promise<ProcCpu> {
  const text = await readProc(pid, 'stat');
  // Field 2 (comm) may hold spaces and parentheses: split after the last ')'.
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  // fields[0] is field 3 (state): utime is field 14, stime field 15.
  const utime = Number(fields[11]);
  const stime = Number(fields[12]);
  return { cpuSeconds: (utime + stime) / USER_HZ, at: performance.now() };
}

/** CPU use between two readings, in percent of one core (200 = two cores busy). */
export function cpuPercent(before: ProcCpu, after: ProcCpu): number {
  const wallSeconds = (after.at - before.at) / 1000;
  if (wallSeconds <= 0) return 0;
  return Math.max(0, ((after.cpuSeconds - before.cpuSeconds) / wallSeconds) * 100);
}

/** Reads RSS and PSS of `pid` from /proc/<pid>/smaps_rollup. */
export async function readProcMemory(pid: number): Promise<ProcMemory> {
  const text = await readProc(pid, 'smaps_rollup');
  const kib = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? 0) * 1024;
  return { rssBytes: kib('Rss'), pssBytes: kib('Pss') };
}

async function readProc(pid: number, file: string): Promise<string> {
  try {
    return await readFile(`/proc/${pid}/${file}`, 'utf8');
  } catch (err) {
    throw new CorralError('E_ILLEGAL_STATE', `cannot read /proc/${pid}/${file}: the VM process is gone`, { cause: err, details: { pid } });
  }
}
