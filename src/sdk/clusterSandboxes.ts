/**
 * The cluster side of the SDK's sandbox verbs: create (claim the name, place, ask the node),
 * get, list and remove through the cluster's catalog. `Sandbox` wraps the links these return
 * exactly as it wraps local ones.
 */

import { Observable } from 'rxjs';
import { recordedInfo } from '../actor/contract.ts';
import type { SandboxConfig } from '../config.ts';
import { CorralError } from '../errors.ts';
import { FOREVER_MS, nodeLost, type Cluster, type CatalogEntry } from '../cluster/Cluster.ts';
import type { LogEntry, LogsOptions } from '../logs/ExecLog.ts';
import { noCapacity, rankNodes } from '../cluster/placement.ts';
import { NatsLink } from '../link/NatsLink.ts';
import type { SandboxInfo } from '../supervisor/Supervisor.ts';
import { logFailure } from '../runtime/log.ts';
import type { PlacementOptions } from './SandboxBuilder.ts';

/**
 * Claims `config.name` cluster-wide (a KV create: two creates of one name cannot both pass),
 * then asks the best node that fits, falling to the next when one turns out full. Nothing is
 * left claimed when it fails. `node`: that node only (a fork starts where its snapshot is).
 */
export async function createInCluster(cluster: Cluster, config: SandboxConfig, placement: PlacementOptions | undefined, replace = false, node?: string): Promise<NatsLink> {
  if (replace) await replaceInCluster(cluster, config.name);
  const ask = { memoryMib: config.memoryMib, ...(placement?.labels ? { labels: placement.labels } : {}) };
  let nodes = (await cluster.nodes()).filter((n) => node === undefined || n.name === node);
  if (node !== undefined && nodes.length === 0) throw nodeLost(node, undefined, config.name);
  // A create from a snapshot goes where the snapshot is (its memory file is that node's).
  const snapshot = config.fromSnapshot;
  if (snapshot !== undefined) {
    const holders = new Set((await snapshotsOfNodes(cluster, nodes)).filter((h) => h.names.includes(snapshot)).map((h) => h.node));
    if (holders.size === 0) throw new CorralError('E_SNAPSHOT_NOT_FOUND', `no live node of the cluster has a snapshot named "${snapshot}" (take one with sb.snapshot(name) on a sandbox of the cluster)`);
    nodes = nodes.filter((n) => holders.has(n.name));
  }
  const ranked = rankNodes(nodes, ask);
  const now = Date.now();
  const entry: CatalogEntry = { name: config.name, node: ranked[0]!.name, status: 'creating', stopReason: null, image: config.image, labels: config.labels ?? {}, memoryMib: config.memoryMib, createdAt: now, updatedAt: now };
  await cluster.claim(entry);
  let lastFull: unknown;
  try {
    for (const target of ranked) {
      // Subscribed to its events before the node boots it: none is missed.
      const link = await NatsLink.open(cluster, config, target.name);
      try {
        await cluster.putCatalog({ ...entry, node: target.name });
        await cluster.request<SandboxInfo>(target.name, 'create', { config }, { timeoutMs: FOREVER_MS });
        return link;
      } catch (err) {
        await link.detach();
        if (!(err instanceof CorralError && (err.code === 'E_NO_CAPACITY' || err.code === 'E_NODE_LOST'))) throw err;
        lastFull = err;
      }
    }
    throw noCapacity(nodes, ask, lastFull);
  } catch (err) {
    await cluster.deleteCatalog(config.name).catch(logFailure(`freeing the name "${config.name}" after a failed create`));
    throw err;
  }
}

/** The snapshots each of `nodes` holds (each is asked). */
export async function snapshotsOfNodes(cluster: Cluster, nodes: readonly { readonly name: string }[]): Promise<{ node: string; names: string[] }[]> {
  return Promise.all(nodes.map(async (n) => ({ node: n.name, names: await cluster.request<string[]>(n.name, 'snapshot.list', {}, { timeoutMs: 30_000 }) })));
}

/**
 * Boots a stopped sandbox again on the node that has its disk. E_NODE_LOST when that node is
 * gone (its disk went with it).
 */
export async function startInCluster(cluster: Cluster, name: string): Promise<NatsLink> {
  const entry = await cluster.catalogEntry(name);
  if (!entry) throw new CorralError('E_SANDBOX_NOT_FOUND', `no sandbox named "${name}" in the cluster`);
  if (entry.status !== 'stopped') throw new CorralError('E_ILLEGAL_STATE', `cannot start sandbox "${name}": it is ${entry.status} on node ${entry.node}`, { details: { state: entry.status } });
  if (!cluster.nodeAlive(entry.node)) throw nodeLost(entry.node, undefined, name);
  const config = await cluster.request<SandboxConfig>(entry.node, 'config', { name });
  // Subscribed to its events before the node boots it.
  const link = await NatsLink.open(cluster, config, entry.node);
  try {
    await cluster.request<SandboxInfo>(entry.node, 'start', { name }, { timeoutMs: FOREVER_MS });
  } catch (err) {
    await link.detach();
    throw err;
  }
  return link;
}

