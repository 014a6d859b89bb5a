// The agent's WATCH frames against the real agent in host-testing mode (--port): inotify on
// a temp dir of the host, the edges a VM test cannot reach cheaply (malformed requests, the
// watch limit, a removed root), checked record by record.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { WatchEndReason, WatchRecord, WatchSession } from '../../src/agent/AgentClient.ts';
import { FrameDecoder, FrameType, PayloadWriter, encodeFrame, type Frame } from '../../src/agent/frame.ts';
import { loadArtifacts } from '../../src/runtime/artifacts.ts';
import { startHostAgent, type HostAgent } from '../helpers/hostAgent.ts';
import { prng } from '../helpers/prng.ts';

/** A watch whose records are collected, with a wait on them (a condition, never a sleep). */
function collect(agent: HostAgent, path: string, recursive: boolean) {
  const records: WatchRecord[] = [];
  const waiters: Array<() => void> = [];
  let end: { reason: WatchEndReason; error?: Error } | undefined;
  const wake = () => waiters.splice(0).forEach((w) => w());
  const session: WatchSession = agent.client.watch(path, { recursive }, {
    changes: (rs) => (records.push(...rs), wake()),
    ended: (reason, error) => ((end = { reason, ...(error ? { error } : {}) }), wake()),
  });
  const until = async (pred: () => boolean, what: string) => {
    const t0 = Date.now();
    while (!pred()) {
      if (Date.now() - t0 > 10_000) throw new Error(`no ${what} in ${JSON.stringify(records)} (end: ${end?.reason})`);
      await new Promise<void>((r) => {
        waiters.push(r);
        setTimeout(r, 1000).unref();
      });
    }
  };
  const seen = (kind: string, p: string) => records.some((r) => r.kind === kind && r.path === p);
  return { session, records, until, seen, get end() { return end; } };
}

