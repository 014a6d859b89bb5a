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
import { join } from 'node:path';
import type { AgentHello } from '../agent/AgentClient.ts';
import { validateName, type SandboxConfig } from '../config.ts';
import { CorralError } from '../errors.ts';
import { deviceLayout, type DeviceLayout } from '../guestenv/guestConfig.ts';

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
  readonly createdAt: number;
  readonly bytes: number;
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
