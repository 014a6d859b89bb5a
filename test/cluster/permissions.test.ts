// The NATS permissions the README gives a node and a client are enough: one nats-server with
// JetStream whose users get only those, one `corral node`, a client doing the whole round
// (create, exec with a stream, a file watch, events from the stream, list, stop, logs, remove,
// drain).
import { firstValueFrom, take, toArray } from 'rxjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect } from '@nats-io/transport-node';
import { Cluster, Sandbox } from '../../src/index.ts';
import { APP_USER, startNatsCluster, startNode, type NatsCluster, type NodeProcess } from '../helpers/natsCluster.ts';
import { uniqueName } from '../helpers/sandbox.ts';

let nats: NatsCluster;
let node: NodeProcess | undefined;
let cluster: Cluster | undefined;

beforeAll(async () => {
  nats = await startNatsCluster(1, { restricted: true });
  try {
    node = await startNode(nats, 'p1', ['--memory', '1024', '--max-sandboxes', '1']);
    cluster = await Cluster.connect({ servers: nats.urls, ...APP_USER });
  } catch (err) {
    await node?.stop('SIGKILL');
    await nats.stop();
    throw err;
  }
});

afterAll(async () => {
  await cluster?.close();
  await node?.stop();
  await nats?.stop();
});

describe('a cluster whose NATS users hold only the documented permissions', () => {
  it('runs the whole round for a client and a node', async () => {
    const c = cluster!;
    const sb = await Sandbox.builder(uniqueName('perm')).memory(128).cluster(c).create();
    try {
      expect((await sb.info()).node).toBe('p1');
      const stream = await sb.execStream('cat', [], { stdin: 'pipe' });
      await stream.write('through\n');
      await stream.end();
      let text = '';
      for await (const item of stream) if (item.type === 'stdout') text += Buffer.from(item.data).toString();
      expect(text).toBe('through\n');
      // A file watch: its calls and its fs.watch events cross the cluster as exec's do.
      const w = await sb.fs().watch('/tmp');
      await sb.fs().write('/tmp/watched', 'x');
      for await (const e of w) if (e.type === 'create' && e.path === '/tmp/watched') break;
      await w.stop();
      expect(w.endReason).toBe('stopped');
      const first = await firstValueFrom(sb.events({ since: 0 }).pipe(take(2), toArray()));
      expect(first[0]!.type).toBe('sandbox.creating');
      expect((await Sandbox.list({ cluster: c })).map((s) => s.name)).toContain(sb.name);
    } finally {
      await sb.stop();
    }
    expect((await sb.logs()).map((e) => Buffer.from(e.data).toString()).join('')).toContain('through');
    await Sandbox.remove(sb.name, { cluster: c });
    expect(await c.drain('p1')).toEqual({ node: 'p1', sandboxes: [] });
  });

  it('keeps a client from answering as a node', async () => {
    const nc = await connect({ servers: nats.urls, ...APP_USER });
    try {
      const sub = nc.subscribe('corral.node.p1.create');
      await expect(sub.closed).resolves.toMatchObject({ message: expect.stringContaining('Permissions Violation') });
    } finally {
      await nc.close();
    }
  });
});
