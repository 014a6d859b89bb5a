/**
 * One sandbox's guest environment, as the sandbox worker uses it: the VM devices its
 * volumes and network need, the host-side network enforcement around the VM process, and
 * the SETUP ops that the agent applies right after boot or restore, before user code runs.
 *
 * Order in the guest: patches (once per sandbox: they live in its writable layer), scripts,
 * volume mounts, then the NIC's address and resolv.conf.
 */

import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { AgentClient } from '../agent/AgentClient.ts';
import { describeOp, encodeSetup, type SetupOp } from '../agent/setupOps.ts';
import type { SandboxConfig } from '../config.ts';
import type { NetDevice, SharedDir } from '../vm/qemuArgs.ts';
import { guestDeviceKey, hasNic } from './guestConfig.ts';
import { claimVolume, ensureVolume, releaseVolume } from './namedVolumes.ts';
import { GUEST_NET, enforcePolicy, type NetEnforcement } from './netfilter.ts';
import type { NetworkPolicyConfig } from './NetworkPolicy.ts';
import { patchOps } from './patches.ts';
import { hostDir } from './paths.ts';
import { scriptOps } from './scripts.ts';
import { shareTag } from './volumes.ts';

/** qemu options of a VM (spread into Vm.boot's options). */
export interface GuestVmOptions {
  readonly shares?: readonly SharedDir[];
  readonly net?: NetDevice;
  readonly wrap?: readonly string[];
}

/** What a policy-less NIC (ports only) enforces: nothing out, replies only. */
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
  readonly #shares: SharedDir[];
  #enforcement: Promise<NetEnforcement> | undefined;
  #claimed = false;

  private constructor(config: SandboxConfig, stateDir: string, sandboxDir: string, shares: SharedDir[]) {
    this.#config = config;
    this.#stateDir = stateDir;
    this.#marker = join(sandboxDir, 'patches.applied');
    this.#shares = shares;
  }

  /** Resolves volumes (named ones are made on first use; bind sources must still exist). */
  static async prepare(config: SandboxConfig, stateDir: string, sandboxDir: string): Promise<GuestEnv> {
    const shares: SharedDir[] = [];
    for (const v of config.volumes ?? []) {
      if (v.kind === 'tmpfs') continue;
      const path = v.kind === 'bind' ? hostDir(v.hostPath, `volume ${v.guestPath}`) : await ensureVolume(stateDir, v.name);
      shares.push({ tag: shareTag(shares.length), path, readonly: v.readonly });
    }
    return new GuestEnv(config, stateDir, sandboxDir, shares);
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
    const opts: { shares?: readonly SharedDir[]; net?: NetDevice; wrap?: readonly string[] } = {};
    if (this.#shares.length) opts.shares = this.#shares;
    if (hasNic(this.#config)) {
      this.#enforcement ??= enforcePolicy(this.#config.name, this.#config.network ?? PORTS_ONLY);
      const enforcement = await this.#enforcement;
      opts.net = { hostForwards: this.#config.ports ?? [] };
      opts.wrap = enforcement.wrap;
    }
    return opts;
  }

  /**
   * The same device layout for a template VM: shares of an empty directory, a NIC with no
   * forwards. The template never mounts or configures them (a mounted 9p share would also
   * block its save), and it is discarded right after the save.
   */
  templateVmOptions(emptyDir: string): GuestVmOptions {
    const opts: { shares?: readonly SharedDir[]; net?: NetDevice } = {};
    if (this.#shares.length) opts.shares = this.#shares.map((s) => ({ ...s, path: emptyDir, readonly: true }));
    if (hasNic(this.#config)) opts.net = { hostForwards: [] };
    return opts;
  }

  /** Applies patches (first boot only), scripts, mounts and the NIC config in the guest. */
  async apply(agent: AgentClient, vmPid: number): Promise<void> {
    const c = this.#config;
    const ops: SetupOp[] = [];
    const patching = (c.patches?.length ?? 0) > 0 && !existsSync(this.#marker);
    if (patching) ops.push(...patchOps(c.patches!));
    ops.push(...scriptOps(c.scripts ?? {}));
    let share = 0;
    for (const v of c.volumes ?? []) {
      if (v.kind === 'tmpfs') ops.push({ op: 'mountTmpfs', path: v.guestPath, sizeMib: v.sizeMib });
      else ops.push({ op: 'mount9p', tag: this.#shares[share++]!.tag, path: v.guestPath, readonly: v.readonly });
    }
    if (hasNic(c)) {
      ops.push({ op: 'net', ifname: GUEST_NET.ifname, address: GUEST_NET.address, prefix: GUEST_NET.prefix, gateway: GUEST_NET.gateway });
      if (c.network?.dns) {
        ops.push({ op: 'remove', path: '/etc/resolv.conf' }, { op: 'write', path: '/etc/resolv.conf', mode: 0o644, data: Buffer.from(`nameserver ${GUEST_NET.dns}\n`) });
      }
    }
    if (ops.length === 0) return;
    for (const frame of encodeSetup(ops)) {
      await agent.setup(frame.payload, (i) => describeOp(ops[frame.sources[i] ?? 0]!));
    }
    if (patching) await writeFile(this.#marker, String(Date.now()));
    for (const v of c.volumes ?? []) if (v.kind === 'named') await claimVolume(this.#stateDir, v.name, c.name, vmPid);
    this.#claimed = true;
  }

  /** Drops the network enforcement and the named-volume claims. Idempotent. */
  async release(): Promise<void> {
    const enforcement = this.#enforcement;
    this.#enforcement = undefined;
    if (enforcement) await (await enforcement.catch(() => undefined))?.release();
    if (this.#claimed) {
      this.#claimed = false;
      for (const v of this.#config.volumes ?? []) if (v.kind === 'named') await releaseVolume(this.#stateDir, v.name, this.#config.name).catch(() => {});
    }
  }
}
