/**
 * Saved snapshots of sandboxes (taken with `sandbox.snapshot(name)`).
 *
 * @example
 * for (const s of await Snapshot.list()) console.log(s.name, s.source, s.bytes);
 * await Snapshot.remove('before-upgrade');
 */

import type { SnapshotMeta } from '../snapshot/snapshots.ts';
import type { Supervisor } from '../supervisor/Supervisor.ts';
import { bounded, type CallOptions } from '../runtime/callOptions.ts';
import { getDefaultSupervisor } from './Sandbox.ts';

export type { SnapshotMeta };

export const Snapshot = {
  /** Every snapshot in the supervisor's state dir. */
  async list(options: { supervisor?: Supervisor } & CallOptions = {}): Promise<SnapshotMeta[]> {
    return bounded('snapshot list', options, async () => (options.supervisor ?? getDefaultSupervisor()).snapshots());
  },
  /** Deletes a snapshot (sandboxes started from it are not affected). */
  async remove(name: string, options: { supervisor?: Supervisor } & CallOptions = {}): Promise<void> {
    await bounded(`removal of snapshot "${name}"`, options, () => (options.supervisor ?? getDefaultSupervisor()).removeSnapshot(name));
  },
};
