/**
 * Cluster bench: a sandbox through a cluster node against the same on a local Supervisor, in
 * one run. Prints figures; asserts nothing.
 *
 *   npx tsx bench/cluster.bench.ts [--json]      (RUNS=5 creates, 30 exec round trips)
 *
 * The cluster is one nats-server with JetStream and one `corral node` process on loopback
 * (the test helpers' setup, user/password auth). Each side is warmed first (its template is
 * built by a first create, not counted). Figures:
 * - create → first exec: `builder.create()` then `exec('true')`, cluster against local
 *   (goal ≤ 1.2×);
 * - exec round trip: `exec('true')` on a running sandbox, cluster against local (goal
 *   ≤ local + 1 ms).
 * Migration is not built yet, so there is no migration figure.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Cluster, Sandbox, Supervisor } from '../src/index.ts';
import { APP_USER, startNatsCluster, startNode } from '../test/helpers/natsCluster.ts';
import { BenchReport, fmtMs, quantile, ratio } from './stats.ts';

const RUNS = Number(process.env.RUNS ?? 5);
const EXECS = 30;
console.log(`corral cluster bench — ${new Date().toISOString()} — node ${process.version}`);
const report = new BenchReport('cluster');
const stateDir = mkdtempSync(join(tmpdir(), 'corral-bench-state-'));
const sup = new Supervisor({ stateDir });
const nats = await startNatsCluster(1);
const node = await startNode(nats, 'bench-n1', ['--memory', '2048', '--max-sandboxes', '4']).catch(async (err: unknown) => {
  await nats.stop();
  throw err;
});
const cluster = await Cluster.connect({ servers: nats.urls, ...APP_USER });

/** create → first exec, `RUNS` times after one warm-up; each sandbox killed and removed after. */
async function creates(make: (name: string) => Promise<Sandbox>, remove: (name: string) => Promise<void>, tag: string): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i <= RUNS; i++) {
    const name = `bench-${tag}-${process.pid}-${i}`;
    const t0 = performance.now();
    const sb = await make(name);
    await sb.exec('true');
    if (i > 0) out.push(performance.now() - t0);
    await sb.kill();
    await remove(name);
  }
  return out;
}

async function roundTrips(sb: Sandbox): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < EXECS + 3; i++) {
    const t0 = performance.now();
    await sb.exec('true');
    if (i >= 3) out.push(performance.now() - t0);
  }
  return out;
}

try {
  const localCreate = await creates((n) => Sandbox.builder(n).memory(128).supervisor(sup).create(), (n) => Sandbox.remove(n, { supervisor: sup }), 'local');
  const clusterCreate = await creates((n) => Sandbox.builder(n).memory(128).cluster(cluster).create(), (n) => Sandbox.remove(n, { cluster }), 'cluster');
  console.log(`create → first exec, local:   ${fmtMs(localCreate)}`);
  console.log(`create → first exec, cluster: ${fmtMs(clusterCreate)}  ${ratio(clusterCreate, localCreate)} (goal ≤ ×1.2)`);
  report.add('create_first_exec_cluster', clusterCreate, 'ms', quantile(localCreate, 0.5));

  const local = await Sandbox.builder(`bench-rt-local-${process.pid}`).memory(128).supervisor(sup).create();
  const remote = await Sandbox.builder(`bench-rt-cluster-${process.pid}`).memory(128).cluster(cluster).create();
  try {
    const localRt = await roundTrips(local);
    const clusterRt = await roundTrips(remote);
    const extra = quantile(clusterRt, 0.5) - quantile(localRt, 0.5);
    console.log(`exec round trip, local:   ${fmtMs(localRt)}`);
    console.log(`exec round trip, cluster: ${fmtMs(clusterRt)}  +${extra.toFixed(2)} ms (goal ≤ +1 ms)`);
    report.add('exec_rt_cluster', clusterRt, 'ms', quantile(localRt, 0.5));
  } finally {
    await local.kill();
    await remote.kill();
    await Sandbox.remove(local.name, { supervisor: sup });
    await Sandbox.remove(remote.name, { cluster });
  }
  report.print();
} finally {
  await cluster.close();
  await node.stop();
  await nats.stop();
  await sup.close();
  rmSync(stateDir, { recursive: true, force: true });
}
