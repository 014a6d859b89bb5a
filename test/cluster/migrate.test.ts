// Two `corral node` processes on a real nats-server with JetStream: a fork and a background
// command through the cluster, and draining a node with migration: a real VM that moves from one to the other (memory snapshot → archive →
// transfer → restore) keeping its name, its files and a process that runs on. The drain is
// asked by the CLI in a process of its own, as an operator would.
import { execFile } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { firstValueFrom, lastValueFrom, takeWhile, tap, toArray } from 'rxjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cluster, Sandbox, Snapshot } from '../../src/index.ts';
import { APP_USER, startNatsCluster, type NatsCluster, type NodeProcess } from '../helpers/natsCluster.ts';
import { showNodeStderrOnFailure, startNodes } from '../helpers/nodeFixture.ts';
import { uniqueName } from '../helpers/sandbox.ts';
import { corral } from '../helpers/cli.ts';

const CLOSE_CLIENT = fileURLToPath(new URL('../helpers/cluster-close-client.ts', import.meta.url));

let nats: NatsCluster;
const nodes: NodeProcess[] = [];
let cluster: Cluster;

beforeAll(async () => {
  // Its users hold only the permissions the README documents: moving a sandbox needs no more.
  nats = await startNatsCluster(1, { restricted: true });
  cluster = await startNodes(nats, nodes, [['m1', 'a'], ['m2', 'b']], ['--memory', '1024', '--max-sandboxes', '2', '--heartbeat', '500']);
});

afterAll(async () => {
  await cluster?.close();
  await Promise.all(nodes.map((n) => n.stop()));
  await nats?.stop();
});

// A failing test shows what the nodes said.
showNodeStderrOnFailure(nodes);

/** The counter the guest's background loop writes, read until it passes `above` (a running process moves it on). */
async function counterPast(sb: Sandbox, above: number): Promise<number> {
  for (let i = 0; i < 200; i++) {
    // Not written yet by a loop that has just started: read again.
    const text = await sb.fs().readText('/root/count').catch((err: { code?: string; details?: { errno?: string } }) => {
      if (err.code === 'E_FS' && err.details?.errno === 'ENOENT') return '0';
      throw err;
    });
    const n = Number(text.trim());
    if (n > above) return n;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`the counter never passed ${above}: the process did not run on`);
}

/** Waits until `cond()` holds (polled; the test's own timeout bounds it). */
async function until(cond: () => boolean): Promise<void> {
  while (!cond()) await new Promise((r) => setTimeout(r, 20));
}

const listing = (dir: string) => (existsSync(dir) ? readdirSync(dir) : []);

describe('a fork through the cluster', () => {
  it('starts on the node of its source, with its files, and leaves no snapshot behind; a create from a snapshot goes where the snapshot is', async () => {
    const sb = await Sandbox.builder(uniqueName('src')).memory(128).cluster(cluster).placement({ labels: { zone: 'b' } }).create();
    try {
      await sb.shell('echo from-parent > /root/p.txt');
      const child = await sb.fork(uniqueName('child'));
      try {
        expect(await child.info()).toMatchObject({ status: 'running', node: 'm2' });
        expect((await child.fs().readText('/root/p.txt')).trim()).toBe('from-parent');
        await child.shell('echo mine > /root/p.txt');
        expect((await sb.fs().readText('/root/p.txt')).trim()).toBe('from-parent');
        expect((await Sandbox.list({ cluster })).map((s) => s.name)).toContain(child.name);
      } finally {
        await child.kill();
        await Sandbox.remove(child.name, { cluster });
      }
      expect(listing(join(nodes[1]!.stateDir, 'snapshots'))).toEqual([]);
      // A create from a snapshot is placed where the snapshot is.
      const snap = uniqueName('snap');
      await sb.snapshot(snap);
      const copy = await Sandbox.builder(uniqueName('copy')).cluster(cluster).fromSnapshot(snap).create();
      try {
        expect(await copy.info()).toMatchObject({ status: 'running', node: 'm2' });
        expect((await copy.fs().readText('/root/p.txt')).trim()).toBe('from-parent');
      } finally {
        await copy.kill();
        await Sandbox.remove(copy.name, { cluster });
      }
      await expect(Sandbox.builder(uniqueName('copy')).cluster(cluster).fromSnapshot(uniqueName('nowhere')).create()).rejects.toMatchObject({ code: 'E_SNAPSHOT_NOT_FOUND' });
      expect(await Snapshot.list({ cluster })).toEqual([{ name: snap, node: 'm2' }]);
      await Snapshot.remove(snap, { cluster });
      expect(listing(join(nodes[1]!.stateDir, 'snapshots'))).toEqual([]);
    } finally {
      await sb.kill();
      await Sandbox.remove(sb.name, { cluster });
    }
  });
});

