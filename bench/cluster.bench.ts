/**
 * Cluster bench: a sandbox through a cluster node against the same on a local Supervisor, in
 * one run. Prints figures; asserts nothing.
 *
 *   npx tsx bench/cluster.bench.ts [--json]      (RUNS=5 creates, EXECS=60 exec round trips each, in turn, MOVES=3)
 *   RUNS=0 MOVES=0 npx tsx bench/cluster.bench.ts  (the exec round trips alone: a quick A/B)
 *
 * The cluster is one nats-server with JetStream and one `corral node` process on loopback
 * (the test helpers' setup, user/password auth). Each side is warmed first (its template is
 * built by a first create, not counted). Figures:
 * - create → first exec: `builder.create()` then `exec('true')`, cluster against local
 *   (goal ≤ 1.2×);
 * - exec round trip: `exec('true')` on a running sandbox, cluster against local (goal
 *   ≤ local + 1 ms): the difference of the medians, and the median of the differences of
 *   each pair (one local and one cluster exec run one after the other), which a load that
 *   comes and goes sways less; beside it the transports' own round trips in the same run (a
 *   NATS request answered by another process, a worker-thread port message echoed) and the
 *   floor they set: what NATS costs beyond the port;
 * - migration: `cluster.drain(n1, { migrate: true })` moving MOVES running sandboxes to a
 *   second node (its per-sandbox `ms`, then the first exec there), against the floor of the
 *   same steps done by hand on this host in this run: snapshot → export → import into a
 *   second state dir → create from it → first exec (no NATS, no transfer).
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { Cluster, Sandbox, Supervisor } from '../src/index.ts';
import { APP_USER, startNatsCluster, startNode } from '../test/helpers/natsCluster.ts';
import { BenchReport, fmtMs, quantile, ratio } from './stats.ts';

const RUNS = Number(process.env.RUNS ?? 5);
const EXECS = Number(process.env.EXECS ?? 60);
const MOVES = Number(process.env.MOVES ?? 3);
const signed = (ms: number) => `${ms >= 0 ? '+' : ''}${ms.toFixed(2)}`;
const load = () => loadavg().map((l) => l.toFixed(2)).join(' ');
console.log(`corral cluster bench — ${new Date().toISOString()} — node ${process.version} — load ${load()}`);
const report = new BenchReport('cluster');
const stateDir = mkdtempSync(join(tmpdir(), 'corral-bench-state-'));
const sup = new Supervisor({ stateDir });
const nats = await startNatsCluster(1);
const node = await startNode(nats, 'bench-n1', ['--memory', '2048', '--max-sandboxes', '4', '--label', 'role=from']).catch(async (err: unknown) => {
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

/**
 * The transports' own round trips, the floor of what the cluster adds to a call: a NATS
 * request answered by another process on its own connection (the way a node's worker answers
 * a call, through the same server), and a message to a worker thread and back (the way a
 * local call goes). Both echo 64 bytes, nothing else.
 */
async function transportEchoes(): Promise<{ nats: () => Promise<number>; port: () => Promise<number>; close: () => Promise<void> }> {
  const subject = `corral.bench.echo.${process.pid}`;
  const responder = spawn(process.execPath, ['--input-type=module', '-e', `
    import { connect } from '@nats-io/transport-node';
    const nc = await connect({ servers: ${JSON.stringify(nats.urls)}, user: ${JSON.stringify(APP_USER.user)}, pass: ${JSON.stringify(APP_USER.pass)} });
    nc.subscribe(${JSON.stringify(subject)}, { callback: (err, m) => m.respond(m.data) });
    await nc.flush();
    console.log('ready');
    process.stdin.on('end', () => nc.close().then(() => process.exit(0)));
    process.stdin.resume();`], { stdio: ['pipe', 'pipe', 'inherit'], cwd: fileURLToPath(new URL('..', import.meta.url)) });
  await new Promise<void>((resolve, reject) => {
    responder.stdout!.once('data', () => resolve());
    responder.once('exit', (code) => reject(new Error(`the NATS echo process exited (${code})`)));
  });
  const echo = new Worker("require('node:worker_threads').parentPort.on('message', (m) => require('node:worker_threads').parentPort.postMessage(m))", { eval: true });
  const payload = new Uint8Array(64);
  return {
    nats: async () => {
      const t0 = performance.now();
      await cluster.connection.request(subject, payload, { timeout: 5000 });
      return performance.now() - t0;
    },
    port: async () => {
      const t0 = performance.now();
      await new Promise((resolve) => {
        echo.once('message', resolve);
        echo.postMessage(payload);
      });
      return performance.now() - t0;
    },
    close: async () => {
      responder.stdin!.end();
      await echo.terminate();
    },
  };
}

