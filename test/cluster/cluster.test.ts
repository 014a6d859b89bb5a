// Sandboxes across machines: a real 3-server NATS cluster with JetStream (user/password
// auth) and 3 `corral node` processes with their own state dirs, shared by the tests of this
// file (each test names its own sandboxes). Real VMs, one or two per node, 128 MiB guests.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { firstValueFrom, filter, take, toArray } from 'rxjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cluster, CorralError, Sandbox, type SandboxEvent } from '../../src/index.ts';
import { APP_USER, startNatsCluster, startNode, type NatsCluster, type NodeProcess } from '../helpers/natsCluster.ts';
import { showNodeStderrOnFailure, startNodes } from '../helpers/nodeFixture.ts';
import { uniqueName } from '../helpers/sandbox.ts';
import { corral } from '../helpers/cli.ts';

const CLIENT = fileURLToPath(new URL('../helpers/cluster-client.ts', import.meta.url));

let nats: NatsCluster;
const nodes: NodeProcess[] = [];
let cluster: Cluster;
/** One sandbox per node, made by the spread test, used by the tests after it. */
const spread: Sandbox[] = [];

const codeOf = (err: unknown) => (err as CorralError).code;

beforeAll(async () => {
  nats = await startNatsCluster(3);
  // Streams and buckets with 3 replicas.
  cluster = await startNodes(nats, nodes, [['n1', 'a'], ['n2', 'b'], ['n3', 'a']], ['--replicas', '3', '--memory', '1024', '--max-sandboxes', '2', '--heartbeat', '500']);
});

afterAll(async () => {
  for (const sb of spread) await sb.kill().catch((err: unknown) => expect(codeOf(err)).toBe('E_NODE_LOST'));
  await cluster?.close();
  await Promise.all(nodes.map((n) => n.stop()));
  await nats?.stop();
});

// A failing test shows what the nodes said (their stderr is kept, the last 20 KB each).
showNodeStderrOnFailure(nodes);

