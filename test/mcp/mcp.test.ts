// `corral mcp` end to end, as an MCP client runs it: the official SDK's own Client starts
// `corral mcp` as a child process and speaks over its stdio, or connects to `corral mcp
// --http` over streamable HTTP; every tool call reaches a real VM.
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { BIN } from '../helpers/cli.ts';
import { alive, uniqueName } from '../helpers/sandbox.ts';

/** The JSON a successful tool call returned; fails the test with the tool error's text otherwise. */
async function call(client: Client, name: string, args: Record<string, unknown> = {}): Promise<any> {
  const r = (await client.callTool({ name, arguments: args })) as CallToolResult;
  const text = r.content.map((c) => (c.type === 'text' ? c.text : '')).join('');
  if (r.isError) throw new Error(`${name} failed: ${text}`);
  return JSON.parse(text);
}

/** A tool call that must fail: its error text (which starts with the corral code). */
async function failing(client: Client, name: string, args: Record<string, unknown>): Promise<string> {
  const r = (await client.callTool({ name, arguments: args })) as CallToolResult;
  expect(r.isError).toBe(true);
  return r.content.map((c) => (c.type === 'text' ? c.text : '')).join('');
}

describe('corral mcp over stdio', () => {
  let client: Client;
  const name = uniqueName('mcp');
  beforeAll(async () => {
    client = new Client({ name: 'corral-test', version: '1.0.0' });
    await client.connect(new StdioClientTransport({ command: process.execPath, args: [BIN, 'mcp'], env: process.env as Record<string, string>, stderr: 'inherit' }));
  });
  afterAll(async () => {
    await client?.close();
  });

  it('lists its tools, each with a JSON schema, and the destructive ones need confirm', async () => {
    const { tools } = await client.listTools();
    const names = tools.map((t) => t.name);
    for (const t of ['sandbox_create', 'sandbox_exec', 'sandbox_shell', 'sandbox_run_code', 'sandbox_fs_read', 'sandbox_fs_write', 'sandbox_fs_list', 'sandbox_list', 'sandbox_info', 'sandbox_pause', 'sandbox_resume', 'sandbox_stop', 'sandbox_remove', 'sandbox_snapshot', 'sandbox_fork', 'snapshot_list', 'snapshot_remove']) {
      expect(names).toContain(t);
    }
    for (const t of tools) expect(t.inputSchema.type, t.name).toBe('object');
    const remove = tools.find((t) => t.name === 'sandbox_remove')!;
    expect(remove.inputSchema.required).toContain('confirm');
    expect(remove.annotations?.destructiveHint).toBe(true);
  });

  it('creates a sandbox, runs commands and code in it, moves files, pauses, snapshots and removes it', async () => {
    const info = await call(client, 'sandbox_create', { name, memoryMib: 128, env: { GREETING: 'hello' } });
    expect(info).toMatchObject({ name, status: 'running' });

    expect(await call(client, 'sandbox_exec', { name, command: 'sh', args: ['-c', 'echo "$GREETING"; echo err >&2; exit 3'] })).toMatchObject({ code: 3, stdout: 'hello\n', stderr: 'err\n', reason: 'exited' });
    expect(await call(client, 'sandbox_exec', { name, command: 'cat', stdin: 'piped' })).toMatchObject({ code: 0, stdout: 'piped' });
    expect(await call(client, 'sandbox_exec', { name, command: 'sleep', args: ['30'], timeoutMs: 300 })).toMatchObject({ timedOut: true, reason: 'timeout' });
    expect(await call(client, 'sandbox_shell', { name, script: 'cd /tmp && pwd' })).toMatchObject({ code: 0, stdout: '/tmp\n' });
    expect(await call(client, 'sandbox_run_code', { name, language: 'sh', code: 'echo $((6 * 7))' })).toMatchObject({ language: 'sh', code: 0, stdout: '42\n' });
    // The base image has no python: the result says so instead of a bare "not found".
    const py = await call(client, 'sandbox_run_code', { name, language: 'python', code: 'print(1)' });
    expect(py).toMatchObject({ code: 127, stderr: expect.stringContaining('has no python3') });

    expect(await call(client, 'sandbox_fs_write', { name, path: '/work/notes.txt', content: 'line one\n', parents: true })).toEqual({ path: '/work/notes.txt', bytes: 9 });
    expect(await call(client, 'sandbox_fs_read', { name, path: '/work/notes.txt' })).toEqual({ path: '/work/notes.txt', encoding: 'utf8', content: 'line one\n' });
    await call(client, 'sandbox_fs_write', { name, path: '/work/bin.dat', content: Buffer.from([0xff, 0x00, 0xfe]).toString('base64'), encoding: 'base64' });
    expect(await call(client, 'sandbox_fs_read', { name, path: '/work/bin.dat' })).toMatchObject({ encoding: 'base64', content: Buffer.from([0xff, 0x00, 0xfe]).toString('base64') });
    const listing = await call(client, 'sandbox_fs_list', { name, path: '/work' });
    expect(listing.map((e: { name: string }) => e.name).sort()).toEqual(['bin.dat', 'notes.txt']);
    expect(await failing(client, 'sandbox_fs_read', { name, path: '/work/missing' })).toMatch(/^E_FS: /);

    expect((await call(client, 'sandbox_list')).find((s: { name: string }) => s.name === name)).toMatchObject({ status: 'running' });
    expect(await call(client, 'sandbox_pause', { name })).toMatchObject({ status: 'paused' });
    expect(await failing(client, 'sandbox_exec', { name, command: 'true' })).toMatch(/^E_ILLEGAL_STATE: .*paused/);
    expect(await call(client, 'sandbox_resume', { name })).toMatchObject({ status: 'running' });

    const snap = `${name}-snap`;
    expect(await call(client, 'sandbox_snapshot', { name, snapshot: snap })).toMatchObject({ name: snap, source: name });
    expect((await call(client, 'snapshot_list')).map((s: { name: string }) => s.name)).toContain(snap);

    // Resources: the events and the recorded output of the commands above.
    const events = JSON.parse(((await client.readResource({ uri: `corral://sandboxes/${name}/events` })).contents[0] as { text: string }).text);
    expect(events.map((e: { type: string }) => e.type)).toEqual(expect.arrayContaining(['sandbox.started', 'exec.exited', 'sandbox.paused', 'sandbox.snapshotted']));
    const logs = ((await client.readResource({ uri: `corral://sandboxes/${name}/logs` })).contents[0] as { text: string }).text;
    expect(logs).toContain('hello\n');
    const { resources } = await client.listResources();
    expect(resources.map((r) => r.uri)).toContain(`corral://sandboxes/${name}/logs`);

    // Destructive calls: refused without confirm (the schema), done with it.
    expect(await failing(client, 'sandbox_remove', { name })).toMatch(/confirm/);
    expect(await call(client, 'snapshot_remove', { snapshot: snap, confirm: true })).toEqual({ removed: snap });
    expect(await call(client, 'sandbox_remove', { name, confirm: true })).toEqual({ removed: name });
    expect(await failing(client, 'sandbox_info', { name })).toMatch(/^E_SANDBOX_NOT_FOUND: /);
  });

  it('ends the sandboxes it made (attached, the default) when the client closes the session', async () => {
    const own = new Client({ name: 'short-lived', version: '1.0.0' });
    const transport = new StdioClientTransport({ command: process.execPath, args: [BIN, 'mcp'], env: process.env as Record<string, string>, stderr: 'inherit' });
    await own.connect(transport);
    const n = uniqueName('mcpend');
    const { pid } = await call(own, 'sandbox_create', { name: n, memoryMib: 128 });
    expect(pid).toBeGreaterThan(0);
    const serverPid = transport.pid!;
    await own.close();
    // The server process exits on EOF; its VM goes with it (no orphaned qemu).
    await vi.waitFor(() => expect(alive(serverPid) || alive(pid)).toBe(false), { timeout: 30_000, interval: 50 });
    expect(await call(client, 'sandbox_info', { name: n })).toMatchObject({ status: 'stopped' });
    await call(client, 'sandbox_remove', { name: n, confirm: true });
  });

  it('answers a bad option with a tool error that names it', async () => {
    expect(await failing(client, 'sandbox_create', { name: uniqueName('bad'), memoryMib: 1 })).toMatch(/^E_INVALID_OPTION: .*memoryMib/);
    expect(await failing(client, 'sandbox_run_code', { name: 'x', language: 'cobol', code: 'x' })).toMatch(/language/);
  });
});