/**
 * Exec round trips on `a` and `b` in turn (so a load that comes and goes weighs on both
 * alike), with one round trip of each transport's echo between them.
 */
async function roundTrips(a: Sandbox, b: Sandbox): Promise<{ a: number[]; b: number[]; nats: number[]; port: number[] }> {
  const out = { a: [] as number[], b: [] as number[], nats: [] as number[], port: [] as number[] };
  const echoes = await transportEchoes();
  try {
    for (let i = 0; i < EXECS + 3; i++) {
      for (const [k, sb] of [a, b].entries()) {
        const t0 = performance.now();
        await sb.exec('true');
        if (i >= 3) out[k === 0 ? 'a' : 'b'].push(performance.now() - t0);
      }
      const nats = await echoes.nats();
      const port = await echoes.port();
      if (i >= 3) out.nats.push(nats), out.port.push(port);
    }
  } finally {
    await echoes.close();
  }
  return out;
}

/**
 * MOVES sandboxes moved by a drain with migrate (each its report's ms plus a first exec
 * there), and the same moves done by hand between two local supervisors (the floor).
 */
async function migrations(): Promise<{ cluster: number[]; floor: number[] }> {
  const floor: number[] = [];
  const otherDir = mkdtempSync(join(tmpdir(), 'corral-bench-state-'));
  const other = new Supervisor({ stateDir: otherDir });
  try {
    for (let i = 0; i < MOVES; i++) {
      const sb = await Sandbox.builder(`bench-mv-local-${process.pid}-${i}`).memory(128).supervisor(sup).create();
      await sb.exec('true');
      const snap = `bench-mv-${process.pid}-${i}`;
      const file = join(otherDir, `${snap}.corral`);
      const t0 = performance.now();
      await sb.snapshot(snap);
      await Sandbox.exportSnapshot(snap, file, { supervisor: sup });
      await Sandbox.importSnapshot(file, { supervisor: other });
      const moved = await Sandbox.builder(sb.name).fromSnapshot(snap).supervisor(other).create();
      await moved.exec('true');
      floor.push(performance.now() - t0);
      for (const [s, from] of [
        [sb, sup],
        [moved, other],
      ] as const) {
        await s.kill();
        await Sandbox.remove(s.name, { supervisor: from });
      }
      await sup.removeSnapshot(snap);
      await other.removeSnapshot(snap);
    }
  } finally {
    await other.close();
    rmSync(otherDir, { recursive: true, force: true });
  }
  const to = await startNode(nats, 'bench-n2', ['--memory', '2048', '--max-sandboxes', '4', '--label', 'role=to']);
  const moving: Sandbox[] = [];
  try {
    for (let i = 0; i < MOVES; i++) {
      const sb = await Sandbox.builder(`bench-mv-${process.pid}-${i}`).memory(128).cluster(cluster).placement({ labels: { role: 'from' } }).create();
      await sb.exec('true');
      moving.push(sb);
    }
    const drained = await cluster.drain('bench-n1', { migrate: true });
    const out: number[] = [];
    for (const line of drained.sandboxes) {
      if (!line.movedTo) throw new Error(`${line.name} did not move: ${line.error?.message}`);
      const sb = moving.find((m) => m.name === line.name)!;
      const t0 = performance.now();
      await sb.exec('true');
      out.push(line.ms + performance.now() - t0);
    }
    return { cluster: out, floor };
  } finally {
    for (const sb of moving) {
      await sb.kill();
      await Sandbox.remove(sb.name, { cluster });
    }
    await to.stop();
  }
}

