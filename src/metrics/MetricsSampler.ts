/**
 * Samples a sandbox's resource use on the host side: CPU % and memory of its qemu process
 * (from /proc), disk bytes from qemu's block statistics (QMP `query-blockstats`), network
 * bytes from the counters of the VM's nftables table (src/guestenv/netfilter.ts). The guest
 * has no say in any of these numbers.
 */

import type { ProcCpu } from './procStats.ts';
import { cpuPercent, readProcCpu, readProcMemory } from './procStats.ts';
import { CorralError } from '../errors.ts';

/** One sample of a sandbox's resource use. */
export interface SandboxMetrics {
  /** When it was taken (ms since the epoch). */
  readonly ts: number;
  /** The qemu process sampled. */
  readonly pid: number;
  /** CPU use of the VM process since the previous sample, percent of one core. */
  readonly cpuPercent: number;
  /** CPU time the VM process used so far (user + system), seconds. */
  readonly cpuSeconds: number;
  readonly memory: {
    /** Resident set of the qemu process. */
    readonly rssBytes: number;
    /** Proportional set: pages shared with a template or other clones count in part. */
    readonly pssBytes: number;
    /** The guest's RAM size, as configured. */
    readonly guestBytes: number;
  };
  /** Bytes and operations on the VM's block devices, as qemu counted them. */
  readonly disk: {
    readonly readBytes: number;
    readonly writeBytes: number;
    readonly readOps: number;
    readonly writeOps: number;
  };
  /**
   * Network bytes since the VM started, or null when it has no NIC: what the VM's qemu
   * process received (`rxBytes`) and sent past the policy (`txBytes`) on host sockets for
   * the guest's traffic, IP headers included; connections the policy refused are not in
   * `txBytes`.
   */
  readonly network: { readonly rxBytes: number; readonly txBytes: number } | null;
}

/** What a sampler needs from its sandbox. */
export interface MetricsSource {
  /** The qemu pid (throws when the sandbox does not run). */
  pid(): Promise<number>;
  /** QMP `query-blockstats` of the VM. */
  blockStats(): Promise<readonly BlockStat[]>;
  readonly guestBytes: number;
  /** Host-side byte counters of the VM's network traffic (null: no NIC). Absent: null. */
  networkBytes?(): Promise<{ readonly rxBytes: number; readonly txBytes: number } | null>;
}

/** The part of a QMP `query-blockstats` entry that metrics read. */
export interface BlockStat {
  readonly device?: string;
  readonly 'qdev'?: string;
  readonly stats?: { readonly rd_bytes?: number; readonly wr_bytes?: number; readonly rd_operations?: number; readonly wr_operations?: number };
}

/**
 * Keeps the previous CPU reading, so each sample reports CPU % over the time since the last
 * one. The first sample measures over `firstWindowMs`.
 *
 * @example
 * const s = new MetricsSampler(source);
 * const m = await s.sample();     // m.cpuPercent over the first 250 ms
 */
export class MetricsSampler {
  readonly #src: MetricsSource;
  #prev: { pid: number; cpu: ProcCpu } | undefined;

  constructor(source: MetricsSource) {
    this.#src = source;
  }

  async sample(options: { firstWindowMs?: number } = {}): Promise<SandboxMetrics> {
    const pid = await this.#src.pid();
    if (!this.#prev || this.#prev.pid !== pid) {
      this.#prev = { pid, cpu: await readProcCpu(pid) };
      await new Promise((r) => setTimeout(r, options.firstWindowMs ?? 250));
    }
    const [cpu, mem, blocks, network] = await Promise.all([readProcCpu(pid), readProcMemory(pid), this.#src.blockStats(), this.#src.networkBytes?.() ?? null]);
    const percent = cpuPercent(this.#prev.cpu, cpu);
    this.#prev = { pid, cpu };
    const disk = { readBytes: 0, writeBytes: 0, readOps: 0, writeOps: 0 };
    for (const b of blocks) {
      disk.readBytes += b.stats?.rd_bytes ?? 0;
      disk.writeBytes += b.stats?.wr_bytes ?? 0;
      disk.readOps += b.stats?.rd_operations ?? 0;
      disk.writeOps += b.stats?.wr_operations ?? 0;
    }
    return {
      ts: Date.now(),
      pid,
      cpuPercent: Math.round(percent * 10) / 10,
      cpuSeconds: cpu.cpuSeconds,
      memory: { ...mem, guestBytes: this.#src.guestBytes },
      disk,
      network: network ? { rxBytes: network.rxBytes, txBytes: network.txBytes } : null,
    };
  }
}

/** What a sampler reads through a sandbox's link (its QMP counters): a SandboxLink has it. */
export interface MetricsLink {
  busy<T>(fn: () => Promise<T>): Promise<T>;
  readonly api: {
    blockStats(): Promise<unknown>;
    networkStats(): Promise<{ readonly rxBytes: number; readonly txBytes: number } | null>;
  };
}

/**
 * A sampler of sandbox `name`'s VM, reached through `link()` (its QMP counters) and `info()`
 * (its qemu pid): a local handle's, or a cluster node's for a remote handle.
 *
 * @example
 * const sampler = linkSampler('web', 512, () => link, () => link.api.info());
 */
export function linkSampler(name: string, memoryMib: number, link: () => MetricsLink, info: () => Promise<{ readonly pid: number | null }>): MetricsSampler {
  return new MetricsSampler({
    guestBytes: memoryMib * 2 ** 20,
    pid: async () => {
      const pid = (await info()).pid;
      if (!pid) throw new CorralError('E_ILLEGAL_STATE', `sandbox "${name}" has no running VM`, { details: { state: 'stopped' } });
      return pid;
    },
    blockStats: async () => {
      const l = link();
      return (await l.busy(() => l.api.blockStats())) as BlockStat[];
    },
    networkBytes: async () => {
      const l = link();
      return l.busy(() => l.api.networkStats());
    },
  });
}
