/** Facts about host processes. */
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { isMissing } from './errno.ts';

/** Whether a process exists and is not a zombie (dead, waiting to be reaped). */
export function processAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat[stat.lastIndexOf(')') + 2] !== 'Z';
  } catch {
    return false;
  }
}

/**
 * Whether `pid` is a qemu that corral started for sandbox `name`: a qemu-system process with
 * a file of the sandbox's directory open (its upper disk) or, jailed, mounted (a jail shows
 * a VM its files as bind mounts, and a file opened through one reads as the path it was
 * mounted at, which a spare's overlay moved away from), or, for a cold boot, the sandbox's
 * name on its kernel command line. A restored clone's command line names the template's
 * guest ("corral"), not the sandbox, so the command line alone missed every restored VM.
 * A process that is gone, or going (its /proc files then fail with ESRCH or EINVAL: a dying
 * qemu's mountinfo did), or a pid reused by another program, is not.
 */
export function isSandboxVm(pid: number, sandboxDir: string, name: string): boolean {
  const argv = ifGone(() => readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0'), undefined);
  if (!argv?.some((a) => a.includes('qemu-system'))) return false;
  if (argv.some((a) => a.split(' ').includes(`corral.hostname=${name}`))) return true;
  const prefix = `${sandboxDir.replace(/\/+$/, '')}/`;
  const fds = ifGone(() => readdirSync(`/proc/${pid}/fd`), []);
  if (fds.some((fd) => ifGone(() => readlinkSync(join(`/proc/${pid}/fd`, fd)), '').startsWith(prefix))) return true;
  // mountinfo's 4th field is the mounted file's path in its filesystem, as it is now.
  const mounts = ifGone(() => readFileSync(`/proc/${pid}/mountinfo`, 'utf8').split('\n'), []);
  return mounts.some((line) => (line.split(' ')[3] ?? '').startsWith(prefix));
}

/** `probe()` of a /proc file of a process, or `fallback` when the process is gone or ending. */
function ifGone<T, F>(probe: () => T, fallback: F): T | F {
  try {
    return probe();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (isMissing(err) || code === 'ESRCH' || code === 'EINVAL') return fallback;
    throw err;
  }
}
