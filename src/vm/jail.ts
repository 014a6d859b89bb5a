/**
 * The jail each qemu starts in (native/jail/jail.c does the work; this decides what goes in).
 *
 * A jailed qemu has: its own mount namespace whose root holds only what that VM needs, at
 * the same paths as on the host (kernel, initramfs, layer images read-only; its upper disk
 * or disk image, its socket dir, its template RAM file (read-only: native/jail/ropen.c makes
 * qemu open it so), its volumes; qemu's own /usr
 * read-only; /dev/null and /dev/urandom, /dev/kvm where used; no /sys, and /proc only
 * with volumes, holding its own process alone); its own
 * PID, IPC, UTS and cgroup namespaces; its own network namespace, with nothing in it but a
 * loopback device, or with a NIC a bridge between qemu's tap and the tap of a slirp4netns
 * outside it (started by the launcher, sandboxed by itself, in the network policy's cgroup:
 * its sockets are on the host, policed by the nftables table of src/guestenv/netfilter.ts;
 * the published ports are its host forwards, src/vm/slirpApi.ts);
 * an unprivileged uid/gid of its own from a reserved range, no capabilities, `no_new_privs`;
 * rlimits; a cgroup with memory, CPU and task limits (src/vm/cgroups.ts). The files it may
 * use are idmapped mounts that show their host owner as the VM's uid: nothing on the host is
 * chowned, and what qemu creates in a volume is owned by the volume's owner.
 *
 * What the host cannot do is said, never skipped silently: {@link JailStatus.missing} (in
 * `sandbox.info().jail` and the runtime log) names each wall that is not there.
 * `CORRAL_JAIL=off` turns the jail off (the tests' fake qemu, a Node script, runs without).
 */

import { spawn, spawnSync } from 'node:child_process';
import type { Readable } from 'node:stream';
import { randomBytes, randomInt } from 'node:crypto';
import { existsSync, lstatSync, mkdirSync, readlinkSync, statSync, writeFileSync } from 'node:fs';
import { readdir, readFile, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CorralError, InvalidOptionError } from '../errors.ts';
import { runtimeVar } from '../runtime/actorEnv.ts';
import { loadArtifacts } from '../runtime/artifacts.ts';
import { logFailure } from '../runtime/log.ts';
import { processAlive } from '../runtime/process.ts';
import { isMissing } from '../runtime/errno.ts';
import { createVmCgroup, vmLimits, VM_PREFIX, type VmCgroup, type VmLimits } from './cgroups.ts';

/** The reserved uid/gid range: each jailed VM gets one of these while it runs. */
export const JAIL_UID_BASE = 1_000_000_000;
export const JAIL_UID_COUNT = 65_536;
/** Where the uids in use are claimed (one file per uid, holding the claiming process's pid). */
const UID_CLAIMS = '/run/corral/uids';
/** Open files a jailed qemu may have (disks, sockets, eventfds, files a guest opens over 9p). */
export const JAIL_NOFILE = 4096;
/** The largest file a jailed qemu may write: its disks, and one file in a volume. */
export const JAIL_FSIZE_BYTES = 64 * 1024 ** 3;

/** What a VM's jail is made of, as `sandbox.info().jail` reports it. */
export interface JailStatus {
  /** Whether qemu runs through the jail at all. */
  readonly jailed: boolean;
  /** The uid (= gid) qemu runs as; null when it runs as the embedding process's user. */
  readonly uid: number | null;
  /**
   * Whether it has a network namespace of its own. False only for a NIC on a host without
   * slirp4netns (then qemu's own slirp opens its sockets in the host's namespace).
   */
  readonly netns: boolean;
  /** `v1`/`v2`: where its limits are; null: none. */
  readonly cgroup: 'v1' | 'v2' | null;
  readonly limits: VmLimits | null;
  /** Each wall the host could not put up, and why. Empty when all are there. */
  readonly missing: readonly string[];
}

/** One path the VM may use, at the same path inside the jail. */
export interface JailPath {
  readonly path: string;
  readonly writable: boolean;
}

