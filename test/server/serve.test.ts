// `corral serve` driven over HTTP and WebSocket, as another process or language would: real
// server on loopback, real supervisor, a real VM behind it.
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { CorralServer } from '../../src/server/CorralServer.ts';
import type { Supervisor } from '../../src/supervisor/Supervisor.ts';
import { testSupervisor, uniqueName } from '../helpers/sandbox.ts';

const TOKEN = 'test-token-0123456789abcdef';

describe('corral serve', () => {
  let sup: Supervisor;
  let server: CorralServer;
  const name = uniqueName('srv');
  const api = async (method: string, path: string, body?: unknown, token: string | null = TOKEN) => {
    const res = await fetch(`${server.url}${path}`, {
      method,
      headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(body ? { 'content-type': 'application/json' } : {}) },
      ...(body ? { body: JSON.stringify(body) } : {}),
    });
    const text = await res.text();
    return { status: res.status, body: text ? JSON.parse(text) : undefined };
  };

  beforeAll(async () => {
    sup = testSupervisor();
    server = await CorralServer.listen({ supervisor: sup, token: TOKEN });
  });
  afterAll(async () => {
    await server?.close();
    await sup?.close();
  });

  it('binds loopback by default and refuses another address without a token', async () => {
    expect(server.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    await expect(CorralServer.listen({ supervisor: sup, host: '0.0.0.0' })).rejects.toMatchObject({ code: 'E_INVALID_OPTION' });
    expect((await api('GET', '/v1/sandboxes', undefined, null)).status).toBe(401);
    expect((await api('GET', '/v1/sandboxes', undefined, 'wrong-token-0123456789abcdef')).status).toBe(401);
    expect((await api('GET', '/v1/nothing')).body.error.code).toBe('E_ROUTE_NOT_FOUND');
  });

  it('creates, lists, execs, pauses, resumes, reads logs and metrics, streams events, stops and removes', async () => {
    const created = await api('POST', '/v1/sandboxes', { config: { name, labels: { via: 'http' } } });
    expect(created.status).toBe(201);
    expect(created.body).toMatchObject({ name, status: 'running' });
    expect((await api('POST', '/v1/sandboxes', { config: { name } })).body.error.code).toBe('E_SANDBOX_EXISTS');

    const list = await api('GET', '/v1/sandboxes?label=via=http');
    expect(list.body.map((s: { name: string }) => s.name)).toEqual([name]);

    // Events over WebSocket, from the start of the buffer.
    const events: Array<{ type: string; seq: number; execId?: number; data?: { $b64: string } }> = [];
    const ws = new WebSocket(`${server.url.replace('http', 'ws')}/v1/events?name=${name}&since=0`, { headers: { authorization: `Bearer ${TOKEN}` } });
    ws.on('message', (m) => events.push(JSON.parse(String(m))));
    await new Promise((r, j) => ws.once('open', r).once('error', j));

    const asUser = await api('POST', `/v1/sandboxes/${name}/exec`, { command: 'sh', args: ['-c', 'id -u; test -t 1 && echo tty'], user: '65534', tty: true });
    expect(asUser.body).toMatchObject({ code: 0, stdout: '65534\r\ntty\r\n' });
    expect((await api('POST', `/v1/sandboxes/${name}/exec`, { command: 'true', user: 'bad user' })).body.error.code).toBe('E_INVALID_OPTION');
    const r = await api('POST', `/v1/sandboxes/${name}/exec`, { command: 'sh', args: ['-c', 'echo out; echo err >&2; exit 4'] });
    expect(r.body).toMatchObject({ code: 4, stdout: 'out\n', stderr: 'err\n', reason: 'exited' });
    const withStdin = await api('POST', `/v1/sandboxes/${name}/exec`, { command: 'cat', stdin: 'piped' });
    expect(withStdin.body.stdout).toBe('piped');
    await runRoute();
    await filesRoundTrip();

    expect((await api('POST', `/v1/sandboxes/${name}/pause`)).body).toMatchObject({ status: 'paused' });
    expect((await api('POST', `/v1/sandboxes/${name}/exec`, { command: 'true' })).status).toBe(409);
    expect((await api('POST', `/v1/sandboxes/${name}/resume`)).body).toMatchObject({ status: 'running' });
    const metrics = await api('GET', `/v1/sandboxes/${name}/metrics`);
    expect(metrics.body.memory.rssBytes).toBeGreaterThan(0);

    const stopped = await api('POST', `/v1/sandboxes/${name}/stop`);
    expect(stopped.body).toMatchObject({ status: 'stopped', stopReason: 'requested' });
    await new Promise<void>((resolve) => (ws.readyState === ws.CLOSED ? resolve() : ws.once('close', () => resolve())));

    const types = events.map((e) => e.type);
    expect(types[0]).toBe('sandbox.creating');
    expect(events.map((e) => e.seq)).toEqual(events.map((_, i) => i + 1));
    expect(types).toContain('sandbox.paused');
    expect(types.at(-1)).toBe('sandbox.stopped');
    const out = events.filter((e) => e.type === 'exec.stdout').map((e) => Buffer.from(e.data!.$b64, 'base64').toString()).join('');
    expect(out).toBe('65534\r\ntty\r\nout\npipedvia-cmd\nep x\n');

    const logs = await api('GET', `/v1/sandboxes/${name}/logs?tail=3`);
    expect(logs.body.map((e: { text: string }) => e.text)).toEqual(['piped', 'via-cmd\n', 'ep x\n']);
    expect((await api('GET', `/v1/sandboxes/${name}`)).body).toMatchObject({ status: 'stopped' });
    expect((await api('DELETE', `/v1/sandboxes/${name}`)).status).toBe(204);
    expect((await api('GET', `/v1/sandboxes/${name}`)).status).toBe(404);
  });

  /** The image's own command (the base image: no entrypoint, cmd /bin/sh), with exec options. */
  async function runRoute(): Promise<void> {
    const viaCmd = await api('POST', `/v1/sandboxes/${name}/run`, { stdin: 'echo via-cmd' });
    expect(viaCmd).toMatchObject({ status: 200, body: { code: 0, stdout: 'via-cmd\n', reason: 'exited' } });
    const ep = await api('POST', `/v1/sandboxes/${name}/run`, { entrypoint: ['/bin/sh', '-c'], args: ['echo ep $X'], env: { X: 'x' } });
    expect(ep.body).toMatchObject({ code: 0, stdout: 'ep x\n' });
    expect(await api('POST', `/v1/sandboxes/${name}/run`, { entrypoint: [] })).toMatchObject({ status: 400, body: { error: { code: 'E_NO_COMMAND' } } });
    expect(await api('POST', `/v1/sandboxes/${name}/run`, { args: 'echo' })).toMatchObject({ status: 400, body: { error: { code: 'E_INVALID_OPTION' } } });
  }

  /** The file routes on the running sandbox: upload, download, stat, list, mkdir, delete. */
  async function filesRoundTrip(): Promise<void> {
    const files = `${server.url}/v1/sandboxes/${name}/files`;
    const auth = { authorization: `Bearer ${TOKEN}` };
    const blob = randomBytes(2 * 1024 * 1024 + 17);
    const up = await fetch(`${files}?path=/tmp/up/blob.bin&parents=1&mode=0600`, { method: 'PUT', headers: auth, body: blob });
    expect(up.status).toBe(201);
    expect(await up.json()).toMatchObject({ type: 'file', sizeBytes: blob.length, mode: 0o600 });
    const down = await fetch(`${files}?path=/tmp/up/blob.bin`, { headers: auth });
    expect(down.status).toBe(200);
    expect(down.headers.get('content-length')).toBe(String(blob.length));
    expect(Buffer.from(await down.arrayBuffer()).equals(blob)).toBe(true);
    expect((await api('GET', `/v1/sandboxes/${name}/files/stat?path=/tmp/up/blob.bin`)).body).toMatchObject({ type: 'file', sizeBytes: blob.length });
    expect(await api('POST', `/v1/sandboxes/${name}/files/mkdir`, { path: '/tmp/up/d', mode: '0750' })).toMatchObject({ status: 201, body: { type: 'directory', mode: 0o750 } });
    const list = await api('GET', `/v1/sandboxes/${name}/files/list?path=/tmp/up`);
    expect(list.body.map((e: { name: string; type: string }) => [e.name, e.type]).sort()).toEqual([
      ['blob.bin', 'file'],
      ['d', 'directory'],
    ]);
    expect(await api('GET', `/v1/sandboxes/${name}/files?path=/tmp/up`)).toMatchObject({ status: 400, body: { error: { code: 'E_FS', details: { errno: 'EISDIR' } } } });
    expect(await api('GET', `/v1/sandboxes/${name}/files/stat?path=/no/such`)).toMatchObject({ status: 404, body: { error: { code: 'E_FS' } } });
    expect(await api('GET', `/v1/sandboxes/${name}/files`)).toMatchObject({ status: 400, body: { error: { code: 'E_INVALID_OPTION' } } });
    expect(await api('DELETE', `/v1/sandboxes/${name}/files?path=/tmp/up`)).toMatchObject({ status: 409, body: { error: { code: 'E_FS' } } });
    expect((await api('DELETE', `/v1/sandboxes/${name}/files?path=/tmp/up&recursive=1`)).status).toBe(204);
    expect((await api('GET', `/v1/sandboxes/${name}/files/stat?path=/tmp/up`)).status).toBe(404);
  }

  it('kills a sandbox and starts it again over HTTP, attached or detached, keeping its disk', async () => {
    const own = uniqueName('srv-ks');
    expect((await api('POST', '/v1/sandboxes', { config: { name: own } })).status).toBe(201);
    try {
      expect((await api('POST', `/v1/sandboxes/${own}/exec`, { command: 'sh', args: ['-c', 'echo kept > /root/mark; sync'] })).body).toMatchObject({ code: 0 });
      expect(await api('POST', `/v1/sandboxes/${own}/start`)).toMatchObject({ status: 409, body: { error: { code: 'E_ILLEGAL_STATE' } } });
      // kill gives the guest no time to sync: the write above was synced by hand
      const killed = await api('POST', `/v1/sandboxes/${own}/kill`);
      expect(killed).toMatchObject({ status: 200, body: { name: own, status: 'stopped', stopReason: 'killed' } });
      // kill is idempotent: a second one answers the stopped info again
      expect(await api('POST', `/v1/sandboxes/${own}/kill`)).toMatchObject({ status: 200, body: { status: 'stopped', stopReason: 'killed' } });

      const started = await api('POST', `/v1/sandboxes/${own}/start`);
      expect(started).toMatchObject({ status: 200, body: { name: own, status: 'running' } });
      expect(sup.store.getSandbox(own)).toMatchObject({ ownerPid: process.pid, controlSocket: null }); // attached: the server's own
      expect((await api('POST', `/v1/sandboxes/${own}/exec`, { command: 'cat', args: ['/root/mark'] })).body).toMatchObject({ code: 0, stdout: 'kept\n' });
      expect((await api('POST', `/v1/sandboxes/${own}/kill`)).body).toMatchObject({ status: 'stopped', stopReason: 'killed' });

      // detached: owned by a host process of its own, not this server's process
      const again = await api('POST', `/v1/sandboxes/${own}/start`, { detached: true });
      expect(again).toMatchObject({ status: 200, body: { status: 'running' } });
      expect(sup.store.getSandbox(own)!.ownerPid).not.toBe(process.pid);
      expect(sup.store.getSandbox(own)!.controlSocket).toEqual(expect.any(String));
      expect((await api('POST', `/v1/sandboxes/${own}/exec`, { command: 'cat', args: ['/root/mark'] })).body).toMatchObject({ stdout: 'kept\n' });
      expect((await api('POST', `/v1/sandboxes/${own}/kill`)).body).toMatchObject({ status: 'stopped', stopReason: 'killed' });
      expect(await api('POST', '/v1/sandboxes/no-such-sandbox/start')).toMatchObject({ status: 404, body: { error: { code: 'E_SANDBOX_NOT_FOUND' } } });
    } finally {
      const info = await api('GET', `/v1/sandboxes/${own}`);
      if (info.body?.status !== 'stopped') await api('POST', `/v1/sandboxes/${own}/kill`);
      expect((await api('DELETE', `/v1/sandboxes/${own}`)).status).toBe(204);
    }
  });

  it('serves the machine graph the inspector draws', async () => {
    const g = (await api('GET', '/v1/machine')).body;
    expect(g.nodes.map((n: { key: string }) => n.key)).toEqual(expect.arrayContaining(['running', 'paused', 'stopped', 'creating', 'live']));
    const pause = g.edges.find((e: { event: string; source: string }) => e.event === 'pause' && e.source === 'sandbox.live.running');
    expect(pause).toMatchObject({ target: 'sandbox.live.paused', label: { width: expect.any(Number) } });
    // Routed by the layout: a start, an end, and the bends between.
    expect(pause.points.length).toBeGreaterThanOrEqual(2);
  });
});
