/**
 * One sandbox's guest environment, as the sandbox worker uses it: the VM devices its
 * volumes and network need, the host-side network enforcement around the VM process, and
 * the SETUP ops that the agent applies right after boot or restore, before user code runs.
 *
 * Order in the guest: patches (once per sandbox: they live in its writable layer), scripts,
 * volume mounts, then the NIC's address and resolv.conf.
 */

import { existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { AgentClient } from '../agent/AgentClient.ts';
import { CorralError } from '../errors.ts';
import { describeOp, encodeSetup, type SetupOp } from '../agent/setupOps.ts';
import type { SandboxConfig } from '../config.ts';
import type { NetDevice, SharedDir } from '../vm/qemuArgs.ts';
import { guestDeviceKey, hasNic, type DeviceLayout } from './guestConfig.ts';
import { claimVolume, ensureVolume, releaseVolume } from './namedVolumes.ts';
import { GUEST_NET, enforcePolicy, type NetEnforcement } from './netfilter.ts';
import type { NetworkPolicyConfig } from './NetworkPolicy.ts';
import { patchOps } from './patches.ts';
import { hostDir } from './paths.ts';
import { scriptOps } from './scripts.ts';
import { shareTag, type VolumeConfig } from './volumes.ts';
import { logFailure } from '../runtime/log.ts';

/** qemu options of a VM (spread into Vm.boot's options). */
export interface GuestVmOptions {
  readonly shares?: readonly SharedDir[];
  readonly net?: NetDevice;
  readonly wrap?: readonly string[];
  readonly netCgroup?: { readonly dir: string; readonly resolvConf: string };
}

/** What a policy-less NIC (ports only, or a snapshot's NIC nobody asked for) enforces: nothing out, replies only. */
const PORTS_ONLY: NetworkPolicyConfig = { preset: 'deny-all', rules: [], dns: false };

/**
 * @example
 * const guest = await GuestEnv.prepare(config, stateDir, sandboxDir);
 * const vm = await Vm.boot({ ...shape, ...(await guest.vmOptions()) });
 * await guest.apply(vm.agent, vm.pid);
 * vm.exited.then(() => guest.release());
 */
export class GuestEnv {
  readonly #config: SandboxConfig;
  readonly #stateDir: string;
  readonly #marker: string;
  /** Shares of the config's bind/named volumes, then unused ones padding a snapshot's layout. */
  readonly #shares: SharedDir[];
  readonly #nic: boolean;
  #enforcement: Promise<NetEnforcement> | undefined;
  /** The host ports new connections may reach the VM through (its forwards), while the enforcement is up. */
  #published = new Set<number>();
  #claimed = false;

  private constructor(config: SandboxConfig, stateDir: string, sandboxDir: string, shares: SharedDir[], nic: boolean) {
    this.#config = config;
    this.#stateDir = stateDir;
    this.#marker = join(sandboxDir, 'patches.applied');
    this.#shares = shares;
    this.#nic = nic;
  }

  /**
   * Resolves volumes (named ones are made on first use; bind sources must still exist).
   * `layout`: the devices of the snapshot this sandbox starts from, which its VM must have
   * too (the config was checked to fit it: src/guestenv/guestConfig.ts snapshotGuestFields).
   */
  static async prepare(config: SandboxConfig, stateDir: string, sandboxDir: string, layout?: DeviceLayout): Promise<GuestEnv> {
    const shares: SharedDir[] = [];
    for (const v of config.volumes ?? []) {
      if (v.kind === 'tmpfs') continue;
      const path = v.kind === 'bind' ? hostDir(v.hostPath, `volume ${v.guestPath}`) : await ensureVolume(stateDir, v.name);
      shares.push({ tag: shareTag(shares.length), path, readonly: v.readonly });
    }
    if (layout && (shares.length > layout.shares || (hasNic(config) && !layout.nic))) {
      throw new CorralError('E_SNAPSHOT', `sandbox "${config.name}" asks for devices its snapshot's VM did not have (${shares.length} shares, NIC ${hasNic(config)}; snapshot: ${layout.shares}, NIC ${layout.nic})`);
    }
    if (layout && shares.length < layout.shares) {
      // Never mounted; an empty read-only directory, so a guest that mounts the tag anyway sees nothing.
      const empty = join(sandboxDir, 'unused-share');
      await mkdir(empty, { recursive: true, mode: 0o555 });
      while (shares.length < layout.shares) shares.push({ tag: shareTag(shares.length), path: empty, readonly: true });
    }
    return new GuestEnv(config, stateDir, sandboxDir, shares, layout?.nic ?? hasNic(config));
  }

  /** The 9p shares and NIC this sandbox's VM has (what a snapshot of it records). */
  get layout(): DeviceLayout {
    return { shares: this.#shares.length, nic: this.#nic };
  }

  /** The device-layout input of the template key ('' when there are no extra devices). */
  get deviceKey(): string {
    return guestDeviceKey(this.#config);
  }

  /** Whether anything needs a SETUP frame or extra devices. */
  get isEmpty(): boolean {
    const c = this.#config;
    return !c.volumes?.length && !c.scripts && !c.patches?.length && !hasNic(c);
  }

  /**
   * Devices and process wrapper of this sandbox's VM. Sets up the network enforcement the
   * first time (a cold boot after a failed restore reuses it).
   */
  async vmOptions(): Promise<GuestVmOptions> {
    const opts: { shares?: readonly SharedDir[]; net?: NetDevice; wrap?: readonly string[]; netCgroup?: { dir: string; resolvConf: string } } = {};
    if (this.#shares.length) opts.shares = this.#shares;
    if (this.#nic) {
      const policy = hasNic(this.#config) ? (this.#config.network ?? PORTS_ONLY) : PORTS_ONLY;
      const ports = this.#config.ports ?? [];
      if (!this.#enforcement) {
        this.#published = new Set(ports.map((p) => p.hostPort));
        this.#enforcement = enforcePolicy(this.#config.name, policy, [...this.#published]);
      }
      const enforcement = await this.#enforcement;
      // qemu would only say "could not set up host forwarding" and exit (seen as "QMP
      // connection closed"): a host port that is taken is named first.
      for (const p of ports) await assertPortFree(p.hostPort);
      opts.net = { hostForwards: ports };
      opts.wrap = enforcement.wrap;
      opts.netCgroup = { dir: enforcement.cgroupDir, resolvConf: enforcement.resolvConf };
    }
    return opts;
  }

  /**
   * The same device layout for a template VM: shares of an empty directory, a NIC with no
   * forwards. The template never mounts its shares (a mounted 9p share would also block its
   * save), and it is discarded right after the save. Its NIC leads nowhere (jailed, qemu gets
   * an empty network namespace; unjailed, `unshare --net` makes one) unless
   * {@link templateNetwork} gives it the sandbox's policy.
   */
  templateVmOptions(emptyDir: string): GuestVmOptions {
    const opts: { shares?: readonly SharedDir[]; net?: NetDevice; wrap?: readonly string[] } = {};
    if (this.#shares.length) opts.shares = this.#shares.map((s) => ({ ...s, path: emptyDir, readonly: true }));
    if (this.#nic) {
      opts.net = { hostForwards: [], isolated: true };
      opts.wrap = ['unshare', '--net', '--'];
    }
    return opts;
  }

  /**
   * The network of a template VM where a start command runs: the sandbox's own policy (a
   * table and cgroup of the template VM's own, no published ports), as the sandbox would
   * have it, so that the command can fetch what the sandbox could (E2B's start commands can).
   * The policy is then part of the template's key. Undefined without a NIC: the template's
   * layout has none. {@link applyNetwork} configures the guest's side once it runs; release
   * once the template VM has exited.
   */
  async templateNetwork(): Promise<{ readonly options: GuestVmOptions; release(): Promise<void> } | undefined> {
    if (!this.#nic) return undefined;
    const policy = hasNic(this.#config) ? (this.#config.network ?? PORTS_ONLY) : PORTS_ONLY;
    const enforcement = await enforcePolicy(`${this.#config.name}-template`, policy, []);
    return {
      options: { net: { hostForwards: [] }, wrap: enforcement.wrap, netCgroup: { dir: enforcement.cgroupDir, resolvConf: enforcement.resolvConf } },
      release: () => enforcement.release(),
    };
  }

  /** The guest's side of the NIC (address, route, resolver): what {@link apply} does of it alone. */
  async applyNetwork(agent: AgentClient): Promise<void> {
    const ops = this.#netOps();
    for (const frame of encodeSetup(ops)) {
      await agent.setup(frame.payload, (i) => describeOp(ops[frame.sources[i] ?? 0]!), { timeoutMs: this.#config.bootTimeoutMs });
    }
  }

  /** The setup ops that configure the NIC in the guest (none without one). */
  #netOps(): SetupOp[] {
    const c = this.#config;
    if (!hasNic(c)) return [];
    const ops: SetupOp[] = [{ op: 'net', ifname: GUEST_NET.ifname, address: GUEST_NET.address, prefix: GUEST_NET.prefix, gateway: GUEST_NET.gateway }];
    if (c.network?.dns) {
      ops.push({ op: 'remove', path: '/etc/resolv.conf' }, { op: 'write', path: '/etc/resolv.conf', mode: 0o644, data: Buffer.from(`nameserver ${GUEST_NET.dns}\n`) });
    }
    return ops;
  }

  /**
   * Applies patches (first boot only), scripts, mounts and the NIC config in the guest.
   * `restoredFrom`: the config of the snapshot this VM was restored from. Its patches and
   * tmpfs mounts are in the restored disk and RAM already; its 9p volumes were unmounted for
   * the save, so this sandbox's are mounted.
   */
  async apply(agent: AgentClient, vmPid: number, options: { restoredFrom?: SandboxConfig } = {}): Promise<void> {
    const c = this.#config;
    const ops: SetupOp[] = [];
    const restored = options.restoredFrom;
    const patching = (c.patches?.length ?? 0) > 0 && !existsSync(this.#marker);
    if (patching && !restored) ops.push(...patchOps(c.patches!));
    ops.push(...scriptOps(c.scripts ?? {}));
    const mountedTmpfs = new Set((restored?.volumes ?? []).filter((v) => v.kind === 'tmpfs').map((v) => v.guestPath));
    for (const v of c.volumes ?? []) if (v.kind === 'tmpfs' && !mountedTmpfs.has(v.guestPath)) ops.push({ op: 'mountTmpfs', path: v.guestPath, sizeMib: v.sizeMib });
    ops.push(...this.#mountOps());
    ops.push(...this.#netOps());
    if (ops.length === 0) return;
    // A guest that answers HELLO but never a SETUP must not hang the create: the boot timeout
    // bounds it (and fails the agent connection, so the VM goes).
    const timeoutMs = this.#config.bootTimeoutMs;
    for (const frame of encodeSetup(ops)) {
      await agent.setup(frame.payload, (i) => describeOp(ops[frame.sources[i] ?? 0]!), { timeoutMs });
    }
    if (patching) await writeFile(this.#marker, String(Date.now()));
    for (const v of c.volumes ?? []) if (v.kind === 'named') await claimVolume(this.#stateDir, v.name, c.name, vmPid);
    this.#claimed = true;
  }

  /**
   * Unmounts the bind/named volumes in the guest so that qemu can save the VM (it refuses
   * to migrate while a 9p export is mounted); resolves to the function that mounts them
   * again. A volume still in use in the guest (open files, a working directory there) fails
   * with E_SNAPSHOT naming it, and the ones unmounted before it are mounted again. A guest
   * that does not answer an unmount (or the remount) within the config's `stopTimeoutMs`
   * fails it with E_TIMEOUT and fails the agent connection (so the sandbox stops: see
   * AgentClient.setup).
   *
   * @example
   * const remount = await guest.unmountShares(vm.agent);
   * try { await vm.saveTo(file, { ignoreShared: false }); } finally { await vm.resume(); await remount(); }
   */
  async unmountShares(agent: AgentClient): Promise<() => Promise<void>> {
    const mounts = this.#mountOps();
    const done: SetupOp[] = [];
    const timeoutMs = this.#config.stopTimeoutMs;
    const remount = async () => {
      // The VM runs on after the save: a guest that never answers the remount must not hang it either.
      for (const frame of encodeSetup(done)) await agent.setup(frame.payload, (i) => describeOp(done[frame.sources[i] ?? 0]!), { timeoutMs });
    };
    for (const m of [...mounts].reverse()) {
      try {
        for (const frame of encodeSetup([{ op: 'umount', path: m.path }])) {
          await agent.setup(frame.payload, () => `unmount of volume ${m.path}`, { timeoutMs });
        }
      } catch (err) {
        // No answer: the agent connection is failed (the sandbox stops), nothing to remount.
        if (err instanceof CorralError && err.code === 'E_TIMEOUT') {
          throw new CorralError('E_TIMEOUT', `volume ${m.path} was not unmounted for the save: ${err.message}`, { cause: err, details: { volume: m.path } });
        }
        done.reverse();
        await remount().catch(logFailure(`remounting the volumes of sandbox "${this.#config.name}" after a failed unmount`));
        const errno = (err as CorralError).details?.errno;
        const why = errno === 16 ? 'a process in the guest has files open there or its working directory inside (EBUSY)' : (err as Error).message;
        throw new CorralError('E_SNAPSHOT', `volume ${m.path} could not be unmounted for the save: ${why}`, { cause: err, details: { volume: m.path } });
      }
      done.push(m);
    }
    done.reverse();
    return remount;
  }

  /** The 9p mounts of the config's bind/named volumes (padding shares are never mounted). */
  #mountOps(): (SetupOp & { op: 'mount9p' })[] {
    const shared = (this.#config.volumes ?? []).filter((v): v is Exclude<VolumeConfig, { kind: 'tmpfs' }> => v.kind !== 'tmpfs');
    return shared.map((v, i) => ({ op: 'mount9p', tag: this.#shares[i]!.tag, path: v.guestPath, readonly: v.readonly }));
  }

  /** Whether host loopback's new connections may reach the VM's socket on `hostPort`. */
  isPublished(hostPort: number): boolean {
    return this.#published.has(hostPort);
  }

  /** Lets host loopback's new connections reach a port qemu forwards (or no longer). */
  async setPublished(hostPort: number, published: boolean): Promise<void> {
    const enforcement = await this.#enforcement;
    if (!enforcement || this.#published.has(hostPort) === published) return;
    await enforcement.setPublished(hostPort, published);
    if (published) this.#published.add(hostPort);
    else this.#published.delete(hostPort);
  }

  /** Bytes the VM's NIC traffic took on the host (its nftables counters), or null without a NIC. */
  async networkBytes(): Promise<{ rxBytes: number; txBytes: number } | null> {
    const enforcement = await this.#enforcement;
    return enforcement ? enforcement.trafficBytes() : null;
  }

  /** Drops the network enforcement and the named-volume claims. Idempotent. */
  async release(): Promise<void> {
    const enforcement = this.#enforcement;
    this.#enforcement = undefined;
    if (enforcement) await (await enforcement.catch(() => undefined))?.release();
    if (this.#claimed) {
      this.#claimed = false;
      for (const v of this.#config.volumes ?? []) if (v.kind === 'named') await releaseVolume(this.#stateDir, v.name, this.#config.name).catch(logFailure(`releasing volume ${v.name}`));
    }
  }
}

/** E_INVALID_OPTION naming `port.hostPort` when 127.0.0.1:`port` cannot be listened on now. */
async function assertPortFree(port: number): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const probe = createServer();
    probe.once('error', (err: NodeJS.ErrnoException) =>
      reject(new CorralError('E_INVALID_OPTION', `invalid option port.hostPort: 127.0.0.1:${port} cannot be published (${err.code ?? err.message}: another process or sandbox holds it)`, { details: { option: 'port.hostPort', port } })),
    );
    probe.listen(port, '127.0.0.1', () => probe.close(() => resolve()));
  });
}
