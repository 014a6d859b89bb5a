// Snapshots and forks of sandboxes with bind/named volumes and a network policy. Real VMs:
// qemu refuses to migrate while a 9p export is mounted, so the agent unmounts the volumes for
// the save and mounts them again after; a restore attaches the snapshot's devices again, with
// the new sandbox's own volumes, policy and ports. Needs root and nftables like network.test.ts;
// the only traffic is to HTTP servers on host loopback.
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import type { Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NetworkPolicy, Sandbox, Snapshot, Volume } from '../../src/index.ts';
import type { Supervisor } from '../../src/supervisor/Supervisor.ts';
import { fetchIn, freePort, listen, portOf } from '../helpers/net.ts';
import { testSupervisor, uniqueName } from '../helpers/sandbox.ts';


describe('snapshots of sandboxes with volumes and a network', () => {
  let sup: Supervisor;
  let src: Sandbox;
  let host: string;
  let open: Server;
  let other: Server;
  const volume = `snapvol-${process.pid}`;

  beforeAll(async () => {
    sup = testSupervisor();
    host = mkdtempSync(join(tmpdir(), 'corral-snapvol-'));
    for (const d of ['a', 'b']) {
      mkdirSync(join(host, d));
      writeFileSync(join(host, d, 'which'), `${d}\n`);
    }
    [open, other] = await Promise.all([listen('open-port'), listen('other-port')]);
    src = await Sandbox.builder(uniqueName('snapvol'))
      .volume('/work', (v) => v.bind(join(host, 'a')))
      .volume('/data', (v) => v.named(volume))
      .volume('/scratch', (v) => v.tmpfs().size(8))
      .network((n) => n.policy(NetworkPolicy.allowAll()))
      .supervisor(sup)
      .create();
  });
  afterAll(async () => {
    await src?.stop();
    for (const s of await Snapshot.list({ supervisor: sup }).catch(() => [])) if (s.source === src?.name) await Snapshot.remove(s.name, { supervisor: sup }).catch(() => {});
    await Volume.remove(volume, { supervisor: sup, force: true }).catch(() => {});
    await sup?.close();
    await Promise.all([open, other].map((s) => s && new Promise((r) => s.close(r))));
    rmSync(host, { recursive: true, force: true });
  });

  it('snapshots with volumes mounted, and the source keeps its mounts', async () => {
    writeFileSync(join(host, 'a', 'which'), 'a\n');
    await src.shell('echo in-volume > /data/v; echo in-tmpfs > /scratch/t; echo on-disk > /root/d');
    const name = uniqueName('snap');
    const meta = await src.snapshot(name);
    expect(meta.devices).toEqual({ shares: 2, nic: true });
    // Mounted again after the save: writes go through to the host.
    const r = await src.shell('cat /work/which /data/v; echo after > /work/out; grep -c " 9p " /proc/mounts');
    expect(r.stdout).toBe('a\nin-volume\n2\n');
    expect(readFileSync(join(host, 'a', 'out'), 'utf8')).toBe('after\n');

    // Restored as it was: volumes mounted again (and current: the host file changed since).
    writeFileSync(join(host, 'a', 'which'), 'a-changed\n');
    const copy = await Sandbox.builder(uniqueName('snapvol-copy')).fromSnapshot(name).supervisor(sup).create();
    try {
      const c = await copy.shell('cat /work/which /data/v /scratch/t /root/d; echo from-copy > /data/c');
      expect(c.stdout).toBe('a-changed\nin-volume\nin-tmpfs\non-disk\n');
      expect((await src.shell('cat /data/c')).stdout).toBe('from-copy\n');
      expect((await fetchIn(copy, portOf(other))).stdout).toBe('other-port');
    } finally {
      await copy.stop();
    }
  });

  it('fails clearly while a process holds a volume, and leaves it mounted', async () => {
    await src.shell('echo held > /data/held; cd /work && sleep 600 > /dev/null 2>&1 & echo $! > /root/busy.pid');
    try {
      const err = await src.snapshot(uniqueName('busy')).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'E_SNAPSHOT' });
      expect((err as Error).message).toMatch(/volume \/work could not be unmounted.*EBUSY/);
      const r = await src.shell('grep -c " 9p " /proc/mounts; cat /data/held');
      expect(r.stdout).toBe('2\nheld\n');
    } finally {
      await src.shell('p=$(cat /root/busy.pid); kill $p; for i in $(seq 50); do kill -0 $p 2>/dev/null || break; sleep 0.1; done');
    }
  });

  it('starts from a snapshot with the new builder\'s volumes, policy and ports', async () => {
    const name = uniqueName('snap');
    await src.snapshot(name);
    const hostPort = await freePort();
    const [child, cut] = await Promise.all([
      Sandbox.builder(uniqueName('snapvol-new'))
        .fromSnapshot(name)
        .volume('/other', (v) => v.bind(join(host, 'b')).readonly())
        .network((n) => n.policy(NetworkPolicy.publicOnly().allow({ cidr: '127.0.0.1/32', protocol: 'tcp', port: portOf(open) })))
        .port(hostPort, 8080)
        .supervisor(sup)
        .create(),
      // The snapshot's NIC stays attached (the device layout must match), with everything refused.
      Sandbox.builder(uniqueName('snapvol-cut')).fromSnapshot(name).network((n) => n.policy(NetworkPolicy.none())).supervisor(sup).create(),
    ]);
    try {
      // One volume asked for, on a VM with the snapshot's two 9p devices; the old mounts are gone.
      const r = await child.shell('cat /other/which; grep " 9p " /proc/mounts | cut -d" " -f2; ls /work | wc -l');
      expect(r.stdout).toBe('b\n/other\n0\n');
      // The source allowed everything; this one is publicOnly with one port open, from its first instruction.
      expect((await fetchIn(child, portOf(open))).stdout).toBe('open-port');
      expect((await fetchIn(child, portOf(other))).stdout).toMatch(/refused[\s\S]*FAIL/i);
      await child.shell('mkdir -p /www && echo restored-ok > /www/index.html && httpd -p 8080 -h /www');
      expect(await (await fetch(`http://127.0.0.1:${hostPort}/index.html`)).text()).toBe('restored-ok\n');
      expect((await fetchIn(cut, portOf(open))).stdout).toMatch(/FAIL/);
      expect((await cut.metrics()).network).not.toBeNull();
    } finally {
      await Promise.all([child.stop(), cut.stop()]);
    }
    // More bind/named volumes than the snapshot's VM has devices for: refused up front.
    const tooMany = Sandbox.builder(uniqueName('snapvol-many'))
      .fromSnapshot(name)
      .volume('/x', (v) => v.bind(join(host, 'a')))
      .volume('/y', (v) => v.bind(join(host, 'b')))
      .volume('/z', (v) => v.named(volume))
      .supervisor(sup)
      .create();
    await expect(tooMany).rejects.toMatchObject({ code: 'E_INVALID_OPTION', message: expect.stringMatching(/at most 2 bind\/named volumes/) });
  });

  it('forks a sandbox with volumes: the child mounts them too', async () => {
    await src.shell('echo for-the-kid > /data/k');
    const kid = await src.fork(uniqueName('snapvol-kid'));
    try {
      const r = await kid.shell('cat /data/k; echo kid > /work/kid');
      expect(r.stdout).toBe('for-the-kid\n');
      expect(readFileSync(join(host, 'a', 'kid'), 'utf8')).toBe('kid\n');
    } finally {
      await kid.stop();
    }
  });
});
