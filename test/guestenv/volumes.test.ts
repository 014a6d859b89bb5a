// Volumes: host directories over virtio-9p (read-only enforced by qemu on the host), named
// volumes that outlive sandboxes, size-limited tmpfs. Real VMs (one shared by the tests that
// leave it running, and the named volume's own two lives), real host directories.
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox, Volume } from '../../src/index.ts';
import type { Supervisor } from '../../src/supervisor/Supervisor.ts';
import { testSupervisor, uniqueName } from '../helpers/sandbox.ts';

describe('volumes', () => {
  let sup: Supervisor;
  let sb: Sandbox;
  let host: string;
  const volume = `data-${process.pid}`;

  beforeAll(async () => {
    sup = testSupervisor();
    host = mkdtempSync(join(tmpdir(), 'corral-vol-'));
    for (const d of ['ro', 'rw']) {
      mkdirSync(join(host, d));
      writeFileSync(join(host, d, 'hello.txt'), `from the host (${d})\n`);
    }
    sb = await Sandbox.builder(uniqueName('vol'))
      .volume('/app/src', (v) => v.bind(join(host, 'ro')).readonly())
      .volume('/work', (v) => v.bind(join(host, 'rw')))
      .volume('/scratch', (v) => v.tmpfs().size(4))
      .supervisor(sup)
      .create();
  });
  afterAll(async () => {
    await sb?.stop();
    await Volume.remove(volume, { supervisor: sup, force: true }).catch(() => {});
    await sup?.close();
    rmSync(host, { recursive: true, force: true });
  });

  it('shares a bind read-only: even root, even after remounting, cannot write through it', async () => {
    const r = await sb.shell('cat /app/src/hello.txt; echo x > /app/src/new 2>&1; mount -o remount,rw /app/src; echo y > /app/src/new; id -u');
    expect(r.stdout).toBe('from the host (ro)\n0\n');
    expect(r.stderr).toMatch(/Read-only file system[\s\S]*Read-only file system/);
    expect(existsSync(join(host, 'ro', 'new'))).toBe(false);
  });

  it('shares a bind read-write both ways', async () => {
    const r = await sb.shell('cat /work/hello.txt; echo from-guest > /work/out.txt');
    expect(r.stdout).toBe('from the host (rw)\n');
    expect(readFileSync(join(host, 'rw', 'out.txt'), 'utf8')).toBe('from-guest\n');
  });

  it('limits a tmpfs to its size: writing past it fails with ENOSPC', async () => {
    const r = await sb.shell('dd if=/dev/zero of=/scratch/fill bs=1M count=8 2>&1; df -k /scratch | tail -1');
    expect(r.stdout).toMatch(/No space left on device/);
    expect(Number(r.stdout.trim().split('\n').pop()!.split(/\s+/)[1])).toBe(4096);
  });

  it('keeps a named volume across Sandbox.remove and shows it to the next sandbox', async () => {
    // A sandbox of its own: this test stops and removes it, which no other test may see.
    const name = uniqueName('vol1');
    const first = await Sandbox.builder(name).volume('/data', (v) => v.named(volume)).supervisor(sup).create();
    try {
      await first.shell('echo kept > /data/note');
      expect((await Volume.get(volume, { supervisor: sup })).usedBy).toEqual([name]);
      await expect(Volume.remove(volume, { supervisor: sup })).rejects.toMatchObject({ code: 'E_VOLUME_IN_USE' });
    } finally {
      await first.stop();
    }
    await Sandbox.remove(name, { supervisor: sup });
    const info = await Volume.get(volume, { supervisor: sup });
    expect(info.usedBy).toEqual([]);
    expect((await Volume.list({ supervisor: sup })).map((v) => v.name)).toContain(volume);

    const next = await Sandbox.builder(uniqueName('vol2')).volume('/mnt/d', (v) => v.named(volume).readonly()).supervisor(sup).create();
    try {
      expect((await next.shell('cat /mnt/d/note')).stdout).toBe('kept\n');
    } finally {
      await next.stop();
    }
    await Volume.remove(volume, { supervisor: sup });
    await expect(Volume.get(volume, { supervisor: sup })).rejects.toMatchObject({ code: 'E_VOLUME_NOT_FOUND' });
  });

  it('rejects bad guest paths and missing host paths with errors that name the option', () => {
    const b = () => Sandbox.builder('x');
    expect(() => b().volume('relative', (v) => v.tmpfs())).toThrow(/invalid option volume: an absolute guest path/);
    expect(() => b().volume('/app/../etc', (v) => v.tmpfs())).toThrow(/"\.\."/);
    expect(() => b().volume('/proc/x', (v) => v.tmpfs())).toThrow(/not inside \/proc, \/sys, \/dev/);
    expect(() => b().volume('/x', (v) => v.bind('/nonexistent/corral'))).toThrow(/invalid option volume \/x\.bind: an existing host directory/);
    expect(() => b().volume('/x', (v) => v.tmpfs().size(0))).toThrow(/volume \/x\.size: an integer from 1/);
    expect(() => b().volume('/x', (v) => v.named('Bad Name'))).toThrow(/volume \/x\.named/);
    expect(() => b().volume('/x', (v) => v.tmpfs()).volume('/x/y', (v) => v.tmpfs())).toThrow(/none inside another/);
    expect(() => b().volume('/x', (v) => v)).toThrow(/a volume kind/);
  });
});

