// `corral --nats URL serve`: the HTTP + WebSocket API in front of a cluster, run as its own
// process the way an operator runs it, over a real nats-server with JetStream and one
// `corral node` process; a real VM created, used and removed over HTTP.
import { spawn, type ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { APP_USER, endChild, startNatsCluster, startNode, type NatsCluster, type NodeProcess } from '../helpers/natsCluster.ts';
import { BIN } from '../helpers/cli.ts';
import { uniqueName } from '../helpers/sandbox.ts';

let nats: NatsCluster;
let node: NodeProcess | undefined;
let server: ChildProcess | undefined;
let base = '';

beforeAll(async () => {
  nats = await startNatsCluster(1);
  try {
    node = await startNode(nats, 's1', ['--memory', '1024', '--max-sandboxes', '1']);
    server = spawn(process.execPath, [BIN, '--json', '--nats', nats.urls[0]!, 'serve', '--port', '0'], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, CORRAL_NATS_USER: APP_USER.user, CORRAL_NATS_PASSWORD: APP_USER.pass },
    });
    base = await new Promise<string>((resolve, reject) => {
      let out = '';
      let err = '';
      server!.stderr!.on('data', (d: Buffer) => (err += d.toString()));
      server!.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('\n')) resolve((JSON.parse(out.split('\n')[0]!) as { url: string }).url);
      });
      server!.once('exit', (code) => reject(new Error(`corral serve exited (${code}): ${out}${err}`)));
    });
  } catch (err) {
    if (server) await endChild(server, 'SIGKILL');
    await node?.stop('SIGKILL');
    await nats.stop();
    throw err;
  }
});

afterAll(async () => {
  if (server) await endChild(server);
  await node?.stop();
  await nats?.stop();
});

async function api(method: string, path: string, body?: unknown): Promise<{ status: number; body: any }> {
  const r = await fetch(`${base}${path}`, { method, ...(body !== undefined ? { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) } : {}) });
  const text = await r.text();
  return { status: r.status, body: text ? JSON.parse(text) : undefined };
}

describe('corral serve in front of a cluster', () => {
  it('creates on a node, runs a command, lists, streams events and removes, over HTTP', async () => {
    const name = uniqueName('api');
    const created = await api('POST', '/v1/sandboxes', { config: { name, memoryMib: 128 } });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    expect(created.body).toMatchObject({ name, status: 'running', node: 's1' });
    // Its events over the WebSocket, from the cluster's stream (since 0: from its first).
    const ws = new WebSocket(`${base.replace('http', 'ws')}/v1/events?name=${name}&since=0`);
    const first = await new Promise<{ type: string; seq: number }>((resolve, reject) => {
      ws.once('message', (m) => resolve(JSON.parse(m.toString())));
      ws.once('error', reject);
    });
    ws.close();
    expect(first).toMatchObject({ type: 'sandbox.creating', seq: expect.any(Number) });

    const ran = await api('POST', `/v1/sandboxes/${name}/exec`, { command: 'sh', args: ['-c', 'echo via-cluster; exit 5'] });
    expect([ran.status, ran.body.code, ran.body.stdout]).toEqual([200, 5, 'via-cluster\n']);
    const listed = await api('GET', '/v1/sandboxes');
    expect(listed.body.find((s: { name: string }) => s.name === name)).toMatchObject({ status: 'running', node: 's1' });
    // Errors keep their code and status, as without a cluster.
    const full = await api('POST', '/v1/sandboxes', { config: { name: uniqueName('full'), memoryMib: 128 } });
    expect([full.status, full.body.error.code]).toEqual([503, 'E_NO_CAPACITY']);
    const missing = await api('GET', `/v1/sandboxes/${uniqueName('none')}`);
    expect([missing.status, missing.body.error.code]).toEqual([404, 'E_SANDBOX_NOT_FOUND']);

    expect((await api('POST', `/v1/sandboxes/${name}/kill`)).body).toMatchObject({ status: 'stopped', node: 's1' });
    expect((await api('DELETE', `/v1/sandboxes/${name}`)).status).toBe(204);
    expect((await api('GET', `/v1/sandboxes/${name}`)).status).toBe(404);
  });
});