describe('a background command through the cluster', () => {
  it('is listed and reattached from a second handle, its output read from the start, its stdin written', async () => {
    const sb = await Sandbox.builder(uniqueName('bg')).memory(128).cluster(cluster).create();
    try {
      const job = await sb.execStream('sh', ['-c', 'echo one; read x; echo "got $x"'], { background: true, stdin: 'pipe' });
      const other = await Sandbox.get(sb.name, { cluster });
      expect((await other.execs()).map((e) => [e.id, e.background])).toEqual([[job.id, true]]);
      const again = await other.attach(job.id);
      await again.write('two\n');
      await again.end();
      let text = '';
      for await (const item of again) if (item.type === 'stdout') text += Buffer.from(item.data).toString();
      expect(text).toBe('one\ngot two\n');
      expect(await again.exited).toMatchObject({ code: 0 });
    } finally {
      await sb.kill();
      await Sandbox.remove(sb.name, { cluster });
    }
  });
});

describe('following the output of a sandbox through the cluster', () => {
  it('gives the record, then new output as it comes, and ends when the sandbox stops; metrics are sampled on its node', async () => {
    const sb = await Sandbox.builder(uniqueName('follow')).memory(128).cluster(cluster).create();
    let text = '';
    let ended = false;
    try {
      await sb.exec('echo', ['before']);
      const done = lastValueFrom(sb.logs$().pipe(tap((e) => (text += Buffer.from(e.data).toString()))), { defaultValue: undefined }).then(() => (ended = true));
      await until(() => text === 'before\n');
      await sb.exec('echo', ['after']);
      await until(() => text === 'before\nafter\n');
      expect(ended).toBe(false);
      // Resource use, sampled on its node (its VM's /proc is there).
      const m = await sb.metrics();
      expect(m.memory.pssBytes).toBeGreaterThan(0);
      expect(m.cpuPercent).toBeGreaterThanOrEqual(0);
      await sb.kill();
      await done;
      expect(text).toBe('before\nafter\n');
    } finally {
      if (!ended) await sb.kill();
      await Sandbox.remove(sb.name, { cluster });
    }
  });
});

describe('a client that closes its cluster connection', () => {
  it('has every call and stream it still waits on settle with E_CLOSED, and exits by itself (a process of its own)', async () => {
    const sb = await Sandbox.builder(uniqueName('closer')).memory(128).cluster(cluster).create();
    try {
      const out = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
        execFile(process.execPath, ['--import', 'tsx', CLOSE_CLIENT, nats.urls.join(','), APP_USER.user, APP_USER.pass, sb.name], { timeout: 120_000 }, (err, stdout, stderr) =>
          resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
        );
      });
      expect(out.code, out.stderr).toBe(0);
      expect(JSON.parse(out.stdout)).toEqual({ exited: 'E_CLOSED', wait: 'E_CLOSED', info: 'E_CLOSED', exec: 'E_CLOSED' });
      // The sandbox is the node's: a client going away does not end it.
      expect(await sb.info()).toMatchObject({ status: 'running' });
    } finally {
      await sb.kill();
      await Sandbox.remove(sb.name, { cluster });
    }
  });
});

