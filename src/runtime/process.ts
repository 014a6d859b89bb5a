/** Facts about host processes. */
import { readFileSync } from 'node:fs';

/** Whether a process exists and is not a zombie (dead, waiting to be reaped). */
export function processAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat[stat.lastIndexOf(')') + 2] !== 'Z';
  } catch {
    return false;
  }
}