try {
  if (RUNS > 0) await createFigures();

  const local = await Sandbox.builder(`bench-rt-local-${process.pid}`).memory(128).supervisor(sup).create();
  const remote = await Sandbox.builder(`bench-rt-cluster-${process.pid}`).memory(128).cluster(cluster).create();
  try {
    const rt = await roundTrips(local, remote);
    const [localRt, clusterRt] = [rt.a, rt.b];
    const extra = quantile(clusterRt, 0.5) - quantile(localRt, 0.5);
    const pairs = clusterRt.map((c, i) => c - localRt[i]!);
    // A call and its answer (an event) cross NATS once each way where a local one crosses a
    // worker port: what NATS costs beyond the port is the floor of what the cluster adds.
    const transportFloor = quantile(rt.nats, 0.5) - quantile(rt.port, 0.5);
    console.log(`exec round trip, local:   ${fmtMs(localRt)}`);
    console.log(`exec round trip, cluster: ${fmtMs(clusterRt)}  ${signed(extra)} ms (goal ≤ +1 ms)`);
    console.log(`exec round trip, cluster − local per pair: median ${signed(quantile(pairs, 0.5))} ms, p95 ${signed(quantile(pairs, 0.95))} ms`);
    console.log(`NATS request → echo process → reply:     ${fmtMs(rt.nats)}`);
    console.log(`worker-thread port message → echo → back: ${fmtMs(rt.port)}`);
    console.log(`what NATS adds over a port (floor):      ${signed(transportFloor)} ms; the cluster's exec adds ×${(quantile(pairs, 0.5) / transportFloor).toFixed(2)} that`);
    report.add('exec_rt_cluster', clusterRt, 'ms', quantile(localRt, 0.5));
    report.add('nats_echo_rtt', rt.nats, 'ms');
    report.add('port_echo_rtt', rt.port, 'ms');
    report.add('exec_rt_cluster_excess', pairs, 'ms', transportFloor);
  } finally {
    await local.kill();
    await remote.kill();
    await Sandbox.remove(local.name, { supervisor: sup });
    await Sandbox.remove(remote.name, { cluster });
  }

  if (MOVES > 0) {
    const moves = await migrations();
    console.log(`move by hand on one host (floor): ${fmtMs(moves.floor)}`);
    console.log(`migration through the cluster:     ${fmtMs(moves.cluster)}  ${ratio(moves.cluster, moves.floor)}`);
    report.add('migration', moves.cluster, 'ms', quantile(moves.floor, 0.5));
  }
  console.log(`load at the end: ${load()}`);
  report.print();
} finally {
  await cluster.close();
  await node.stop();
  await nats.stop();
  await sup.close();
  rmSync(stateDir, { recursive: true, force: true });
}

/** create → first exec, local and through the cluster, RUNS each. */
async function createFigures(): Promise<void> {
  const localCreate = await creates((n) => Sandbox.builder(n).memory(128).supervisor(sup).create(), (n) => Sandbox.remove(n, { supervisor: sup }), 'local');
  const clusterCreate = await creates((n) => Sandbox.builder(n).memory(128).cluster(cluster).create(), (n) => Sandbox.remove(n, { cluster }), 'cluster');
  console.log(`create → first exec, local:   ${fmtMs(localCreate)}`);
  console.log(`create → first exec, cluster: ${fmtMs(clusterCreate)}  ${ratio(clusterCreate, localCreate)} (goal ≤ ×1.2)`);
  report.add('create_first_exec_cluster', clusterCreate, 'ms', quantile(localCreate, 0.5));
}
