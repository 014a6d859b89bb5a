/**
 * Snapshots of running sandboxes: `<stateDir>/snapshots/<name>/` holds the migration stream
 * (`state`, with the whole guest RAM), a copy of the upper disk taken while the VM was
 * frozen, and `meta.json` (the source's config, the agent's HELLO, the exec sessions that
 * were live). A snapshot whose upper is a qcow2 overlay refers to its template's upper disk,
 * which templates never change.
 */

import type { KernelName } from '../runtime/kernel.ts';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { AgentHello } from '../agent/AgentClient.ts';
import { validateName, type SandboxConfig } from '../config.ts';
import { CorralError } from '../errors.ts';
import { deviceLayout, type DeviceLayout } from '../guestenv/guestConfig.ts';
import { findTemplate, templateTampered, type Template } from './templates.ts';

export interface SnapshotMeta {
  readonly name: string;
  /** The sandbox it was taken from. */
  readonly source: string;
  readonly config: SandboxConfig;
  readonly hello: AgentHello;
  /** Exec sessions live at the save (they keep running in the restored guest). */
  readonly sessions: readonly number[];
  /** `upper.qcow2` or `upper.ext4`. */
  readonly upperFile: string;
  /**
   * The VM's 9p shares and NIC: a restore attaches the same (absent in snapshots taken
   * before it was recorded: then the config's).
   */
  readonly devices?: DeviceLayout;
  /**
   * The guest kernel it ran (src/runtime/kernel.ts): a restore boots the same one, whatever
   * CORRAL_KERNEL says then. Absent in snapshots from before the choice: the custom kernel.
   */
  readonly kernel?: KernelName;
  /**
   * The template whose RAM file the state is a delta over: `state` holds the pages the
   * guest had changed and the devices (src/vm/migrationStream.ts), and a restore maps that
   * template's RAM file copy-on-write under them. Absent when `state` holds the whole RAM
   * (a cold-booted source, or an imported snapshot).
   */
  readonly ram?: { readonly template: string; readonly memCtimeNs?: string };
  readonly createdAt: number;
  readonly bytes: number;
  /**
   * What the saved guest runs on: the kernel, initramfs and read-only layers it had (their
   * content-keyed cache names) and the image's pinned digest. A snapshot restores only onto
   * the same; an imported one is checked against this host's (src/snapshot/portable.ts).
   * Absent in snapshots taken before it was recorded.
   */
  readonly root?: RootIdentity;
}

/** The content-keyed names of what a guest runs on (see {@link rootIdentity}). */
export interface RootIdentity {
  readonly kernel: string;
  readonly initramfs: string;
  readonly lower: readonly string[];
  readonly imageDigest?: string;
  /** A disk-image root: its format (a disk root travels with the snapshot's upper: none). */
  readonly disk?: string;
}

/**
 * The identity of a prepared root: each artifact by the last two parts of its path, which
 * the caches key by content (`kernel/<hash>/vmlinux`, `layers/<digest>.erofs`,
 * `corral-base/<hash>/rootfs.erofs`), so the same names on two hosts are the same bytes.
 */
export function rootIdentity(root: { kernel: string; initramfs: string; lower: readonly { path: string }[]; imageDigest?: string | undefined; disk?: { format: string } | undefined }): RootIdentity {
  const tail = (p: string) => `${basename(dirname(p))}/${basename(p)}`;
  return {
    kernel: tail(root.kernel),
    initramfs: tail(root.initramfs),
    lower: root.lower.map((l) => tail(l.path)),
    ...(root.imageDigest ? { imageDigest: root.imageDigest } : {}),
    ...(root.disk ? { disk: root.disk.format } : {}),
  };
}

export function snapshotsDir(stateDir: string): string {
  return join(stateDir, 'snapshots');
}

export function snapshotDir(stateDir: string, name: string): string {
  // The name becomes a path under the state dir: "../x" would reach (and remove) outside it.
  return join(snapshotsDir(stateDir), validateName(name, 'snapshot name'));
}

/** A snapshot's metadata; throws E_SNAPSHOT_NOT_FOUND. */
export function readSnapshot(stateDir: string, name: string): SnapshotMeta {
  const meta = join(snapshotDir(stateDir, name), 'meta.json');
  if (!existsSync(meta)) throw new CorralError('E_SNAPSHOT_NOT_FOUND', `no snapshot named "${name}"`);
  return JSON.parse(readFileSync(meta, 'utf8')) as SnapshotMeta;
}

/**
 * The template a delta snapshot restores over (see {@link SnapshotMeta.ram}); throws
 * E_SNAPSHOT when it is gone or its RAM file is not the one the snapshot was taken over.
 */
export function snapshotBase(stateDir: string, meta: SnapshotMeta): Template {
  const key = meta.ram!.template;
  const tpl = findTemplate(stateDir, key);
  if (!tpl || !existsSync(tpl.memFile)) throw new CorralError('E_SNAPSHOT', `snapshot "${meta.name}" holds only the pages its guest changed over template ${key}, and that template is gone`);
  if (templateTampered(tpl) || (meta.ram!.memCtimeNs !== undefined && tpl.memCtimeNs !== meta.ram!.memCtimeNs)) {
    throw new CorralError('E_SNAPSHOT', `snapshot "${meta.name}" holds only the pages its guest changed over template ${key}, whose RAM file is no longer the one it was taken over`);
  }
  return tpl;
}

/** The guest devices a restore of this snapshot must attach. */
export function snapshotDevices(meta: SnapshotMeta): DeviceLayout {
  return meta.devices ?? deviceLayout(meta.config);
}

/** Every complete snapshot, by name. */
export function listSnapshots(stateDir: string): SnapshotMeta[] {
  const dir = snapshotsDir(stateDir);
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((n) => !n.includes('.tmp-') && existsSync(join(dir, n, 'meta.json')))
    .sort()
    .map((n) => readSnapshot(stateDir, n));
}

export async function removeSnapshot(stateDir: string, name: string): Promise<void> {
  readSnapshot(stateDir, name);
  await rm(snapshotDir(stateDir, name), { recursive: true, force: true });
}

/** Bytes a snapshot takes on disk (allocated, so sparse files count what they hold). */
export function snapshotBytes(dir: string): number {
  let total = 0;
  for (const f of readdirSync(dir)) total += statSync(join(dir, f)).blocks * 512;
  return total;
}
