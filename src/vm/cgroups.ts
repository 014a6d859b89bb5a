/**
 * One VM's cgroup: the limits its qemu runs under, and how it ended.
 *
 * Where the limits can live depends on the host:
 * - cgroup v2 with the memory, cpu and pids controllers at the cgroup2 root: one directory,
 *   `<cgroup2>/corral-vm-<id>`, or the network policy's `<cgroup2>/corral/<id>` (the
 *   controllers are enabled down to it): `memory.max`, `memory.swap.max` 0, `cpu.max`,
 *   `cpu.weight`, `pids.max`; an OOM kill shows in `memory.events`.
 * - cgroup v1 controllers (a hybrid host, like this workplace's, where cgroup2 holds no
 *   controller): one directory per controller under the creating process's own cgroup of
 *   that hierarchy (`<memory>/<own>/corral-vm-<id>`…), so the VM stays inside whatever limits
 *   the embedding process has: `memory.limit_in_bytes` (and `memsw`, so swap cannot extend
 *   it), `cpu.cfs_quota_us`, `cpu.shares`, `pids.max`; an OOM kill shows in `memory.oom_control`.
 * A host with neither gets no limits, and says so ({@link VmCgroup.missing}).
 *
 * The VM process is in the directories before it starts (native/jail: the launcher moves
 * itself into each v1 one through its `tasks` file, and creates qemu's process in a v2 one
 * with clone3's CLONE_INTO_CGROUP; a write to `cgroup.procs` would wait for an RCU grace
 * period, ~15 ms), so everything it ever does is counted. The directories are removed when
 * the VM has exited; ones left by a host process that was killed are swept at the next
 * supervisor start.
 */

import { existsSync, readFileSync, statSync } from 'node:fs';
import { mkdir, readFile, readdir, rmdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CorralError } from '../errors.ts';
import { logFailure } from '../runtime/log.ts';
import { ifMissing, isMissing } from '../runtime/errno.ts';

/** What a VM may use on top of its guest RAM: qemu itself, its devices and (TCG) its translation cache. */
export const MEMORY_OVERHEAD_MIB = { tcg: 512, kvm: 256 } as const;
/** The TCG translation cache qemu is given (`-accel tcg,tb-size=`), part of the overhead above. */
export const TCG_TB_MIB = 256;
/** Tasks (qemu's threads: vCPUs, I/O and 9p workers) one VM may have. */
export const PIDS_MAX = 512;

/** The limits of one VM's cgroup. */
export interface VmLimits {
  readonly memoryMaxBytes: number;
  /** CPU time per 100 ms period, in µs (its cpus × 100 000). */
  readonly cpuQuotaUs: number;
  readonly pidsMax: number;
  /** Its busy threads under load (vCPUs + qemu's main loop): its CPU weight, in processes. */
  readonly threads: number;
}

/** The limits for a guest of `memoryMib` and `cpus`. */
export function vmLimits(memoryMib: number, cpus: number, accel: 'tcg' | 'kvm'): VmLimits {
  return { memoryMaxBytes: (memoryMib + MEMORY_OVERHEAD_MIB[accel]) * 1024 * 1024, cpuQuotaUs: cpus * 100_000, pidsMax: PIDS_MAX, threads: cpus + 1 };
}

/** The names of VM cgroups start with it (`vm-<hex>`). */
export const VM_PREFIX = 'vm-';

/**
 * CPU weight per busy thread of a VM (its vCPUs and qemu's main loop), as a plain process
 * weighs. A VM's group sits beside the embedding process, not under a shared `corral` group:
 * under contention such a group weighs one process, and all VMs together got one process's
 * share (measured: jailed restores ~2× slower at a load of 15), where before the jail each
 * qemu thread competed on its own. A group that weighed more would starve the host's
 * other processes instead. The quota still caps each VM.
 */
const WEIGHT_PER_THREAD = { v1: 1024, v2: 100 } as const;

/** A VM's cgroup directories, once made. */
export interface VmCgroup {
  readonly version: 'v1' | 'v2';
  readonly limits: VmLimits;
  /** The `cgroup.procs` files the VM process joins before it starts. */
  readonly procsFiles: readonly string[];
  /** The directories (one for v2, one per controller for v1). */
  readonly dirs: readonly string[];
  /** The directories made for this VM (not a network policy's it joined), which are its to remove. */
  readonly own: readonly string[];
  /** Whether the kernel's OOM killer killed a task of it (read after the exit). */
  oomKilled(): boolean;
  /** Removes the directories (the VM must have exited). Idempotent. */
  remove(): Promise<void>;
}