describe('a cluster of corral nodes on NATS', () => {
  it('lists its nodes with their labels, capacity and what is free', async () => {
    const listed = await cluster.nodes();
    expect(listed.map((n) => n.name)).toEqual(['n1', 'n2', 'n3']);
    expect(listed[1]).toMatchObject({ labels: { zone: 'b' }, capacity: { memoryMib: 1024, sandboxes: 2 }, free: { memoryMib: 1024, sandboxes: 2 }, sandboxes: 0 });
    expect(listed[0]!.capacity.cpus).toBeGreaterThan(0);
  });

  it('places equal sandboxes on the least loaded nodes: one on each', async () => {
    // debug: a node's stderr then tells where a create is (printed if this test fails).
    for (let i = 0; i < 3; i++) spread.push(await Sandbox.builder(uniqueName('spread')).memory(128).logLevel('debug').cluster(cluster).create());
    const placed = await Promise.all(spread.map(async (sb) => (await sb.info()).node));
    expect(new Set(placed)).toEqual(new Set(['n1', 'n2', 'n3']));
    const listed = await cluster.nodes();
    expect(listed.map((n) => n.sandboxes)).toEqual([1, 1, 1]);
    expect(listed[0]!.free).toEqual({ memoryMib: 1024 - 128, sandboxes: 1 });
    const all = await Sandbox.list({ cluster });
    expect(all.filter((s) => s.name.startsWith('spread-')).map((s) => [s.status, s.node])).toEqual(expect.arrayContaining([['running', 'n1'], ['running', 'n2'], ['running', 'n3']]));
  });

  it('places by labels, and says E_NO_CAPACITY naming what was asked when no node fits', async () => {
    const sb = await Sandbox.builder(uniqueName('zone-b')).memory(128).cluster(cluster).placement({ labels: { zone: 'b' } }).create();
    try {
      expect((await sb.info()).node).toBe('n2');
      // n2 now runs two: it is full, and it is the only zone b.
      const full = Sandbox.builder(uniqueName('zone-b')).memory(128).cluster(cluster).placement({ labels: { zone: 'b' } }).create();
      await expect(full).rejects.toMatchObject({ code: 'E_NO_CAPACITY', message: expect.stringContaining('zone=b') });
      const nowhere = Sandbox.builder(uniqueName('nowhere')).memory(4096).cluster(cluster).create();
      await expect(nowhere).rejects.toMatchObject({ code: 'E_NO_CAPACITY', message: expect.stringContaining('4096 MiB') });
      await sb.shell('echo kept > /root/kept.txt; echo logged');
    } finally {
      await sb.stop();
    }
    // Stopped, it still holds its name until removed, wherever it ran.
    expect((await Sandbox.get(sb.name, { cluster })).config.name).toBe(sb.name);
    expect((await sb.info()).status).toBe('stopped');
    await expect(Sandbox.remove(uniqueName('never'), { cluster })).rejects.toMatchObject({ code: 'E_SANDBOX_NOT_FOUND' });
    // Its recorded output and its disk stay on its node: start() boots it there again.
    expect((await sb.logs()).map((e) => Buffer.from(e.data).toString()).join('')).toContain('logged');
    const again = await sb.start();
    try {
      expect((await again.info()).node).toBe('n2');
      expect((await again.fs().readText('/root/kept.txt')).trim()).toBe('kept');
      await expect(Sandbox.remove(sb.name, { cluster })).rejects.toMatchObject({ code: 'E_ILLEGAL_STATE' });
    } finally {
      await again.stop();
    }
    await Sandbox.remove(sb.name, { cluster });
    await expect(Sandbox.get(sb.name, { cluster })).rejects.toMatchObject({ code: 'E_SANDBOX_NOT_FOUND' });
  });

  it('undoes a create whose caller gave up: nothing left running, the name free', async () => {
    const name = uniqueName('gave-up');
    await expect(Sandbox.builder(name).memory(128).cluster(cluster).create({ timeoutMs: 1 })).rejects.toMatchObject({ code: 'E_TIMEOUT' });
    await expect(Sandbox.get(name, { cluster })).rejects.toMatchObject({ code: 'E_SANDBOX_NOT_FOUND' });
    expect((await cluster.nodes()).reduce((n, x) => n + x.sandboxes, 0)).toBe(3);
  });

  it('runs execs and streams on every node, with stdin, back-pressure and errors that keep their code', async () => {
    for (const sb of spread) {
      const r = await sb.exec('sh', ['-c', 'echo out; echo err >&2; exit 3']);
      expect([r.code, r.stdout, r.stderr]).toEqual([3, 'out\n', 'err\n']);
    }
    const sb = spread[0]!;
    const stream = await sb.execStream('cat', [], { stdin: 'pipe' });
    for (let i = 0; i < 50; i++) await stream.write(`line ${i}\n`);
    await stream.end();
    let text = '';
    for await (const item of stream) if (item.type === 'stdout') text += Buffer.from(item.data).toString();
    expect(text.split('\n').filter(Boolean)).toHaveLength(50);
    // Past the 2 MiB output window: the guest waits for the reader's acks, which cross NATS.
    const big = await sb.execStream('head', ['-c', String(6 * 1024 * 1024), '/dev/zero']);
    let bytes = 0;
    for await (const item of big) if (item.type === 'stdout') bytes += item.data.byteLength;
    expect(bytes).toBe(6 * 1024 * 1024);
    expect((await big.exited).code).toBe(0);
    // A collected exec: output past one NATS message, stdin text, a timeout, a start error.
    const collected = await sb.exec('sh', ['-c', 'head -c 3000000 /dev/zero | tr "\\0" a; echo done >&2']);
    expect([collected.code, collected.stdoutBytes.byteLength, collected.stdout.slice(0, 3), collected.stderr]).toEqual([0, 3_000_000, 'aaa', 'done\n']);
    expect(await sb.exec('cat', [], { stdin: 'fed\n' })).toMatchObject({ code: 0, stdout: 'fed\n' });
    // Past 64 KiB stdin goes by writes (acked as the guest takes it), not with the request.
    expect((await sb.exec('wc', ['-c'], { stdin: new Uint8Array(200_000) })).stdout.trim()).toBe('200000');
    expect(await sb.exec('sleep', ['30'], { timeoutMs: 200 })).toMatchObject({ timedOut: true, signal: 9 });
    await expect(sb.exec('no-such-command')).rejects.toMatchObject({ code: 'E_EXEC_START' });
    await sb.fs().write('/tmp/x.txt', 'across the wire');
    expect(await sb.fs().readText('/tmp/x.txt')).toBe('across the wire');
    await expect(sb.fs().readText('/nope')).rejects.toMatchObject({ code: 'E_FS' });
    await sb.pause();
    expect((await sb.info()).status).toBe('paused');
    await sb.resume();
    expect((await sb.exec('true')).code).toBe(0);
  });

  it('is reached by name from a second client process', async () => {
    const target = spread[1]!;
    const child = spawn(process.execPath, ['--import', 'tsx', CLIENT, nats.urls.join(','), APP_USER.user, APP_USER.pass, target.name], { stdio: ['ignore', 'pipe', 'pipe'], env: process.env });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d));
    child.stderr.on('data', (d: Buffer) => (err += d));
    const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
    expect(code, err).toBe(0);
    const seen = JSON.parse(out.trim()) as Record<string, unknown>;
    expect(seen).toMatchObject({ node: (await target.info()).node, status: 'running', code: 0, stdout: expect.stringMatching(/^from-/), echoed: 'line one\n' });
    expect(seen.listed).toEqual(expect.arrayContaining(spread.map((s) => s.name)));
  });

  it('answers the CLI with --nats: ls, inspect, nodes and exec across the cluster', async () => {
    process.env.CORRAL_NATS_USER = APP_USER.user;
    process.env.CORRAL_NATS_PASSWORD = APP_USER.pass;
    try {
      const ls = await corral('--nats', nats.urls.join(','), 'ls');
      expect(ls.code, ls.stderr).toBe(0);
      const rows = (ls.json as { name: string; node: string; status: string }[]).filter((r) => r.name.startsWith('spread-'));
      expect(rows.map((r) => [r.status, r.node]).sort()).toEqual([['running', 'n1'], ['running', 'n2'], ['running', 'n3']]);
      const inspect = await corral('--nats', nats.urls[1]!, 'inspect', spread[1]!.name);
      expect(inspect.json).toMatchObject({ name: spread[1]!.name, status: 'running', node: (await spread[1]!.info()).node });
      const listed = await corral('--nats', nats.urls[2]!, 'nodes');
      expect((listed.json as { name: string }[]).map((n) => n.name)).toEqual(['n1', 'n2', 'n3']);
      const exec = await corral('--nats', nats.urls[0]!, 'exec', spread[1]!.name, '--', 'sh', '-c', 'echo cli; exit 4');
      expect([exec.code, exec.json.stdout]).toEqual([4, 'cli\n']);
      const logs = await corral('--nats', nats.urls[0]!, 'logs', spread[1]!.name);
      expect(logs.code, logs.stderr).toBe(0);
      expect((logs.json as { text: string }[]).map((e) => e.text).join('')).toContain('cli\n');
      // create, cp and run through the cluster, each its own process.
      const name = `cli-${process.pid}`;
      const created = await corral('--nats', nats.urls[0]!, 'create', name, '--memory', '128');
      expect([created.code, created.json.status], created.stderr).toEqual([0, 'running']);
      try {
        const file = join(await mkdtemp(join(tmpdir(), 'corral-cp-')), 'in.txt');
        await writeFile(file, 'copied\n');
        const cp = await corral('--nats', nats.urls[0]!, 'cp', file, `${name}:/root/in.txt`);
        expect(cp.code, cp.stderr).toBe(0);
        const cat = await corral('--nats', nats.urls[2]!, 'exec', name, '--', 'cat', '/root/in.txt');
        expect(cat.json.stdout).toBe('copied\n');
        await rm(dirname(file), { recursive: true, force: true });
      } finally {
        expect((await corral('--nats', nats.urls[0]!, 'kill', name)).code).toBe(0);
        expect((await corral('--nats', nats.urls[0]!, 'rm', name)).code).toBe(0);
      }
      const unsupported = await corral('--nats', nats.urls[0]!, 'volume', 'ls');
      expect([unsupported.code, unsupported.json.error.code]).toEqual([2, 'E_USAGE']);
    } finally {
      delete process.env.CORRAL_NATS_USER;
      delete process.env.CORRAL_NATS_PASSWORD;
    }
  });

  it('keeps every event in a stream: a new client resumes after a seq with no gap and no duplicate', async () => {
    const sb = spread[2]!;
    const live = firstValueFrom(cluster.events$.pipe(filter((e) => e.name === sb.name && e.type === 'exec.exited')));
    const handle = firstValueFrom(sb.events$.pipe(filter((e) => e.type === 'exec.exited')));
    await sb.exec('echo', ['resume']);
    const exited = await live;
    // The handle's live event carries the same seq as the stream's copy.
    expect((await handle).seq).toBe(exited.seq);
    const first = await firstValueFrom(sb.events({ since: 0 }).pipe(take(6), toArray()));
    expect(first[0]!.type).toBe('sandbox.creating');
    for (let i = 1; i < first.length; i++) expect(first[i]!.seq).toBeGreaterThan(first[i - 1]!.seq);
    // A client restart: a new connection, resuming after the third event it had.
    const again = await Cluster.connect({ servers: nats.urls, ...APP_USER });
    try {
      const resumed = await firstValueFrom(again.events({ name: sb.name, since: first[2]!.seq }).pipe(take(3), toArray()));
      expect(resumed.map((e) => [e.seq, e.type])).toEqual(first.slice(3).map((e) => [e.seq, e.type]));
      const tail = await firstValueFrom(again.events({ name: sb.name, since: exited.seq - 1 }).pipe(take(1)));
      expect([tail.seq, tail.type]).toEqual([exited.seq, 'exec.exited']);
    } finally {
      await again.close();
    }
  });

  it('gives a name to one create only when two clients create it at once', async () => {
    const name = uniqueName('dup');
    const other = await Cluster.connect({ servers: nats.urls, ...APP_USER });
    try {
      const results = await Promise.allSettled([Sandbox.builder(name).memory(128).cluster(cluster).create(), Sandbox.builder(name).memory(128).cluster(other).create()]);
      const won = results.filter((r): r is PromiseFulfilledResult<Sandbox> => r.status === 'fulfilled');
      const lost = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
      expect(won).toHaveLength(1);
      expect(lost.map((r) => codeOf(r.reason))).toEqual(['E_SANDBOX_EXISTS']);
      // replace() takes the name over wherever its holder runs: that one is killed and removed.
      const first = won[0]!.value;
      const firstStopped = firstValueFrom(first.events$.pipe(filter((e) => e.type === 'sandbox.stopped')));
      const second = await Sandbox.builder(name).memory(128).cluster(other).replace().create();
      expect(await firstStopped).toMatchObject({ reason: 'killed' });
      expect((await Sandbox.get(name, { cluster })).config.name).toBe(name);
      expect((await second.exec('true')).code).toBe(0);
      await second.kill();
      await Sandbox.remove(name, { cluster: other });
    } finally {
      await other.close();
    }
  });

  it('drains a node: it takes no new sandboxes and its sandboxes stop (drained), each timed', async () => {
    const sb = spread[2]!;
    const node = (await sb.info()).node!;
    const report = await cluster.drain(node);
    expect(report.node).toBe(node);
    expect(report.sandboxes).toEqual([{ name: sb.name, ms: expect.any(Number), stopReason: 'drained' }]);
    expect(await sb.info()).toMatchObject({ status: 'stopped', stopReason: 'drained' });
    expect((await cluster.nodes()).find((n) => n.name === node)).toMatchObject({ draining: true, sandboxes: 0 });
    // Nothing left to move; a migrate that is no boolean is refused, naming the option.
    expect(await cluster.drain(node, { migrate: true })).toEqual({ node, sandboxes: [] });
    await expect(cluster.drain(node, { migrate: 'yes' as never })).rejects.toMatchObject({ code: 'E_INVALID_OPTION', message: expect.stringContaining('migrate') });
  });

  it('refuses a connection with wrong credentials, saying so', async () => {
    const bad = Cluster.connect({ servers: nats.urls, user: APP_USER.user, pass: 'wrong' });
    await expect(bad).rejects.toMatchObject({ code: 'E_CLUSTER', details: { reason: 'auth' }, message: expect.stringContaining('refused the credentials') });
    // A node too: it says why on its first line and exits.
    await expect(startNode(nats, 'intruder', ['--password', 'wrong'])).rejects.toThrow(/refused the credentials/);
    await expect(Cluster.connect({ servers: ['http://x'] })).rejects.toMatchObject({ code: 'E_INVALID_OPTION', message: expect.stringContaining('servers') });
  });

  it('reads the sandboxes of a SIGKILLed node stopped (node-lost) within 10 s, rejects calls to them with E_NODE_LOST and drops the node', async () => {
    const sb = spread[0]!;
    const node = (await sb.info()).node!;
    const proc = nodes.find((n) => n.name === node)!;
    const stopped = firstValueFrom(sb.events$.pipe(filter((e): e is Extract<SandboxEvent, { type: 'sandbox.stopped' }> => e.type === 'sandbox.stopped')));
    proc.child.kill('SIGKILL');
    const bound = setTimeout(() => proc.child.emit('error', new Error('no node-lost within 10 s')), 10_000);
    try {
      const e = await Promise.race([stopped, new Promise<never>((_, reject) => proc.child.once('error', reject))]);
      expect(e.reason).toBe('node-lost');
    } finally {
      clearTimeout(bound);
    }
    await expect(sb.exec('true')).rejects.toMatchObject({ code: 'E_NODE_LOST' });
    expect(await sb.info()).toMatchObject({ status: 'stopped', stopReason: 'node-lost', node });
    expect((await cluster.nodes()).map((n) => n.name)).not.toContain(node);
    // Any client reads it so, from the catalog.
    const row = (await Sandbox.list({ cluster })).find((s) => s.name === sb.name);
    expect(row).toMatchObject({ status: 'stopped', stopReason: 'node-lost' });
    const resumed = await firstValueFrom(cluster.events({ name: sb.name, since: 0, untilStopped: true }).pipe(toArray()));
    expect(resumed.at(-1)).toMatchObject({ type: 'sandbox.stopped', reason: 'node-lost' });
    await Sandbox.remove(sb.name, { cluster });
    // It comes back under its name, on its state dir: listed again, taking creates.
    nodes.push(await startNode(nats, node, ['--replicas', '3', '--memory', '1024', '--max-sandboxes', '2', '--heartbeat', '500'], proc.stateDir));
    expect((await cluster.nodes()).map((n) => n.name)).toContain(node);
    const back = await Sandbox.builder(uniqueName('back')).memory(128).cluster(cluster).placement({ labels: {} }).create();
    try {
      expect((await back.exec('true')).code).toBe(0);
    } finally {
      await back.kill();
    }
  });

  it('stops a node cleanly on SIGTERM: its sandboxes stop (requested) and it leaves the registry', async () => {
    const sb = spread[1]!;
    const node = (await sb.info()).node!;
    const stopped = firstValueFrom(sb.events$.pipe(filter((e): e is Extract<SandboxEvent, { type: 'sandbox.stopped' }> => e.type === 'sandbox.stopped')));
    await nodes.find((n) => n.name === node)!.stop('SIGTERM');
    expect((await stopped).reason).toBe('requested');
    expect((await cluster.nodes()).map((n) => n.name)).not.toContain(node);
    expect(await sb.info()).toMatchObject({ status: 'stopped', stopReason: 'requested', node });
  });
});