/** The recorded exec output of a sandbox, read from the node that ran it. */
export async function logsInCluster(cluster: Cluster, name: string, options: LogsOptions): Promise<LogEntry[]> {
  const entry = await cluster.catalogEntry(name);
  if (!entry) throw new CorralError('E_SANDBOX_NOT_FOUND', `no sandbox named "${name}" in the cluster`);
  if (!cluster.nodeAlive(entry.node)) throw nodeLost(entry.node, undefined, name);
  return cluster.request<LogEntry[]>(entry.node, 'logs', { name, options });
}

/**
 * The recorded output of a sandbox of the cluster, then its new output as it comes (from the
 * cluster's event stream), until it stops. Subscribed before the record is read, so nothing
 * falls between; what both give once is given once (by time: the record's last entry).
 */
export function followLogsInCluster(cluster: Cluster, name: string, options: LogsOptions): Observable<LogEntry> {
  return new Observable<LogEntry>((sub) => {
    const early: LogEntry[] = [];
    let lastTs = -1;
    let replaying = true;
    const live = cluster.events({ name, untilStopped: true }).subscribe({
      next: (e) => {
        if (e.type !== 'exec.stdout' && e.type !== 'exec.stderr') return;
        if (options.execId !== undefined && e.execId !== options.execId) return;
        const entry: LogEntry = { ts: e.ts, execId: e.execId, stream: e.type === 'exec.stdout' ? 'stdout' : 'stderr', data: e.data };
        if (replaying) early.push(entry);
        else sub.next(entry);
      },
      error: (err: unknown) => sub.error(err),
      complete: () => {
        if (!replaying) sub.complete();
        else replaying = false;
      },
    });
    void (async () => {
      const recorded = await logsInCluster(cluster, name, options);
      for (const e of recorded) {
        sub.next(e);
        lastTs = Math.max(lastTs, e.ts);
      }
      for (const e of early) if (e.ts > lastTs) sub.next(e);
      // Stopped before this call: its stopped event is in the past, the record is all.
      const done = !replaying || live.closed || (await cluster.catalogEntry(name))?.status === 'stopped';
      replaying = false;
      if (done) sub.complete();
    })().catch((err: unknown) => sub.error(err));
    return () => live.unsubscribe();
  });
}

/** A link to `name` if it runs on a live node; its catalog entry either way (undefined: no such sandbox). */
export async function openInCluster(cluster: Cluster, name: string): Promise<{ entry: CatalogEntry; link: NatsLink | undefined } | undefined> {
  const entry = await cluster.catalogEntry(name);
  if (!entry) return undefined;
  if (entry.status === 'stopped') return { entry, link: undefined };
  const info = await cluster.request<SandboxInfo>(entry.node, 'sb.info', { name, args: [] });
  const config = await cluster.request<SandboxConfig>(entry.node, 'config', { name });
  if (info.status === 'stopped') return { entry: { ...entry, status: 'stopped', stopReason: info.stopReason }, link: undefined };
  return { entry, link: await NatsLink.open(cluster, config, entry.node) };
}

/**
 * `replace()`: kills a same-named sandbox wherever it runs and removes it, so the name can be
 * claimed again (the claim itself stays atomic: a third client may still win it).
 */
async function replaceInCluster(cluster: Cluster, name: string): Promise<void> {
  const entry = await cluster.catalogEntry(name);
  if (!entry) return;
  if (entry.status !== 'stopped' && cluster.nodeAlive(entry.node)) await cluster.request(entry.node, 'sb.kill', { name, args: [] });
  await removeInCluster(cluster, name);
}

/** Removes a stopped sandbox wherever it ran: its node's record and disk (if the node lives), then its name. */
export async function removeInCluster(cluster: Cluster, name: string): Promise<void> {
  const entry = await cluster.catalogEntry(name);
  if (!entry) throw new CorralError('E_SANDBOX_NOT_FOUND', `no sandbox named "${name}" in the cluster`);
  if (entry.status !== 'stopped') throw new CorralError('E_ILLEGAL_STATE', `cannot remove sandbox "${name}": it is ${entry.status} on node ${entry.node} (stop it first)`, { details: { state: entry.status } });
  // A lost node's disk stays on its machine: the name is freed all the same.
  if (cluster.nodeAlive(entry.node)) await cluster.request(entry.node, 'remove', { name });
  await cluster.deleteCatalog(name);
}

/** The facts the catalog has on a sandbox that no link reaches. */
export function catalogInfo(name: string, entry: CatalogEntry | undefined): SandboxInfo {
  return { ...recordedInfo(name, entry ? { status: entry.status, state: entry.status, stopReason: entry.stopReason ?? null } : undefined), ...(entry ? { node: entry.node } : {}) };
}
