// A request or its answer lost on the way (NATS delivers each at most once) costs a resend,
// not a call that waits for ever; and the node does the work of a request asked twice once.
// A real nats-server with JetStream; the "node" here is a plain NATS responder that drops
// what the test tells it to: no real network loses a chosen message on demand.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, type Msg, type NatsConnection } from '@nats-io/transport-node';
import { Kvm } from '@nats-io/kv';
import { Cluster } from '../../src/index.ts';
import { REQUEST_ID_HEADER, ReplyCache } from '../../src/cluster/replies.ts';
import { NODES_BUCKET, decode, encode, nodeSubject, type NodeRecord } from '../../src/cluster/protocol.ts';
import { APP_USER, startNatsCluster, type NatsCluster } from '../helpers/natsCluster.ts';

let nats: NatsCluster;
let cluster: Cluster;
let nc: NatsConnection;
let heartbeat: NodeJS.Timeout;

const record = (name: string): NodeRecord => ({
  name,
  labels: {},
  capacity: { memoryMib: 1024, cpus: 1, sandboxes: 1 },
  free: { memoryMib: 1024, sandboxes: 1 },
  sandboxes: 0,
  heartbeatMs: 200,
  startedAt: Date.now(),
  draining: false,
});

beforeAll(async () => {
  nats = await startNatsCluster(1);
  try {
    cluster = await Cluster.connect({ servers: nats.urls, ...APP_USER, resendAfterMs: 300 });
    // A registered node with a current heartbeat: the client must take it for alive.
    nc = await connect({ servers: nats.urls, ...APP_USER });
    const kv = await new Kvm(nc).open(NODES_BUCKET);
    await kv.put('flaky', encode(record('flaky')));
    // One in flight as afterAll closes the connection rejects: that is the end, not a failure.
    heartbeat = setInterval(() => void kv.put('flaky', encode(record('flaky'))).catch(() => {}), 200);
  } catch (err) {
    await nats.stop();
    throw err;
  }
});

afterAll(async () => {
  clearInterval(heartbeat);
  await nc?.close();
  await cluster?.close();
  await nats?.stop();
});

/** A responder on `verb` of node "flaky" that drops the first `drop` requests it gets, and keeps the ids it saw. */
function flaky(verb: string, drop: number, answer: (payload: unknown) => unknown) {
  const ids: string[] = [];
  const sub = nc.subscribe(nodeSubject('flaky', verb), {
    callback: (_err, msg: Msg) => {
      ids.push(msg.headers?.get(REQUEST_ID_HEADER) ?? '');
      if (ids.length <= drop) return;
      msg.respond(encode({ result: answer(decode(msg.data)) }));
    },
  });
  return { ids, stop: () => sub.unsubscribe() };
}

describe('a request to a node whose request or answer was lost', () => {
  it('is asked again with the same request id, and gets its answer', async () => {
    await nc.flush();
    const r = flaky('echo', 2, (p) => p);
    try {
      await expect(cluster.request('flaky', 'echo', { n: 1 }, { timeoutMs: 60_000 })).resolves.toEqual({ n: 1 });
      expect(r.ids).toHaveLength(3);
      expect(new Set(r.ids).size).toBe(1);
      expect(r.ids[0]).toMatch(/^\w{10,}$/);
    } finally {
      r.stop();
    }
  });

  it('gives up at its deadline with E_TIMEOUT saying how often it asked', async () => {
    const r = flaky('mute', Infinity, () => null);
    await nc.flush();
    try {
      const err = await cluster.request('flaky', 'mute', {}, { timeoutMs: 1000 }).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'E_TIMEOUT', message: expect.stringMatching(/did not answer mute within 1000 ms \(asked \d+ times\)/) });
      expect(r.ids.length).toBeGreaterThanOrEqual(2);
    } finally {
      r.stop();
    }
  });

  it('asks a sandbox worker\'s verb first (again there when its answer is lost), and the node\'s verb where nobody answers it', async () => {
    const worker = flaky('sandbox.sb1.exec', 1, () => 'from the worker');
    const main = flaky('sb.exec', 0, () => 'from the node');
    await nc.flush();
    try {
      // Answered there (its first answer lost: asked there again), the node's verb untouched.
      await expect(cluster.request('flaky', 'sb.exec', {}, { first: 'sandbox.sb1.exec', timeoutMs: 60_000 })).resolves.toBe('from the worker');
      expect(worker.ids).toHaveLength(2);
      expect(new Set(worker.ids).size).toBe(1);
      expect(main.ids).toEqual([]);
      // Nobody there: the node's verb (nobody took the request, so its id goes on there).
      worker.stop();
      await nc.flush();
      await expect(cluster.request('flaky', 'sb.exec', {}, { first: 'sandbox.sb1.exec', timeoutMs: 60_000 })).resolves.toBe('from the node');
      expect(main.ids).toHaveLength(1);
    } finally {
      worker.stop();
      main.stop();
    }
  });

  it('says E_NODE_LOST when nobody answers on the node\'s subjects', async () => {
    await expect(cluster.request('flaky', 'nobody-serves-this', {}, { timeoutMs: 5000 })).rejects.toMatchObject({ code: 'E_NODE_LOST' });
  });
});

describe('a node asked the same request twice (ReplyCache)', () => {
  const reply = (s: string) => new TextEncoder().encode(s);

  it('does the work once: a repeat in flight joins it, a later one gets the kept answer', async () => {
    const cache = new ReplyCache();
    let runs = 0;
    let finish!: (r: Uint8Array) => void;
    const work = () => {
      runs++;
      return new Promise<Uint8Array>((resolve) => (finish = resolve));
    };
    const first = cache.answer('a', work);
    const repeat = cache.answer('a', work);
    finish(reply('done'));
    expect(new TextDecoder().decode(await first)).toBe('done');
    expect(await repeat).toBe(await first);
    expect(new TextDecoder().decode(await cache.answer('a', work))).toBe('done');
    expect(runs).toBe(1);
    // No id: no dedupe.
    await cache.answer(undefined, async () => (runs++, reply('x')));
    await cache.answer(undefined, async () => (runs++, reply('x')));
    expect(runs).toBe(3);
  });

  it('refuses a repeat whose answer it no longer keeps rather than doing it again (by age, by bytes)', async () => {
    let now = 0;
    const cache = new ReplyCache({ keepMs: 1000, maxBytes: 8 }, () => now);
    let runs = 0;
    const work = async () => (runs++, reply('1234'));
    await cache.answer('old', work);
    now = 1500;
    const again = decode<{ error: { code: string; message: string } }>(await cache.answer('old', work));
    expect(again.error).toMatchObject({ code: 'E_CLUSTER', message: expect.stringContaining('not done twice') });
    await cache.answer('b', work);
    await cache.answer('c', work);
    await cache.answer('d', work); // 12 bytes > 8: b goes
    expect(decode<{ error: { code: string } }>(await cache.answer('b', work)).error.code).toBe('E_CLUSTER');
    expect(runs).toBe(4);
    expect(cache.size).toMatchObject({ inflight: 0, kept: 2, bytes: 8 });
  });

  it('answers a work that throws with its error, and keeps that answer too', async () => {
    const cache = new ReplyCache();
    const failing = () => Promise.reject(Object.assign(new Error('boom'), { code: 'E_X' }));
    const r = decode<{ error: { message: string } }>(await cache.answer('f', failing));
    expect(r.error.message).toBe('boom');
    expect(cache.size.inflight).toBe(0);
  });
});
