/**
 * Placement: which node of the cluster takes a new sandbox.
 *
 * A node is a candidate when it is not draining, carries every asked label, has a sandbox
 * slot free and at least the guest's memory free. Candidates are ranked by
 *
 *   score = (free memory − asked memory) / memory capacity + free slots / slot capacity
 *
 * (each term 0…1, higher is better; ties go to the name), so the least loaded node in both
 * memory and running sandboxes comes first, and equal nodes fill evenly.
 */

import { CorralError } from '../errors.ts';
import type { NodeRecord } from './protocol.ts';

/** What a create asks of a node. */
export interface PlacementAsk {
  readonly memoryMib: number;
  readonly labels?: Readonly<Record<string, string>>;
}

/** A node's score for `ask` (higher is better); undefined when it does not fit. */
export function scoreNode(node: NodeRecord, ask: PlacementAsk): number | undefined {
  if (node.draining) return undefined;
  for (const [k, v] of Object.entries(ask.labels ?? {})) if (node.labels[k] !== v) return undefined;
  if (node.free.sandboxes < 1 || node.free.memoryMib < ask.memoryMib) return undefined;
  return (node.free.memoryMib - ask.memoryMib) / Math.max(1, node.capacity.memoryMib) + node.free.sandboxes / Math.max(1, node.capacity.sandboxes);
}

/**
 * The nodes that fit `ask`, best first. Throws E_NO_CAPACITY naming what was asked (and what
 * the live nodes had) when none does.
 *
 * @example
 * const [best] = rankNodes(await cluster.nodes(), { memoryMib: 128, labels: { zone: 'a' } });
 */
export function rankNodes(nodes: readonly NodeRecord[], ask: PlacementAsk): NodeRecord[] {
  const scored = nodes.flatMap((n) => {
    const s = scoreNode(n, ask);
    return s === undefined ? [] : [{ n, s }];
  });
  if (scored.length === 0) throw noCapacity(nodes, ask);
  return scored.sort((a, b) => b.s - a.s || (a.n.name < b.n.name ? -1 : 1)).map((x) => x.n);
}

/** E_NO_CAPACITY for `ask`, saying what every live node had. */
export function noCapacity(nodes: readonly NodeRecord[], ask: PlacementAsk, cause?: unknown): CorralError {
  const labels = Object.entries(ask.labels ?? {}).map(([k, v]) => `${k}=${v}`).join(',');
  const seen = nodes.map((n) => `${n.name} (${Object.entries(n.labels).map(([k, v]) => `${k}=${v}`).join(',') || 'no labels'}; ${n.draining ? 'draining' : `${n.free.memoryMib} MiB, ${n.free.sandboxes} slots free`})`).join('; ');
  return new CorralError('E_NO_CAPACITY', `no cluster node has room for a sandbox of ${ask.memoryMib} MiB${labels ? ` with labels ${labels}` : ''}: ${seen || 'no live nodes'}`, {
    details: { memoryMib: ask.memoryMib, labels: ask.labels ?? {}, nodes: nodes.map((n) => n.name) },
    ...(cause !== undefined ? { cause } : {}),
  });
}