/** Where cgroup v2 is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on hybrid hosts). */
export function cgroup2Root(): string {
  const root = cgroupMounts().v2;
  if (!root) throw new CorralError('E_SETUP_MISSING', 'network policies need cgroup v2, and no cgroup2 filesystem is mounted');
  return root;
}

interface Mounts {
  readonly v2: string | undefined;
  readonly v1: Readonly<Record<string, string>>;
}

let mounts: Mounts | undefined;

function cgroupMounts(): Mounts {
  if (mounts) return mounts;
  let v2: string | undefined;
  const v1: Record<string, string> = {};
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const sep = line.indexOf(' - ');
    if (sep < 0) continue;
    const [fstype, , superOpts = ''] = line.slice(sep + 3).split(' ');
    const mountPoint = line.split(' ')[4]!;
    if (fstype === 'cgroup2') v2 ??= mountPoint;
    if (fstype === 'cgroup') for (const opt of superOpts.split(',')) if (['memory', 'cpu', 'pids'].includes(opt)) v1[opt] = mountPoint;
  }
  return (mounts = { v2, v1 });
}

/** This process's path in each v1 hierarchy (`/proc/self/cgroup`), by controller. */
function ownV1Paths(): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of readFileSync('/proc/self/cgroup', 'utf8').split('\n')) {
    const [, controllers = '', path = ''] = line.split(':');
    for (const c of controllers.split(',')) out[c] = path;
  }
  return out;
}

const CONTROLLERS = ['memory', 'cpu', 'pids'] as const;

/** Which kind of cgroup a VM can get here, or why none. */
export function cgroupSupport(): { version: 'v1' | 'v2' } | { missing: string } {
  if (process.getuid?.() !== 0) return { missing: 'cgroup limits: corral does not run as root, so it cannot make cgroups' };
  const m = cgroupMounts();
  if (m.v2) {
    const available = readFileSync(join(m.v2, 'cgroup.controllers'), 'utf8').trim().split(/\s+/);
    if (CONTROLLERS.every((c) => available.includes(c))) return { version: 'v2' };
  }
  if (CONTROLLERS.every((c) => m.v1[c])) return { version: 'v1' };
  const have = m.v2 ? `cgroup2 at ${m.v2} has no ${CONTROLLERS.join('/')} controllers` : 'no cgroup2 mounted';
  return { missing: `cgroup limits: ${have}, and cgroup v1 has ${CONTROLLERS.filter((c) => m.v1[c]).join(', ') || 'none of them'}` };
}

/**
 * Makes the cgroup of VM `id` with `limits`. `v2Dir`: a cgroup2 directory made already for
 * this VM (the network policy's, src/guestenv/netfilter.ts), which its limits then go into
 * on a v2 host, and which it joins on a v1 host.
 */
export async function createVmCgroup(id: string, limits: VmLimits, v2Dir?: string): Promise<VmCgroup | { missing: string }> {
  const support = cgroupSupport();
  if ('missing' in support) return support;
  const made: string[] = [];
  try {
    if (support.version === 'v2') {
      const root = cgroupMounts().v2!;
      await enable(join(root, 'cgroup.subtree_control'));
      // The network policy's cgroup (v2Dir) is under `corral`: its limits need the controllers there too.
      if (v2Dir) await enable(join(root, 'corral', 'cgroup.subtree_control'));
      const dir = v2Dir ?? join(root, `corral-${id}`);
      if (!v2Dir) {
        await mkdir(dir);
        made.push(dir);
      }
      await writeFile(join(dir, 'memory.max'), String(limits.memoryMaxBytes));
      await writeFile(join(dir, 'memory.swap.max'), '0').catch(logFailure(`setting memory.swap.max of ${dir}`));
      await writeFile(join(dir, 'cpu.max'), `${limits.cpuQuotaUs} 100000`);
      await writeFile(join(dir, 'cpu.weight'), String(WEIGHT_PER_THREAD.v2 * limits.threads));
      await writeFile(join(dir, 'pids.max'), String(limits.pidsMax));
      return handle('v2', limits, [dir], made, () => eventCount(join(dir, 'memory.events'), 'oom_kill'));
    }
    const m = cgroupMounts();
    const own = ownV1Paths();
    const dirs = CONTROLLERS.map((c) => join(m.v1[c]!, own[c] ?? '/', `corral-${id}`));
    for (const dir of dirs) {
      await mkdir(dir, { recursive: true });
      made.push(dir);
    }
    const [memory, cpu, pids] = dirs as [string, string, string];
    await writeFile(join(memory, 'memory.limit_in_bytes'), String(limits.memoryMaxBytes));
    if (existsSync(join(memory, 'memory.memsw.limit_in_bytes'))) await writeFile(join(memory, 'memory.memsw.limit_in_bytes'), String(limits.memoryMaxBytes));
    await writeFile(join(cpu, 'cpu.cfs_period_us'), '100000');
    await writeFile(join(cpu, 'cpu.cfs_quota_us'), String(limits.cpuQuotaUs));
    await writeFile(join(cpu, 'cpu.shares'), String(WEIGHT_PER_THREAD.v1 * limits.threads));
    await writeFile(join(pids, 'pids.max'), String(limits.pidsMax));
    return handle('v1', limits, v2Dir ? [...dirs, v2Dir] : dirs, made, () => eventCount(join(memory, 'memory.oom_control'), 'oom_kill'));
  } catch (err) {
    await removeDirs(made);
    throw new CorralError('E_BOOT_FAILED', `could not make the VM's cgroup: ${(err as Error).message}`, { cause: err });
  }
}

