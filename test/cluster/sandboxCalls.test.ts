// A node's sandbox answers its plain calls (exec, stdin, fs…) in its worker thread, on the
// worker's own NATS connection (src/cluster/SandboxCalls.ts), and the node's guarantees hold
// there too: a request asked twice is done once, errors keep their code, a stopped sandbox's
// calls go to the node, a call made while the sandbox moves waits and then follows it. Two
// `corral node` processes on a real nats-server whose users hold only the README's permissions.
import { connect, headers, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cluster, Sandbox } from '../../src/index.ts';
import { REQUEST_ID_HEADER } from '../../src/cluster/replies.ts';
import { decode, encode, nodeSubject, sandboxVerb } from '../../src/cluster/protocol.ts';
import { APP_USER, startNatsCluster, type NatsCluster, type NodeProcess } from '../helpers/natsCluster.ts';
import { showNodeStderrOnFailure, startNodes } from '../helpers/nodeFixture.ts';
import { uniqueName } from '../helpers/sandbox.ts';

let nats: NatsCluster;
const nodes: NodeProcess[] = [];
let cluster: Cluster;
let nc: NatsConnection;

beforeAll(async () => {
  nats = await startNatsCluster(1, { restricted: true });
  cluster = await startNodes(nats, nodes, [['w1', 'a'], ['w2', 'b']], ['--memory', '1024', '--max-sandboxes', '2', '--heartbeat', '500']);
  nc = await connect({ servers: nats.urls, ...APP_USER });
});

afterAll(async () => {
  await nc?.close();
  await cluster?.close();
  await Promise.all(nodes.map((n) => n.stop()));
  await nats?.stop();
});

// A failing test shows what the nodes said.
showNodeStderrOnFailure(nodes);

/** One raw request to sandbox `name`'s worker on node `node`, with request id `id`: its reply, decoded. */
async function askWorker(node: string, name: string, method: string, args: unknown[], id: string): Promise<unknown> {
  const h = headers();
  h.set(REQUEST_ID_HEADER, id);
  const reply = await nc.request(nodeSubject(node, `${sandboxVerb(name)}.${method}`), encode({ name, args }), { timeout: 10_000, headers: h });
  return decode(reply.data);
}

describe("a cluster sandbox's worker", () => {
  it('answers its exec itself, once per request id, with errors that keep their code', async () => {
    const sb = await Sandbox.builder(uniqueName('wcall')).memory(128).cluster(cluster).create();
    try {
      const node = (await sb.info()).node!;
      expect((await cluster.nodes()).find((n) => n.name === node)?.workerCalls).toBe(true);
      const execId = 424242;
      // A command that outlives the three asks below: its exec id stays in use meanwhile.
      const req = { argv: ['sleep', '30'], stdin: false, mergeStderr: false };
      // Asked twice with one id: one exec (a second would say its exec id is in use).
      const first = await askWorker(node, sb.name, 'exec', [execId, req], 'repeat-1');
      expect(first).toEqual({ result: { stdinTaken: false } });
      expect(await askWorker(node, sb.name, 'exec', [execId, req], 'repeat-1')).toEqual(first);
      // Asked again under another id, it is done again, and refused with its code.
      expect(await askWorker(node, sb.name, 'exec', [execId, req], 'repeat-2')).toMatchObject({ error: { code: 'E_EXEC_START' } });
      // A file call that fails keeps its code too, and the SDK's calls work on this way.
      expect(await askWorker(node, sb.name, 'fs', [{ op: 'stat', path: '/no/such/file' }], 'fs-1')).toMatchObject({ error: { code: 'E_FS', details: { errno: 'ENOENT' } } });
      expect((await sb.exec('sh', ['-c', 'echo hi; echo oops >&2; exit 3'])).toJSON()).toMatchObject({ code: 3, stdout: 'hi\n', stderr: 'oops\n' });
      await sb.fs().write('/root/w.txt', 'written');
      expect(await sb.fs().readText('/root/w.txt')).toBe('written');
      expect((await sb.exec('cat', [], { stdin: 'through stdin' })).stdout).toBe('through stdin');

      // Stopped, it answers no more there; the node answers, as for any stopped sandbox.
      await sb.stop();
      const call = { name: sb.name, args: [execId + 1, req] };
      await expect(cluster.request(node, 'sb.exec', call, { first: `${sandboxVerb(sb.name)}.exec` })).rejects.toMatchObject({ code: 'E_ILLEGAL_STATE' });
      for (;;) {
        const gone = await askWorker(node, sb.name, 'exec', [execId + 2, req], `after-stop-${Date.now()}`).then(
          () => false,
          (err: Error) => /no responders/i.test(err.message),
        );
        if (gone) break;
        await new Promise((r) => setTimeout(r, 50));
      }
      await expect(cluster.request(node, 'sb.exec', call, { first: `${sandboxVerb(sb.name)}.exec` })).rejects.toMatchObject({ code: 'E_ILLEGAL_STATE' });
    } finally {
      await sb.kill().catch(() => {});
      await Sandbox.remove(sb.name, { cluster });
    }
  });

  it('holds a call made while its sandbox moves, which then runs on the node it moved to', async () => {
    const sb = await Sandbox.builder(uniqueName('wmove')).memory(128).cluster(cluster).placement({ labels: { zone: 'a' } }).create();
    try {
      expect((await sb.info()).node).toBe('w1');
      await sb.exec('true');
      // The snapshot is taken once the move holds the calls: an exec sent then waits for its end.
      const snapshotted = new Promise<void>((resolve) => {
        const sub = cluster.events({ name: sb.name }).subscribe((e) => {
          if (e.type === 'sandbox.snapshotted') {
            sub.unsubscribe();
            resolve();
          }
        });
      });
      const drained = cluster.drain('w1', { migrate: true });
      await snapshotted;
      const during = await sb.exec('sh', ['-c', 'echo during; hostname']);
      expect(during.stdout).toBe(`during\n${sb.name}\n`);
      expect(await drained).toMatchObject({ node: 'w1', sandboxes: [{ name: sb.name, movedTo: 'w2' }] });
      expect(await sb.info()).toMatchObject({ status: 'running', node: 'w2' });
      expect((await sb.exec('echo', ['after'])).stdout).toBe('after\n');
    } finally {
      await sb.kill().catch(() => {});
      await Sandbox.remove(sb.name, { cluster });
    }
  });
});