/** What {@link prepareJail} needs. */
export interface JailInput {
  readonly memoryMib: number;
  readonly cpus: number;
  readonly accel: 'tcg' | 'kvm';
  readonly paths: readonly JailPath[];
  /**
   * A template's RAM file that qemu maps privately (a restored clone): bound read-only, with
   * the shim that makes qemu 7.2 open it read-only preloaded (it opens it read-write otherwise).
   */
  readonly privateRamFile?: string | undefined;
  /**
   * The VM has a NIC: slirp4netns serves it from outside qemu's network namespace (its API
   * socket at `nicApiSocket`), or where it cannot, qemu stays in the host's namespace.
   */
  readonly nic: boolean;
  /** Where slirp4netns listens for its API (outside the jail: qemu must not reach it). */
  readonly nicApiSocket?: string | undefined;
  /** A cgroup2 dir made for this VM already (its network policy's): joined, and on v2 its limits go there. */
  readonly netCgroupDir?: string | undefined;
  /** The resolv.conf slirp forwards DNS to (shown at /etc/resolv.conf to the slirp that reads it). */
  readonly resolvConf?: string | undefined;
  /** Give it a /proc (of its own PID namespace, pids only): qemu's 9p server needs /proc/self/fd. */
  readonly proc?: boolean;
  /** Files or dirs of files the launcher removes once qemu is gone (its run dir), should this thread be gone by then. */
  readonly cleanup?: readonly string[];
  /** An fd of the spawn (the incoming migration stream) that qemu keeps. */
  readonly keepFd?: number | undefined;
}

/** A prepared jail: the launcher's argv, and its undoing. */
export interface Jail {
  readonly status: JailStatus;
  /** The launcher and its options, to put before the qemu argv (empty when not jailed). */
  readonly argv: readonly string[];
  /** The fd on which the launcher reports qemu's pid (3), or undefined when not jailed. */
  readonly pidFd: number | undefined;
  /** The NIC's tap, as qemu's fd (`-netdev tap,fd=`), and slirp4netns's API socket: when slirp4netns serves it. */
  readonly nic?: { readonly tapFd: number; readonly apiSocket: string } | undefined;
  /** Whether its cgroup's OOM killer killed qemu (read before {@link release}). */
  oomKilled(): boolean;
  /** Removes the cgroup and gives the uid back. Idempotent; call once qemu has exited. */
  release(): Promise<void>;
}

type Support = { launcher: string; ramShim: string | undefined; missing: string[] } | { launcher: undefined; missing: string[] };
let support: Support | undefined;

/**
 * Whether the jail can run here, probed once per process: the launcher built by setup, root,
 * and a trial jail (namespaces, idmapped mounts, a uid switch) around `true`.
 */
export function jailSupport(): Support {
  if (support) return support;
  let launcher: string | undefined;
  let ramShim: string | undefined;
  try {
    ({ jail: launcher, jailRamShim: ramShim } = loadArtifacts() as { jail?: string; jailRamShim?: string });
  } catch (err) {
    return (support = { launcher: undefined, missing: [`jail: ${(err as Error).message}`] });
  }
  if (!launcher || !existsSync(launcher)) return (support = { launcher: undefined, missing: ['jail: the VM launcher is not built (corral-jail): run scripts/setup.sh'] });
  if (process.getuid?.() !== 0) return (support = { launcher: undefined, missing: ['jail: corral does not run as root, so qemu cannot be given a uid and namespaces of its own'] });
  const trial = spawnSync(launcher, ['--uid', String(JAIL_UID_BASE), '--gid', String(JAIL_UID_BASE), '--netns', ...systemArgs(), '--ro-bind', launcher, '--', '/usr/bin/true'], { encoding: 'utf8', timeout: 10_000 });
  if (trial.status !== 0) {
    const why = trial.stderr.trim() || trial.error?.message || `exit ${trial.status ?? trial.signal}`;
    return (support = { launcher: undefined, missing: [`jail: a trial jail failed on this host (${why})`] });
  }
  return (support = { launcher, ramShim: ramShim && existsSync(ramShim) ? ramShim : undefined, missing: [] });
}