describe('a node drained with migrate', () => {
  it('moves its sandbox to another node: same name, same files, its process running on; the handle follows it', async () => {
    const sb = await Sandbox.builder(uniqueName('mover')).memory(128).cluster(cluster).placement({ labels: { zone: 'a' } }).create();
    try {
      expect((await sb.info()).node).toBe('m1');
      await sb.shell('echo kept > /root/kept.txt; (i=0; while :; do i=$((i+1)); echo $i > /root/count; sleep 0.1; done) >/dev/null 2>&1 &');
      const before = await counterPast(sb, 0);
      // A command running across the move: its stream ends saying so.
      const open = await sb.execStream('sleep', ['600']);
      const openEnd = (async () => {
        for await (const item of open) void item;
      })().then(
        () => 'ended',
        (err: unknown) => err,
      );

      // A file watch across the move: it ends saying so (the guest restored there runs none).
      const watch = await sb.fs().watch('/root');
      const watchEnd = (async () => {
        for await (const e of watch) void e;
      })().then(
        () => 'ended',
        (err: unknown) => err,
      );

      process.env.CORRAL_NATS_USER = APP_USER.user;
      process.env.CORRAL_NATS_PASSWORD = APP_USER.pass;
      let drained;
      try {
        drained = await corral('--nats', nats.urls.join(','), 'node', 'drain', 'm1', '--migrate');
      } finally {
        delete process.env.CORRAL_NATS_USER;
        delete process.env.CORRAL_NATS_PASSWORD;
      }
      expect(drained.code, drained.stderr).toBe(0);
      expect(drained.json).toEqual({ node: 'm1', sandboxes: [{ name: sb.name, ms: expect.any(Number), stopReason: null, movedTo: 'm2' }] });

      // The same handle: it runs on m2 now, with its files, its process counting on.
      expect(await sb.info()).toMatchObject({ status: 'running', node: 'm2' });
      expect((await sb.fs().readText('/root/kept.txt')).trim()).toBe('kept');
      await counterPast(sb, before);
      expect(await openEnd).toMatchObject({ code: 'E_SANDBOX_MOVED', details: { node: 'm2' } });
      expect(await watchEnd).toMatchObject({ code: 'E_SANDBOX_MOVED', details: { node: 'm2' } });
      expect(watch.endReason).toBe('sandbox-moved');
      expect((await sb.exec('echo', ['after'])).stdout).toBe('after\n');

      // Found there by name from a fresh lookup, listed there, and its events say it moved, not stopped.
      const again = await Sandbox.get(sb.name, { cluster });
      expect((await again.info()).node).toBe('m2');
      expect((await Sandbox.list({ cluster })).find((s) => s.name === sb.name)).toMatchObject({ status: 'running', node: 'm2' });
      const history = await firstValueFrom(
        cluster.events({ name: sb.name, since: 0 }).pipe(
          takeWhile((e) => e.type !== 'sandbox.moved', true),
          toArray(),
        ),
      );
      expect(history.at(-1)).toMatchObject({ type: 'sandbox.moved', from: 'm1', to: 'm2', ms: expect.any(Number) });
      expect(history.filter((e) => e.type === 'sandbox.stopped' || e.type === 'sandbox.stopping')).toEqual([]);
      expect(history.filter((e) => e.type === 'exec.failed')).toEqual([expect.objectContaining({ execId: open.id, error: expect.objectContaining({ code: 'E_SANDBOX_MOVED' }) })]);

      // m1 keeps nothing of it: no record, no disk, no snapshot or archive.
      const m1 = nodes[0]!.stateDir;
      expect(listing(join(m1, 'sandboxes'))).toEqual([]);
      expect(listing(join(m1, 'snapshots'))).toEqual([]);
      expect(listing(join(m1, 'incoming'))).toEqual([]);
      expect(listing(join(nodes[1]!.stateDir, 'incoming'))).toEqual([]);

      // Its old node may go now: the handle is not bound to it.
      await nodes[0]!.stop();
      expect((await sb.exec('cat', ['/root/kept.txt'])).stdout).toBe('kept\n');
    } finally {
      await sb.stop();
    }
    await Sandbox.remove(sb.name, { cluster });
    // The snapshot it moved with goes with it.
    expect(listing(join(nodes[1]!.stateDir, 'snapshots'))).toEqual([]);
  });
});
