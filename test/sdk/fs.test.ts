// sandbox.fs() against one real sandbox, shared by the tests of this file (a boot costs ~1 s
// under TCG): bytes cross the agent's FS frames, never a shell.
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, mkdirSync, readFileSync, readdirSync, readlinkSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CorralError, Sandbox } from '../../src/index.ts';
import type { Supervisor } from '../../src/supervisor/Supervisor.ts';
import { alive, hostileSandbox, testSupervisor, uniqueName } from '../helpers/sandbox.ts';

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** Rejects with E_FS naming this errno and path. */
async function expectFsError(p: Promise<unknown>, errno: string, path: string): Promise<void> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(CorralError);
  expect((err as CorralError).code).toBe('E_FS');
  expect((err as CorralError).details).toMatchObject({ errno, path });
  expect((err as Error).message).toContain(errno);
  expect((err as Error).message).toContain(path);
}

describe('sandbox.fs()', () => {
  let sup: Supervisor;
  let sb: Sandbox;
  let host: string;

  beforeAll(async () => {
    sup = testSupervisor();
    host = mkdtempSync(join(tmpdir(), 'corral-fs-test-'));
    sb = await Sandbox.builder(uniqueName('fs')).image('corral/base').memory(256).cpus(1).supervisor(sup).create();
  });
  afterAll(async () => {
    await sb?.stop();
    await sup?.close();
    rmSync(host, { recursive: true, force: true });
  });

  it('round-trips a random 6 MiB binary file both ways, byte-exact', async () => {
    const data = randomBytes(6 * 1024 * 1024 + 12345);
    await sb.fs().write('/root/big.bin', data);
    // The guest's own view agrees...
    expect((await sb.exec('sha256sum', ['/root/big.bin'])).stdout.split(' ')[0]).toBe(sha256(data));
    // ...and so does what comes back, whole and streamed.
    expect(sha256(await sb.fs().read('/root/big.bin'))).toBe(sha256(data));
    const made = await sb.exec('sh', ['-c', 'head -c 5000000 /dev/urandom > /tmp/g.bin && sha256sum /tmp/g.bin']);
    const h = createHash('sha256');
    let chunks = 0;
    for await (const chunk of sb.fs().createReadStream('/tmp/g.bin')) {
      expect((chunk as Buffer).length).toBeLessThanOrEqual(1024 * 1024);
      h.update(chunk as Buffer);
      chunks++;
    }
    expect(h.digest('hex')).toBe(made.stdout.split(' ')[0]);
    expect(chunks).toBeGreaterThan(1);
  });

  it('streams a write from a Node stream', async () => {
    const parts = Array.from({ length: 40 }, () => randomBytes(64 * 1024));
    await pipeline(Readable.from(parts), sb.fs().createWriteStream('/tmp/streamed.bin', { mode: 0o640 }));
    const st = await sb.fs().stat('/tmp/streamed.bin');
    expect(st).toMatchObject({ type: 'file', mode: 0o640, sizeBytes: 40 * 64 * 1024 });
    expect((await sb.exec('sha256sum', ['/tmp/streamed.bin'])).stdout.split(' ')[0]).toBe(sha256(Buffer.concat(parts)));
  });

  it('writes and reads text, appends, and applies a mode', async () => {
    await sb.fs().write('/tmp/t/deep/note.txt', 'héllo\n', { parents: true, mode: 0o600 });
    await sb.fs().write('/tmp/t/deep/note.txt', 'more\n', { append: true });
    expect(await sb.fs().readText('/tmp/t/deep/note.txt')).toBe('héllo\nmore\n');
    expect((await sb.exec('stat', ['-c', '%a', '/tmp/t/deep/note.txt'])).stdout).toBe('600\n');
  });

  it('lists, stats, makes, renames and removes', async () => {
    const fs = sb.fs();
    await fs.mkdir('/tmp/tree/a/b', { recursive: true });
    await fs.mkdir('/tmp/tree/solo', { mode: 0o700 });
    await fs.write('/tmp/tree/a/f.txt', '12345');
    const list = await fs.list('/tmp/tree');
    expect(list.map((e) => [e.name, e.type]).sort()).toEqual([
      ['a', 'directory'],
      ['solo', 'directory'],
    ]);
    expect(list.find((e) => e.name === 'solo')?.mode).toBe(0o700);
    const f = await fs.stat('/tmp/tree/a/f.txt');
    expect(f).toMatchObject({ type: 'file', sizeBytes: 5, mode: 0o644, uid: 0, gid: 0 });
    expect(Math.abs(f.mtimeMs - Date.now())).toBeLessThan(10 * 60_000);
    await fs.rename('/tmp/tree/a/f.txt', '/tmp/tree/solo/g.txt');
    expect(await fs.exists('/tmp/tree/a/f.txt')).toBe(false);
    expect(await fs.readText('/tmp/tree/solo/g.txt')).toBe('12345');
    await expectFsError(fs.remove('/tmp/tree/solo'), 'ENOTEMPTY', '/tmp/tree/solo');
    await fs.remove('/tmp/tree/solo/g.txt');
    await fs.remove('/tmp/tree/solo');
    await fs.remove('/tmp/tree', { recursive: true });
    expect(await fs.exists('/tmp/tree')).toBe(false);
    // a directory of many entries comes back whole (the listing is paged under 1 MiB)
    await sb.shell('mkdir /tmp/many && cd /tmp/many && i=0; while [ $i -lt 300 ]; do : > file-with-a-longish-name-$i; i=$((i+1)); done');
    expect((await fs.list('/tmp/many')).length).toBe(300);
  });

  it('copies a directory tree in and back out: files, modes, empty dirs, symlinks', async () => {
    const src = join(host, 'src');
    mkdirSync(join(src, 'sub', 'empty'), { recursive: true });
    writeFileSync(join(src, 'a.txt'), 'alpha');
    writeFileSync(join(src, 'sub', 'bin.dat'), randomBytes(700 * 1024));
    writeFileSync(join(src, 'run.sh'), '#!/bin/sh\necho ran\n', { mode: 0o755 });
    symlinkSync('a.txt', join(src, 'link'));
    await sb.fs().copyIn(src, '/opt/copied');
    expect((await sb.exec('/opt/copied/run.sh')).stdout).toBe('ran\n');
    expect((await sb.shell('readlink /opt/copied/link; ls /opt/copied/sub')).stdout).toBe('a.txt\nbin.dat\nempty\n');
    const back = join(host, 'back');
    await sb.fs().copyOut('/opt/copied', back);
    expect(readdirSync(back).sort()).toEqual(['a.txt', 'link', 'run.sh', 'sub']);
    expect(readFileSync(join(back, 'a.txt'), 'utf8')).toBe('alpha');
    expect(sha256(readFileSync(join(back, 'sub', 'bin.dat')))).toBe(sha256(readFileSync(join(src, 'sub', 'bin.dat'))));
    expect(statSync(join(back, 'run.sh')).mode & 0o777).toBe(0o755);
    expect(statSync(join(back, 'sub', 'empty')).isDirectory()).toBe(true);
    expect(readlinkSync(join(back, 'link'))).toBe('a.txt');
  });

  it('stops a transfer when its signal aborts, and the guest file is closed', async () => {
    const agentFds = async () => Number((await sb.shell('ls /proc/1/fd | wc -l')).stdout.trim());
    await sb.shell('head -c 3000000 /dev/urandom > /tmp/abort.bin');
    const before = await agentFds();
    const ac = new AbortController();
    let got = 0;
    const reading = (async () => {
      for await (const chunk of sb.fs().createReadStream('/tmp/abort.bin', { signal: ac.signal })) {
        got += (chunk as Buffer).length;
        if (got >= 512 * 1024) ac.abort();
      }
    })();
    await expect(reading).rejects.toMatchObject({ name: 'AbortError' });
    expect(got).toBeLessThan(3000000);
    await expect(sb.fs().read('/tmp/abort.bin', { signal: AbortSignal.abort() })).rejects.toMatchObject({ code: 'E_ABORTED' });
    await expect(sb.fs().write('/tmp/never', 'x', { signal: AbortSignal.abort() })).rejects.toMatchObject({ code: 'E_ABORTED' });
    // the agent (PID 1) holds no file of the aborted read any more (the close is async: poll)
    let after = await agentFds();
    for (let i = 0; i < 50 && after > before; i++) after = await agentFds();
    expect(after).toBe(before);
  });

  it('reports guest errors with their errno and path', async () => {
    const fs = sb.fs();
    await expectFsError(fs.read('/nope/missing'), 'ENOENT', '/nope/missing');
    await expectFsError(fs.stat('/nope'), 'ENOENT', '/nope');
    await expectFsError(fs.read('/etc'), 'EISDIR', '/etc');
    await expectFsError(fs.list('/etc/passwd'), 'ENOTDIR', '/etc/passwd');
    await expectFsError(fs.mkdir('/tmp'), 'EEXIST', '/tmp');
    await expectFsError(fs.write('/etc', 'x'), 'EISDIR', '/etc');
    // a read-only place
    await sb.shell('mkdir -p /mnt/ro && mount -t tmpfs -o ro tmpfs /mnt/ro');
    await expectFsError(fs.write('/mnt/ro/x', 'x'), 'EROFS', '/mnt/ro/x');
    await expect(fs.read('relative/path')).rejects.toMatchObject({ code: 'E_INVALID_OPTION' });
    // the sandbox is fine afterwards
    expect((await sb.exec('echo', ['ok'])).stdout).toBe('ok\n');
  });

  it('fails only its own sandbox when a guest lies in an FS reply', async () => {
    // The lying guest is the fake qemu of test/helpers/fake-qemu.mjs: the real agent never lies.
    const evil = await hostileSandbox(sup, 'fs-liar');
    const { pid } = await evil.info();
    await expect(evil.fs().stat('/etc/passwd')).rejects.toMatchObject({ code: 'E_PROTOCOL', message: expect.stringContaining('unknown kind 9') });
    const info = await evil.wait();
    expect(info).toMatchObject({ status: 'stopped', stopReason: 'crashed' });
    expect(info.error?.code).toBe('E_PROTOCOL');
    expect(alive(pid!)).toBe(false);
    // this file's real sandbox never noticed
    expect(await sb.fs().readText('/tmp/t/deep/note.txt')).toBe('héllo\nmore\n');
  });
});