function handle(version: 'v1' | 'v2', limits: VmLimits, dirs: string[], made: string[], oom: () => number): VmCgroup {
  let removed: Promise<void> | undefined;
  return {
    version,
    limits,
    dirs,
    own: made,
    procsFiles: dirs.map((d) => join(d, 'cgroup.procs')),
    oomKilled: () => oom() > 0,
    remove: () => (removed ??= removeDirs(made)),
  };
}

async function enable(subtreeControl: string): Promise<void> {
  const on = readFileSync(subtreeControl, 'utf8').trim().split(/\s+/);
  const missing = CONTROLLERS.filter((c) => !on.includes(c));
  if (missing.length) await writeFile(subtreeControl, missing.map((c) => `+${c}`).join(' '));
}

/** `name N` in a flat keyed file (memory.events, memory.oom_control); 0 when absent. */
function eventCount(file: string, name: string): number {
  const m = new RegExp(`^${name} (\\d+)$`, 'm').exec(ifMissing(() => readFileSync(file, 'utf8'), ''));
  return m ? Number(m[1]) : 0;
}

/** rmdir of emptied cgroups; the last task may take a moment to leave. */
async function removeDirs(dirs: readonly string[]): Promise<void> {
  for (const dir of dirs) {
    for (let i = 0; ; i++) {
      try {
        await rmdir(dir);
        break;
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'ENOENT') break;
        if (code !== 'EBUSY' || i === 50) throw new CorralError('E_STORE', `could not remove cgroup ${dir}: ${(err as Error).message}`, { cause: err });
        await new Promise((r) => setTimeout(r, 20));
      }
    }
  }
}

/**
 * Removes the VM cgroups whose process is gone (a host process killed before it cleaned
 * up). An empty directory younger than 30 s may be a VM about to join it: it stays.
 */
export async function sweepStaleCgroups(): Promise<void> {
  const support = cgroupSupport();
  if ('missing' in support) return;
  const m = cgroupMounts();
  const own = ownV1Paths();
  const bases = support.version === 'v2' ? [m.v2!] : CONTROLLERS.map((c) => join(m.v1[c]!, own[c] ?? '/'));
  for (const base of bases) {
    if (!existsSync(base)) continue;
    // Only the VMs' own (`corral-vm-…`); the network policies' (`corral/…`) go with their tables.
    for (const id of (await readdir(base)).filter((n) => n.startsWith(`corral-${VM_PREFIX}`))) {
      const dir = join(base, id);
      const procs = await readFile(join(dir, 'cgroup.procs'), 'utf8').catch(() => 'x');
      // Gone meanwhile (its VM's own cleanup), busy, or brand new: not this sweep's.
      const st = statSync(dir, { throwIfNoEntry: false });
      if (procs.trim() !== '' || !st || Date.now() - st.mtimeMs < 30_000) continue;
      await rmdir(dir).catch((err: unknown) => (isMissing(err) ? undefined : logFailure(`removing stale cgroup ${dir}`)(err)));
    }
  }
}
