/**
 * The `corral node` processes of a cluster test file, and what a failing test shows of them.
 * Uses vitest (afterEach), so it is for test files only (bench/ uses natsCluster.ts alone).
 */
import { afterEach } from 'vitest';
import { Cluster } from '../../src/index.ts';
import { APP_USER, startNode, type NatsCluster, type NodeProcess } from './natsCluster.ts';

/**
 * Starts one node per `[name, zone]` on `nats`, in turn (the first creates the buckets and the
 * stream, the others find them), each with `common` and `--label zone=<zone>`, then a client
 * that reads a node lost after 2 s of silence. Pushes each node into `nodes` as it starts. On a
 * failure it SIGKILLs the nodes that started, stops `nats`, and throws.
 */
export async function startNodes(nats: NatsCluster, nodes: NodeProcess[], specs: readonly (readonly [string, string])[], common: readonly string[]): Promise<Cluster> {
  try {
    for (const [name, zone] of specs) nodes.push(await startNode(nats, name, [...common, '--label', `zone=${zone}`]));
    return await Cluster.connect({ servers: nats.urls, ...APP_USER, lostAfterMs: 2000 });
  } catch (err) {
    await Promise.all(nodes.map((n) => n.stop('SIGKILL')));
    await nats.stop();
    throw err;
  }
}

/** After a failing test, prints what each of `nodes` said on stderr (the last 4 KB). */
export function showNodeStderrOnFailure(nodes: readonly NodeProcess[]): void {
  afterEach((ctx) => {
    if (ctx.task.result?.state !== 'fail') return;
    for (const n of nodes) if (n.stderr()) process.stderr.write(`--- node ${n.name} stderr (last 4 KB) ---\n${n.stderr().slice(-4096)}\n`);
  });
}