/** The NIC's tap in qemu: past the pid fd (3) and the migration stream (4). */
const TAP_FD = 5;

let nicSupport: Promise<{ slirp4netns: string } | { missing: string }> | undefined;

/**
 * Whether a jailed VM's NIC can live in its own network namespace, probed once per process:
 * slirp4netns installed (scripts/setup-guest-env.sh), and a trial jail with a NIC (a bridge,
 * two taps, slirp4netns attached) around a `sleep`, ended once the launcher reports it ready.
 */
function nicSupportOf(launcher: string): Promise<{ slirp4netns: string } | { missing: string }> {
  return (nicSupport ??= (async () => {
    const slirp4netns = ['/usr/bin/slirp4netns', '/usr/local/bin/slirp4netns'].find((p) => existsSync(p));
    const fallback = "a VM with a NIC runs in the host's network namespace (its sockets policed by nftables)";
    if (!slirp4netns) return { missing: `network namespace: slirp4netns is not installed (scripts/setup-guest-env.sh): ${fallback}` };
    const api = join(tmpdir(), `corral-niccheck-${process.pid}-${randomBytes(4).toString('hex')}.sock`);
    const trial = spawn(launcher, ['--uid', String(JAIL_UID_BASE), '--gid', String(JAIL_UID_BASE), '--pid-fd', '3', '--nic', String(TAP_FD), '--slirp4netns', slirp4netns, '--slirp-api', api, '--cleanup', api, ...systemArgs(), '--', '/usr/bin/sleep', '30'], {
      stdio: ['ignore', 'ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    trial.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    let reported = '';
    (trial.stdio[3] as Readable).setEncoding('utf8').on('data', (d: string) => (reported += d));
    const ended = new Promise<void>((resolve) => trial.once('close', () => resolve()));
    // The pid, then "net" once slirp4netns holds its tap; the fd closes after them, or at a failure.
    await new Promise<void>((resolve) => (trial.stdio[3] as Readable).once('close', resolve));
    const ok = /^\d+\nnet\n$/.test(reported);
    // SIGKILL: `sleep` is PID 1 of its namespace, deaf to a SIGTERM it has no handler for;
    // the launcher's death kills it, and slirp4netns with it.
    trial.kill('SIGKILL');
    await ended;
    await unlink(api).catch((err: unknown) => (isMissing(err) ? undefined : logFailure(`removing ${api}`)(err)));
    if (ok) return { slirp4netns };
    const why = stderr.split('\n').filter((l) => l.startsWith('corral-jail')).join('; ') || `exit ${trial.exitCode ?? trial.signalCode}`;
    return { missing: `network namespace: a trial VM network failed on this host (${why}): ${fallback}` };
  })());
}

/** qemu's own files: /usr read-only, the merged-/usr links, the loader cache, a few devices. */
function systemArgs(accel?: 'tcg' | 'kvm'): string[] {
  const args = ['--sys', '/usr'];
  for (const top of ['/bin', '/sbin', '/lib', '/lib64']) {
    const st = lstatSync(top, { throwIfNoEntry: false });
    if (st?.isSymbolicLink()) args.push('--symlink', readlinkSync(top), top);
    else if (st?.isDirectory()) args.push('--sys', top);
  }
  if (existsSync('/etc/ld.so.cache')) args.push('--sys', '/etc/ld.so.cache');
  args.push('--dev', '/dev/null', '--dev', '/dev/urandom');
  if (accel === 'kvm') args.push('--dev', '/dev/kvm');
  return args;
}

/**
 * How a jailed qemu may open /dev/kvm: through the device's group (Debian: `kvm`, 0660), given
 * to it as its one supplementary group. A device only root may open cannot be used jailed.
 */
function kvmAccess(): { gid: number } | { missing: string } | undefined {
  const st = statSync('/dev/kvm', { throwIfNoEntry: false });
  if (!st) return undefined; // qemu says so itself
  if ((st.mode & 0o006) === 0o006) return undefined;
  if ((st.mode & 0o060) === 0o060) return { gid: st.gid };
  return { missing: `KVM: /dev/kvm is mode ${(st.mode & 0o777).toString(8)} (root only): the jailed qemu's uid cannot open it; give it a group with read-write access (Debian's udev rule: group kvm, 0660), or use TCG` };
}

/** `CORRAL_JAIL`: `auto` (default: every wall the host allows) or `off`. */
function jailMode(): 'auto' | 'off' {
  const v = runtimeVar('CORRAL_JAIL') || 'auto';
  if (v !== 'auto' && v !== 'off') throw new InvalidOptionError('CORRAL_JAIL', 'auto or off', v);
  return v;
}

/** Claims a free uid of the reserved range for this process. */
async function claimUid(): Promise<number> {
  mkdirSync(UID_CLAIMS, { recursive: true, mode: 0o700 });
  for (let attempt = 0; attempt < 64; attempt++) {
    const uid = JAIL_UID_BASE + randomInt(1, JAIL_UID_COUNT);
    const file = join(UID_CLAIMS, String(uid));
    try {
      await writeFile(file, String(process.pid), { flag: 'wx' });
      return uid;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw new CorralError('E_BOOT_FAILED', `could not claim a uid for the VM: ${(err as Error).message}`, { cause: err });
      // A claim whose process is gone is stale: free it for a later attempt.
      const owner = Number(await readFile(file, 'utf8').catch(() => '0'));
      if (owner && !processAlive(owner)) await unlink(file).catch(logFailure(`removing stale uid claim ${file}`));
    }
  }
  throw new CorralError('E_NO_CAPACITY', `no free uid in the jail's range ${JAIL_UID_BASE}…${JAIL_UID_BASE + JAIL_UID_COUNT - 1}`);
}

/**
 * Removes the uid claims of processes that are gone (the launcher removes its VM's claim
 * once qemu exits; only a launcher killed outright leaves one). Called when a supervisor starts.
 */
export async function sweepStaleUidClaims(): Promise<void> {
  const names = await readdir(UID_CLAIMS).catch((err: unknown) => (isMissing(err) ? [] : Promise.reject(err)));
  for (const n of names) {
    const file = join(UID_CLAIMS, n);
    const owner = Number(await readFile(file, 'utf8').catch(() => '0'));
    if (owner && !processAlive(owner)) await unlink(file).catch((err: unknown) => (isMissing(err) ? undefined : logFailure(`removing stale uid claim ${file}`)(err)));
  }
}

/**
 * Prepares the jail of one VM: claims its uid, makes its cgroup. When the host cannot jail,
 * or `CORRAL_JAIL=off`, returns an empty jail whose status says what is missing.
 */
export async function prepareJail(input: JailInput): Promise<Jail> {
  const s = jailMode() === 'off' ? { launcher: undefined, missing: ['jail: turned off (CORRAL_JAIL=off)'] } : jailSupport();
  const limits = vmLimits(input.memoryMib, input.cpus, input.accel);
  if (!s.launcher) {
    return {
      status: { jailed: false, uid: null, netns: false, cgroup: null, limits: null, missing: s.missing },
      argv: [],
      nic: undefined,
      pidFd: undefined,
      oomKilled: () => false,
      release: () => Promise.resolve(),
    };
  }
  const missing: string[] = [];
  // Said of the VMs it concerns: the clones of a template.
  if (input.privateRamFile && !s.ramShim) missing.push("jail: the RAM file shim is not built (corral-ropen.so): this restored qemu holds its template's RAM file writable; run scripts/setup.sh");
  const nicHost = input.nic ? await nicSupportOf(s.launcher) : undefined;
  if (nicHost && 'missing' in nicHost) missing.push(nicHost.missing);
  const nic = nicHost && 'slirp4netns' in nicHost && input.nicApiSocket ? { tapFd: TAP_FD, apiSocket: input.nicApiSocket, slirp4netns: nicHost.slirp4netns } : undefined;
  const kvmGroup = input.accel === 'kvm' ? kvmAccess() : undefined;
  if (kvmGroup && 'missing' in kvmGroup) missing.push(kvmGroup.missing);
  const uid = await claimUid();
  const claim = join(UID_CLAIMS, String(uid));
  // The launcher removes it too, once qemu is gone (also when this thread died first).
  const releaseUid = () => unlink(claim).catch((err: unknown) => (isMissing(err) ? undefined : logFailure(`releasing uid claim ${uid}`)(err)));
  let cgroup: VmCgroup | undefined;
  try {
    const made = await createVmCgroup(`${VM_PREFIX}${randomBytes(6).toString('hex')}`, limits, input.netCgroupDir);
    if ('missing' in made) missing.push(made.missing);
    else cgroup = made;
  } catch (err) {
    await releaseUid();
    throw err;
  }
  const procs = cgroup?.procsFiles ?? (input.netCgroupDir ? [join(input.netCgroupDir, 'cgroup.procs')] : []);
  // Parents before children: a bind inside another must be mounted after it, or it is hidden.
  const ram = input.privateRamFile;
  const paths = [...new Map([...input.paths, ...(ram ? [{ path: ram, writable: !s.ramShim }] : [])].map((p) => [p.path, p])).values()].sort((a, b) => a.path.split('/').length - b.path.split('/').length);
  const argv = [
    s.launcher,
    '--uid', String(uid), '--gid', String(uid),
    '--pid-fd', '3',
    ...(kvmGroup && 'gid' in kvmGroup ? ['--group', String(kvmGroup.gid)] : []),
    '--nofile', String(JAIL_NOFILE), '--fsize', String(JAIL_FSIZE_BYTES),
    ...(nic
      ? ['--nic', String(nic.tapFd), '--slirp4netns', nic.slirp4netns, '--slirp-api', nic.apiSocket, ...(input.resolvConf && input.resolvConf !== '/etc/resolv.conf' ? ['--slirp-resolv', input.resolvConf] : [])]
      : input.nic
        ? []
        : ['--netns']),
    ...(input.proc ? ['--proc'] : []),
    ...procs.flatMap((f) => ['--cgroup', f]),
    ...systemArgs(input.accel),
    ...paths.flatMap((p) => [p.writable ? '--bind' : '--ro-bind', p.path]),
    ...(input.nic && !nic && input.resolvConf ? ['--file-at', input.resolvConf, '/etc/resolv.conf'] : []),
    ...(input.keepFd !== undefined ? ['--keep-fd', String(input.keepFd)] : []),
    // The shim as a system file (its own mount is not noexec), root's and read-only as qemu's libraries are.
    ...(ram && s.ramShim ? ['--sys', s.ramShim, '--setenv', `LD_PRELOAD=${s.ramShim}`, '--setenv', `CORRAL_RO_RAM=${ram}`] : []),
    ...[claim, ...(input.cleanup ?? []), ...(nic ? [nic.apiSocket] : [])].flatMap((p) => ['--cleanup', p]),
    // Removed by the launcher too, should this thread be gone when qemu exits.
    ...(cgroup?.own ?? []).flatMap((d) => ['--cleanup-cgroup', d]),
    '--',
  ];
  let oom = false;
  let released: Promise<void> | undefined;
  return {
    status: { jailed: true, uid, netns: !input.nic || nic !== undefined, cgroup: cgroup?.version ?? null, limits: cgroup ? limits : null, missing },
    argv,
    pidFd: 3,
    nic: nic && { tapFd: nic.tapFd, apiSocket: nic.apiSocket },
    oomKilled: () => oom,
    release: () =>
      (released ??= (async () => {
        if (cgroup) {
          oom = cgroup.oomKilled();
          await cgroup.remove().catch(logFailure('removing the VM cgroup'));
        }
        await releaseUid();
      })()),
  };
}

/** Makes an empty file for qemu to fill (a template's RAM file), so that it can be bound into the jail. */
export function touchFile(path: string): void {
  if (!existsSync(path)) writeFileSync(path, '', { mode: 0o600 });
}