describe('file watches against the real agent (host mode)', () => {
  let agent: HostAgent;
  let dir: string;
  beforeAll(async () => {
    agent = await startHostAgent();
    dir = mkdtempSync(join(tmpdir(), 'corral-agentwatch-'));
  });
  afterAll(async () => {
    await agent?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('reports creates, writes, removes and renames paired by their cookie, relative to the watched dir', async () => {
    const root = join(dir, 'basic');
    mkdirSync(root);
    const w = collect(agent, root, false);
    await w.session.started;
    writeFileSync(join(root, 'a.txt'), 'one');
    renameSync(join(root, 'a.txt'), join(root, 'b.txt'));
    rmSync(join(root, 'b.txt'));
    mkdirSync(join(root, 'd'));
    await w.until(() => w.seen('create', 'd'), 'create of d');
    expect(w.seen('create', 'a.txt')).toBe(true);
    expect(w.seen('write', 'a.txt')).toBe(true);
    expect(w.records).toContainEqual({ kind: 'rename', path: 'a.txt', to: 'b.txt', isDir: false });
    expect(w.records).toContainEqual({ kind: 'remove', path: 'b.txt', isDir: false });
    expect(w.records).toContainEqual({ kind: 'create', path: 'd', isDir: true });
    w.session.stop();
    await w.until(() => w.end !== undefined, 'end');
    expect(w.end).toEqual({ reason: 'stopped' });
  });

  it('recursive watches see files in a directory made after the start; a plain watch does not', async () => {
    const root = join(dir, 'tree');
    mkdirSync(join(root, 'old'), { recursive: true });
    const deep = collect(agent, root, true);
    const flat = collect(agent, root, false);
    await Promise.all([deep.session.started, flat.session.started]);
    writeFileSync(join(root, 'old', 'x'), '1');
    mkdirSync(join(root, 'new', 'sub'), { recursive: true });
    writeFileSync(join(root, 'new', 'sub', 'y'), '2');
    writeFileSync(join(root, 'marker'), '');
    await deep.until(() => deep.seen('create', 'new/sub/y') && deep.seen('create', 'marker'), 'create of new/sub/y');
    await flat.until(() => flat.seen('create', 'marker'), 'create of marker');
    expect(deep.seen('create', 'old/x')).toBe(true);
    // One inotify instance reports in order: the marker came after anything about the subdirs.
    expect(flat.records.filter((r) => r.path.includes('/'))).toEqual([]);
    expect(flat.seen('create', 'new')).toBe(true);
    deep.session.stop();
    flat.session.stop();
    await deep.until(() => deep.end !== undefined, 'end');
    await flat.until(() => flat.end !== undefined, 'end');
  });

  it('tells a directory moved in by its entries, one renamed within the tree by the rename alone, and caps what it tells', async () => {
    const root = join(dir, 'moves');
    const outside = join(dir, 'outside');
    mkdirSync(join(root, 'a'), { recursive: true });
    mkdirSync(join(outside, 'in', 'deep'), { recursive: true });
    writeFileSync(join(outside, 'in', 'deep', 'f'), '');
    mkdirSync(join(outside, 'big'));
    for (let i = 0; i < 5000; i++) writeFileSync(join(outside, 'big', `f${i}`), '');
    writeFileSync(join(root, 'a', 'kept'), '');
    const w = collect(agent, root, true);
    await w.session.started;
    renameSync(join(outside, 'in'), join(root, 'in'));
    renameSync(join(root, 'a'), join(root, 'b'));
    renameSync(join(outside, 'big'), join(root, 'big'));
    writeFileSync(join(root, 'b', 'new'), '');
    writeFileSync(join(root, 'in', 'deep', 'g'), '');
    await w.until(() => w.seen('create', 'b/new') && w.seen('create', 'in/deep/g'), 'creates in the moved directories');
    expect(w.records).toContainEqual({ kind: 'create', path: 'in', isDir: true });
    expect(w.seen('create', 'in/deep/f')).toBe(true);
    expect(w.records).toContainEqual({ kind: 'rename', path: 'a', to: 'b', isDir: true });
    expect(w.seen('create', 'b/kept')).toBe(false);
    // 5000 files moved in: 4096 told, then one overflow for the rest.
    expect(w.records.filter((r) => r.kind === 'create' && r.path.startsWith('big/'))).toHaveLength(4096);
    expect(w.records.filter((r) => r.kind === 'overflow')).toHaveLength(1);
    w.session.stop();
    await w.until(() => w.end !== undefined, 'end');
  });

  it('watches at most 4096 directories of a tree: past them one overflow record, after the start', async () => {
    const root = join(dir, 'wide');
    for (let i = 0; i < 4100; i++) mkdirSync(join(root, `d${i}`), { recursive: true });
    const w = collect(agent, root, true);
    await w.session.started;
    writeFileSync(join(root, 'marker'), '');
    await w.until(() => w.seen('create', 'marker'), 'create of marker');
    expect(w.records[0]).toEqual({ kind: 'overflow', path: '', isDir: false });
    w.session.stop();
    await w.until(() => w.end !== undefined, 'end');
    rmSync(root, { recursive: true });
  });

  it('ends with reason removed when the watched directory goes', async () => {
    const root = join(dir, 'doomed');
    mkdirSync(root);
    const w = collect(agent, root, true);
    await w.session.started;
    writeFileSync(join(root, 'f'), '');
    rmSync(root, { recursive: true });
    await w.until(() => w.end !== undefined, 'end');
    expect(w.end?.reason).toBe('removed');
    expect(w.seen('remove', 'f')).toBe(true);
  });

  it('refuses a missing path, a file, a relative or empty path with the errno, and serves on', async () => {
    writeFileSync(join(dir, 'plain'), '');
    const cases: Array<[string, string]> = [
      [join(dir, 'missing'), 'ENOENT'],
      [join(dir, 'plain'), 'ENOTDIR'],
      ['relative/path', 'EINVAL'],
      ['', 'EINVAL'],
      [`/${'x'.repeat(5000)}`, 'EINVAL'],
    ];
    for (const [path, errno] of cases) {
      const w = agent.client.watch(path, { recursive: false }, { changes: () => {}, ended: () => {} });
      await expect(w.started).rejects.toMatchObject({ code: 'E_FS', details: { errno } });
    }
    expect(agent.client.watchCount).toBe(0);
    expect(await agent.client.ping()).toBeGreaterThan(0);
  });

  it('holds at most 32 watches; the 33rd is refused with EMFILE and a stopped one frees its slot', async () => {
    const root = join(dir, 'many');
    mkdirSync(root);
    const ws = Array.from({ length: 32 }, () => collect(agent, root, false));
    await Promise.all(ws.map((w) => w.session.started));
    const extra = collect(agent, root, false);
    await expect(extra.session.started).rejects.toMatchObject({ code: 'E_FS', details: { errno: 'EMFILE' } });
    ws[0]!.session.stop();
    await ws[0]!.until(() => ws[0]!.end !== undefined, 'end');
    const again = collect(agent, root, false);
    await again.session.started;
    // Every one of them reports the same change, each on its own inotify instance.
    writeFileSync(join(root, 'seen-by-all'), '');
    for (const w of [...ws.slice(1), again]) await w.until(() => w.seen('create', 'seen-by-all'), 'create');
    for (const w of [...ws.slice(1), again]) w.session.stop();
    for (const w of [...ws.slice(1), again]) await w.until(() => w.end !== undefined, 'end');
    expect(agent.client.watchCount).toBe(0);
  });
});

// Raw frames, not through AgentClient (which never sends malformed ones, and fails its
// connection on the agent's complaints): the agent answers each and keeps serving.
describe('garbage WATCH frames against the real agent (host mode)', () => {
  it('answers every malformed WATCH and WATCH_STOP (a complaint or WATCH_END EINVAL) and serves on', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'corral-agentwatch-raw-'));
    const server = createServer();
    const conn = new Promise<Socket>((resolve) => server.once('connection', resolve));
    await new Promise<void>((r) => server.listen(join(dir, 'a.sock'), r));
    const child = spawn(loadArtifacts().agent, ['--port', join(dir, 'a.sock')], { stdio: 'ignore' });
    const sock = await conn;
    server.close();
    const decoder = new FrameDecoder();
    const frames: Frame[] = [];
    let wake: (() => void) | undefined;
    sock.on('data', (d: Buffer) => {
      frames.push(...decoder.push(d));
      wake?.();
    });
    const until = async (pred: () => boolean) => {
      while (!pred()) await new Promise<void>((r) => (wake = r));
    };
    try {
      await until(() => frames.some((f) => f.type === FrameType.HELLO));
      const send = (type: number, id: number, payload: Uint8Array) => sock.write(encodeFrame(type as never, id, payload));
      const good = new PayloadWriter().u32(1).str(dir).finish();
      const watches: Array<[number, Uint8Array]> = [
        [10, new Uint8Array(0)],
        [11, good.subarray(0, 6)],
        [12, Buffer.concat([good, Buffer.from([0])])],
        [13, new PayloadWriter().u32(2).str(dir).finish()],
        [14, new PayloadWriter().u32(0).u32(1 << 30).finish()],
        [15, new PayloadWriter().u32(0).bytes(Buffer.from('/a\0b')).finish()],
      ];
      const rand = prng(18);
      for (let i = 0; i < 40; i++) watches.push([100 + i, randomBytes(Math.floor(rand() * 64))]);
      for (const [id, p] of watches) send(FrameType.WATCH, id, p);
      send(FrameType.WATCH, 0, good); // session 0: a complaint
      send(FrameType.WATCH_STOP, 10, new Uint8Array([1])); // a payload: a complaint
      send(FrameType.WATCH_STOP, 0, new Uint8Array(0)); // session 0: a complaint
      send(FrameType.WATCH_STOP, 999, new Uint8Array(0)); // no such watch: dropped
      send(FrameType.PING, 0, Buffer.from('still-there'));
      await until(() => frames.some((f) => f.type === FrameType.PONG));
      const ends = frames.filter((f) => f.type === FrameType.WATCH_END);
      const started = frames.filter((f) => f.type === FrameType.WATCH_EVENTS).map((f) => f.session);
      // Each WATCH got one answer: an EINVAL end, or (random bytes that happen to parse) a start or a refusal.
      expect(new Set([...ends.map((f) => f.session), ...started])).toEqual(new Set(watches.map(([id]) => id)));
      for (const id of [10, 11, 12, 13, 14, 15]) expect(Buffer.from(ends.find((f) => f.session === id)!.payload).readInt32LE(0)).toBe(22); // EINVAL
      expect(frames.filter((f) => f.type === FrameType.ERROR && f.session === 0)).toHaveLength(3);
      expect(child.exitCode).toBeNull();
    } finally {
      sock.destroy();
      if (child.exitCode === null) {
        child.kill('SIGKILL');
        await new Promise((r) => child.once('exit', r));
      }
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
