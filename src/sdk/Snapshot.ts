/**
 * Saved snapshots of sandboxes (taken with `sandbox.snapshot(name)`).
 *
 * @example
 * for (const s of await Snapshot.list()) console.log(s.name, s.source, s.bytes);
 * await Snapshot.remove('before-upgrade');
 */

import type { SnapshotMeta } from '../snapshot/snapshots.ts';
import type { Supervisor } from '../supervisor/Supervisor.ts';
import type { Cluster } from '../cluster/Cluster.ts';
import { CorralError } from '../errors.ts';
import { bounded, type CallOptions } from '../runtime/callOptions.ts';
import { getDefaultSupervisor } from './Sandbox.ts';
import { snapshotsOfNodes } from './clusterSandboxes.ts';

export type { SnapshotMeta };

/** Where snapshots are: one supervisor's state dir, or every live node of a cluster. */
type Where = { supervisor?: Supervisor; cluster?: Cluster } & CallOptions;

/** The live nodes of `cluster` with the snapshots each holds; only those holding `name` if given. */
async function holders(cluster: Cluster, name?: string): Promise<{ node: string; names: string[] }[]> {
  const lists = await snapshotsOfNodes(cluster, await cluster.nodes());
  return name === undefined ? lists : lists.filter((l) => l.names.includes(name));
}

/** A snapshot of a cluster: its name, and the node holding it. */
export interface ClusterSnapshot {
  readonly name: string;
  readonly node: string;
}

/**
 * Every snapshot in the supervisor's state dir; with `cluster`, the name and node of every
 * snapshot on every live node.
 */
function list(options: { cluster: Cluster } & CallOptions): Promise<ClusterSnapshot[]>;
function list(options?: { supervisor?: Supervisor } & CallOptions): Promise<SnapshotMeta[]>;
async function list(options: Where = {}): Promise<SnapshotMeta[] | ClusterSnapshot[]> {
  const cluster = options.cluster;
  if (cluster) return bounded('snapshot list of the cluster', options, async () => (await holders(cluster)).flatMap((h) => h.names.map((name) => ({ name, node: h.node }))));
  return bounded('snapshot list', options, async () => (options.supervisor ?? getDefaultSupervisor()).snapshots());
}

export const Snapshot = {
  list,
  /** Deletes a snapshot (sandboxes started from it are not affected); with `cluster`, on every node that has it. */
  async remove(name: string, options: Where = {}): Promise<void> {
    const cluster = options.cluster;
    if (cluster) {
      return bounded(`removal of snapshot "${name}" from the cluster`, options, async () => {
        const found = await holders(cluster, name);
        if (found.length === 0) throw new CorralError('E_SNAPSHOT_NOT_FOUND', `no live node of the cluster has a snapshot named "${name}"`);
        for (const h of found) await cluster.request(h.node, 'snapshot.remove', { name });
      });
    }
    await bounded(`removal of snapshot "${name}"`, options, () => (options.supervisor ?? getDefaultSupervisor()).removeSnapshot(name));
  },
};