describe('corral mcp --http', () => {
  let child: ChildProcess;
  let url: string;
  beforeAll(async () => {
    child = spawn(process.execPath, [BIN, '--json', 'mcp', '--http', '0'], { env: process.env, stdio: ['ignore', 'pipe', 'inherit'] });
    const first = await new Promise<string>((resolve, reject) => {
      createInterface({ input: child.stdout! }).once('line', resolve);
      child.once('exit', (code) => reject(new Error(`corral mcp --http exited ${code}`)));
    });
    url = JSON.parse(first).url;
  });
  afterAll(async () => {
    if (child && child.exitCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    }
  });

  it('serves the same tools over streamable HTTP, one session per client', async () => {
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/mcp$/);
    const a = new Client({ name: 'a', version: '1.0.0' });
    const b = new Client({ name: 'b', version: '1.0.0' });
    await a.connect(new StreamableHTTPClientTransport(new URL(url)));
    await b.connect(new StreamableHTTPClientTransport(new URL(url)));
    const name = uniqueName('mcph');
    try {
      await call(a, 'sandbox_create', { name, memoryMib: 128 });
      // Another session of the same server reaches the same sandbox.
      expect(await call(b, 'sandbox_exec', { name, command: 'echo', args: ['over http'] })).toMatchObject({ code: 0, stdout: 'over http\n' });
      expect(await call(b, 'sandbox_stop', { name })).toMatchObject({ status: 'stopped' });
      expect(await call(a, 'sandbox_remove', { name, confirm: true })).toEqual({ removed: name });
    } finally {
      await a.close();
      await b.close();
    }
  });

  it('with a token, refuses a client without it and serves one with it', async () => {
    const token = 'a-token-of-24-characters';
    const guarded = spawn(process.execPath, [BIN, '--json', 'mcp', '--http', '0', '--token', token], { env: process.env, stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      const line = await new Promise<string>((resolve, reject) => {
        createInterface({ input: guarded.stdout! }).once('line', resolve);
        guarded.once('exit', (code) => reject(new Error(`corral mcp --http exited ${code}`)));
      });
      const at = new URL(JSON.parse(line).url);
      const refused = new Client({ name: 'no-token', version: '1.0.0' });
      await expect(refused.connect(new StreamableHTTPClientTransport(at))).rejects.toThrow(/401|Unauthorized|token/i);
      const ok = new Client({ name: 'token', version: '1.0.0' });
      await ok.connect(new StreamableHTTPClientTransport(at, { requestInit: { headers: { authorization: `Bearer ${token}` } } }));
      expect((await ok.listTools()).tools.length).toBeGreaterThan(10);
      await ok.close();
    } finally {
      const exited = new Promise((r) => guarded.once('exit', r));
      guarded.kill('SIGTERM');
      await exited;
    }
  });

  it('refuses a request that is not part of a session', async () => {
    const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream' }, body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/list' }) });
    expect(res.status).toBe(400);
    expect(await res.text()).toContain('initialize');
  });
});
