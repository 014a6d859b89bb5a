/**
 * Saved snapshots of sandboxes (taken with `sandbox.snapshot(name)`).
 *
 * @example
 * for (const s of await Snapshot.list()) console.log(s.name, s.source, s.bytes);
 * await Snapshot.remove('before-upgrade');
 */

import type { SnapshotMeta } from '../snapshot/snapshots.ts';
import type { Supervisor } from '../supervisor/Supervisor.ts';
import { getDefaultSupervisor } from './Sandbox.ts';

export type { SnapshotMeta };

export const Snapshot = {
  /** Every snapshot in the supervisor's state dir. */
  async list(options: { supervisor?: Supervisor } = {}): Promise<SnapshotMeta[]> {
    return (options.supervisor ?? getDefaultSupervisor()).snapshots();
  },
  /** Deletes a snapshot (sandboxes started from it are not affected). */
  async remove(name: string, options: { supervisor?: Supervisor } = {}): Promise<void> {
    await (options.supervisor ?? getDefaultSupervisor()).removeSnapshot(name);
  },
};
