// The CLI's background, port and lifetime verbs on a cluster's sandbox (`corral --nats URL
// <verb>`): one nats-server with JetStream, one `corral node`, a sandbox created through the
// cluster with the SDK (with a port, which the CLI's create takes too), then each verb a corral
// process of its own with the app's credentials in its environment. A real VM on the node.
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { Cluster, Sandbox } from '../../src/index.ts';
import { corral, corralWith, watcher } from '../helpers/cli.ts';
import { APP_USER, startNatsCluster, startNode, type NatsCluster, type NodeProcess } from '../helpers/natsCluster.ts';
import { freePort } from '../helpers/net.ts';
import { uniqueName } from '../helpers/sandbox.ts';

let nats: NatsCluster;
let node: NodeProcess | undefined;
let cluster: Cluster | undefined;

beforeAll(async () => {
  nats = await startNatsCluster(1);
  try {
    node = await startNode(nats, 'c1');
    cluster = await Cluster.connect({ servers: nats.urls, ...APP_USER });
  } catch (err) {
    await node?.stop('SIGKILL');
    await nats.stop();
    throw err;
  }
  process.env.CORRAL_NATS_USER = APP_USER.user;
  process.env.CORRAL_NATS_PASSWORD = APP_USER.pass;
});

afterAll(async () => {
  delete process.env.CORRAL_NATS_USER;
  delete process.env.CORRAL_NATS_PASSWORD;
  await cluster?.close();
  await node?.stop();
  await nats?.stop();
});

describe('the CLI with --nats', () => {
  it('starts, lists and kills a background command, publishes a port and sets the max duration of a cluster sandbox', async () => {
    const name = uniqueName('cli-nats');
    const on = (...args: string[]) => corral('--nats', nats.urls[0]!, ...args);
    // A port at create gives the VM its NIC, which publish needs.
    const sb = await Sandbox.builder(name).memory(128).port(await freePort(), 80).cluster(cluster!).create();
    try {
      const started = await on('exec', name, '-d', '--', 'sleep', '600');
      expect(started).toMatchObject({ code: 0, json: { id: expect.any(Number), sandbox: name } });
      const id: number = started.json.id;
      expect((await on('execs', name)).json).toContainEqual(expect.objectContaining({ id, argv: ['sleep', '600'], background: true }));
      expect(await on('exec-kill', name, String(id), '--signal', 'TERM')).toMatchObject({ code: 0, json: { id, signal: 15 } });
      await vi.waitFor(async () => expect((await on('execs', name)).json.some((e: { id: number }) => e.id === id)).toBe(false), { timeout: 30_000, interval: 250 });

      // A server started in the background, reached through a port published on the node (this machine's loopback).
      expect(await on('exec', name, '--', 'sh', '-c', 'mkdir -p /www && echo via-node > /www/index.html')).toMatchObject({ code: 0 });
      const httpd = await on('exec', name, '-d', '--', 'httpd', '-f', '-p', '8080', '-h', '/www');
      expect(httpd.code).toBe(0);
      const port = await freePort();
      expect(await on('publish', name, `${port}:8080`)).toMatchObject({ code: 0, json: { hostPort: port, guestPort: 8080 } });
      await vi.waitFor(async () => expect(await (await fetch(`http://127.0.0.1:${port}/index.html`)).text()).toBe('via-node\n'), { timeout: 30_000, interval: 250 });
      expect(await on('unpublish', name, String(port))).toMatchObject({ code: 0, json: { unpublished: true } });
      await expect(fetch(`http://127.0.0.1:${port}/index.html`)).rejects.toThrow();

      // attach from another process, through the cluster: the line piped in reaches the command.
      const reader = await on('exec', name, '-d', '-i', '--', 'sh', '-c', 'echo before; read x; echo "got $x"; exit 3');
      expect(reader.code, reader.stderr).toBe(0);
      const attached = await corralWith('hello\n', '--nats', nats.urls[0]!, 'attach', name, String(reader.json.id));
      expect(attached).toMatchObject({ code: 3, json: { id: reader.json.id, code: 3, stdout: 'before\ngot hello\n', lastSeq: expect.any(Number) } });
      expect(await on('publish', name, '80')).toMatchObject({ code: 2, json: { error: { code: 'E_INVALID_OPTION', message: expect.stringContaining('HOSTPORT:GUESTPORT') } } });
      // The lifetime limit drains the sandbox: no command runs, so it stops at once.
      expect(await on('exec-kill', name, String(httpd.json.id))).toMatchObject({ code: 0, json: { signal: 9 } });
      await vi.waitFor(async () => expect((await on('execs', name)).json).toEqual([]), { timeout: 30_000, interval: 250 });
      expect(await on('set-max-duration', name, '1')).toMatchObject({ code: 0, json: { maxDurationMs: 1000 } });
      await vi.waitFor(async () => expect((await on('inspect', name)).json).toMatchObject({ status: 'stopped', stopReason: 'max-duration' }), { timeout: 60_000, interval: 500 });
    } finally {
      await sb.kill();
      await Sandbox.remove(name, { cluster: cluster! });
    }
  });

  it('watches a directory of a cluster sandbox with fs watch, until Ctrl-C', async () => {
    const name = uniqueName('cli-nats-watch');
    const sb = await Sandbox.builder(name).memory(128).cluster(cluster!).create();
    try {
      const w = watcher('--nats', nats.urls[0]!, 'fs', 'watch', name, '/tmp');
      await w.until(() => w.err.includes('watching /tmp'));
      await sb.exec('touch', ['/tmp/through-nats']);
      await w.until(() => w.out.includes('create /tmp/through-nats\n'));
      w.child.kill('SIGINT');
      expect(await w.exited).toBe(0);
      expect(w.err).toContain('watch ended: stopped');
    } finally {
      await sb.kill();
      await Sandbox.remove(name, { cluster: cluster! });
    }
  });
});
