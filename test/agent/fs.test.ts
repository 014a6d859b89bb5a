// The agent's FS frames against the real agent in host-testing mode (--port): the edges a VM
// test cannot reach cheaply (FIFOs, malformed requests, pipelining, the open-file limit).
// It runs as root on the host, in a temp dir of its own.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GuestFs } from '../../src/agent/GuestFs.ts';
import { PayloadWriter } from '../../src/agent/frame.ts';
import { run, startHostAgent, type HostAgent } from '../helpers/hostAgent.ts';

describe('FS frames against the real agent (host mode)', () => {
  let agent: HostAgent;
  let fs: GuestFs;
  let dir: string;
  beforeAll(async () => {
    agent = await startHostAgent();
    fs = new GuestFs(agent.client);
    dir = mkdtempSync(join(tmpdir(), 'corral-agentfs-'));
  });
  afterAll(async () => {
    await agent?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('refuses a FIFO at open instead of blocking the agent on it', async () => {
    execFileSync('mkfifo', [join(dir, 'fifo')]);
    await expect(fs.openRead(join(dir, 'fifo'))).rejects.toMatchObject({ code: 'E_FS', details: { errno: 'EINVAL' } });
    await expect(fs.openWrite(join(dir, 'fifo'))).rejects.toMatchObject({ code: 'E_FS' });
    expect(await agent.client.ping()).toBeGreaterThan(0); // still serving
  });

  it('answers a malformed request on its own session with EINVAL', async () => {
    const ch = agent.client.fsChannel();
    await expect(ch.request(new PayloadWriter().u32(99).finish(), () => 0)).rejects.toMatchObject({ code: 'E_FS', details: { errno: 'EINVAL' } });
    const rel = agent.client.fsChannel();
    await expect(rel.request(new PayloadWriter().u32(1).str('not/absolute').finish(), () => 0)).rejects.toMatchObject({ details: { errno: 'EINVAL' } });
    writeFileSync(join(dir, 'r.txt'), 'abc');
    const reader = await fs.openRead(join(dir, 'r.txt'));
    // READ larger than the agent serves is malformed (the host API refuses it before sending)
    expect(() => reader.read(600 * 1024)).toThrow(RangeError);
    expect(Buffer.from(await reader.read(2)).toString()).toBe('ab');
    expect(Buffer.from(await reader.read()).toString()).toBe('c');
    expect((await reader.read()).length).toBe(0);
    await reader.close();
  });

  it('answers every truncation of every op, and trailing bytes, with EINVAL and serves on', async () => {
    const p = join(dir, 'never');
    const ops = [
      new PayloadWriter().u32(1).str(p),
      new PayloadWriter().u32(2).str(p).u32(0),
      new PayloadWriter().u32(3).str(p).u32(0o755).u32(0),
      new PayloadWriter().u32(4).str(p).u32(0),
      new PayloadWriter().u32(5).str(p).str(p + '2'),
      new PayloadWriter().u32(6).str(p),
      new PayloadWriter().u32(8).str(p).u32(0o644).u32(0),
      new PayloadWriter().u32(11).str('t').str(p),
      new PayloadWriter().u32(12).str(p),
    ].map((w) => w.finish());
    const rest = (r: { remaining: number }) => r.remaining;
    for (const whole of ops) {
      const bad = [...Array.from({ length: whole.length }, (_, n) => whole.subarray(0, n)), Buffer.concat([whole, Buffer.from([0])])];
      for (const payload of bad) {
        await expect(agent.client.fsChannel().request(payload, rest)).rejects.toMatchObject({ code: 'E_FS', details: { errno: 'EINVAL' } });
      }
    }
    expect(await fs.readlink('/proc/self')).toMatch(/^\d+$/); // still serving, and nothing was made
    await expect(fs.stat(p)).rejects.toMatchObject({ details: { errno: 'ENOENT' } });
  });

  it('takes pipelined writes in order; a failed open names its errno and path', async () => {
    const w = await fs.openWrite(join(dir, 'sub', 'p.bin'), { parents: true, mode: 0o600 });
    await Promise.all([w.write(Buffer.alloc(300_000, 1)), w.write(Buffer.alloc(10, 2))]);
    await w.close();
    expect((await fs.stat(join(dir, 'sub', 'p.bin'))).sizeBytes).toBe(300_010);
    await expect(fs.openWrite(join(dir, 'missing', 'x'))).rejects.toMatchObject({ details: { errno: 'ENOENT', path: join(dir, 'missing', 'x') } });
  });

  it('limits open files to 64 and frees them on close', async () => {
    writeFileSync(join(dir, 'many.txt'), 'x');
    const open = [];
    for (let i = 0; i < 64; i++) open.push(await fs.openRead(join(dir, 'many.txt')));
    await expect(fs.openRead(join(dir, 'many.txt'))).rejects.toMatchObject({ details: { errno: 'EMFILE' } });
    for (const f of open) await f.close();
    await (await fs.openRead(join(dir, 'many.txt'))).close();
  });

  it('runs execs on a pty and as a user next to open files', async () => {
    const f = await fs.openRead(join(dir, 'many.txt'));
    const r = await run(agent.client, ['sh', '-c', 'test -t 1 || echo plain']);
    expect(r.stdout.toString()).toBe('plain\n');
    const who = await new Promise<string>((resolve, reject) => {
      let out = '';
      agent.client.exec(
        { argv: ['sh', '-c', 'id -u; test -t 0 && echo tty'], env: ['PATH=/usr/bin:/bin'], cwd: '/', user: 'nobody', tty: { cols: 40, rows: 10 } },
        { started() {}, stdout: (d) => (out += Buffer.from(d).toString()), stderr() {}, exited: () => resolve(out), failed: reject },
      );
    });
    expect(who).toBe(`${execFileSync('id', ['-u', 'nobody']).toString().trim()}\r\ntty\r\n`);
    await f.close();
  });
});
