// Snapshots of running sandboxes and forks, on real VMs with qemu migration.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox, Snapshot } from '../../src/index.ts';
import type { Supervisor } from '../../src/supervisor/Supervisor.ts';
import { testSupervisor, uniqueName } from '../helpers/sandbox.ts';

describe('snapshots and forks', () => {
  let sup: Supervisor;
  let src: Sandbox;
  beforeAll(async () => {
    sup = testSupervisor();
    src = await Sandbox.builder(uniqueName('snapsrc')).env('FROM', 'src').supervisor(sup).create();
  });
  afterAll(async () => {
    await src?.stop();
    await sup?.close();
  });

  it('starts a sandbox from a snapshot with memory, disk and running processes as they were', async () => {
    await src.shell('echo on-disk > /root/file; (while true; do sleep 0.2; done) > /dev/null 2>&1 & echo $! > /root/bg.pid');
    // A process that only exists in memory: a shell variable in a long-lived shell is too
    // fragile to read back, so use a running process and its pid.
    const pid = (await src.shell('cat /root/bg.pid')).stdout.trim();
    const name = uniqueName('snap');
    const meta = await src.snapshot(name);
    expect(meta).toMatchObject({ name, source: src.name });
    expect((await Snapshot.list({ supervisor: sup })).map((s) => s.name)).toContain(name);
    // The source runs on after the save.
    expect((await src.exec('echo', ['alive'])).stdout).toBe('alive\n');
    await expect(src.snapshot(name)).rejects.toMatchObject({ code: 'E_SNAPSHOT_EXISTS' });

    const copy = await Sandbox.builder(uniqueName('fromsnap')).fromSnapshot(name).supervisor(sup).create();
    try {
      const r = await copy.shell(`cat /root/file; kill -0 ${pid} && echo running; hostname; echo $FROM`);
      expect(r.stdout).toBe(`on-disk\nrunning\n${copy.name}\nsrc\n`);
    } finally {
      await copy.stop();
    }
    await Snapshot.remove(name, { supervisor: sup });
    expect((await Snapshot.list({ supervisor: sup })).map((s) => s.name)).not.toContain(name);
    await expect(Sandbox.builder(uniqueName('nosnap')).fromSnapshot(name).supervisor(sup).create()).rejects.toMatchObject({ code: 'E_SNAPSHOT_NOT_FOUND' });
  });

  it('forks running copies that share the parent state and then diverge', async () => {
    await src.shell('echo before > /root/shared');
    const kids = await src.fork({ count: 2, prefix: uniqueName('kid') });
    try {
      const outs = await Promise.all(kids.map((k, i) => k.shell(`cat /root/shared; echo kid${i} > /root/mine; cat /root/mine; cat /proc/sys/kernel/random/uuid`)));
      const [a, b] = outs.map((o) => o.stdout.split('\n'));
      expect(a!.slice(0, 2)).toEqual(['before', 'kid0']);
      expect(b!.slice(0, 2)).toEqual(['before', 'kid1']);
      expect(a![2]).not.toBe(b![2]);
      expect((await src.shell('cat /root/mine 2>/dev/null || echo none')).stdout).toBe('none\n');
    } finally {
      await Promise.all(kids.map((k) => k.stop()));
    }
    // The temporary snapshot behind the fork is gone.
    expect((await Snapshot.list({ supervisor: sup })).filter((s) => s.name.startsWith('fork-'))).toEqual([]);
  });

  it('forks all or none: a fork that cannot be made ends the ones that came up', async () => {
    const prefix = uniqueName('taken');
    // The second name is taken by a running sandbox: its fork fails with E_SANDBOX_EXISTS.
    const squatter = await Sandbox.builder(`${prefix}-2`).supervisor(sup).create();
    try {
      await expect(src.fork({ count: 2, prefix })).rejects.toMatchObject({ code: 'E_SANDBOX_EXISTS' });
      const left = (await Sandbox.list({ supervisor: sup })).filter((s) => s.name.startsWith(prefix)).map((s) => [s.name, s.status]);
      expect(left).toEqual([[`${prefix}-2`, 'running']]); // the first fork was ended and removed
      expect((await Snapshot.list({ supervisor: sup })).filter((s) => s.name.startsWith('fork-'))).toEqual([]);
      expect((await src.info()).status).toBe('running');
    } finally {
      await squatter.stop();
      await Sandbox.remove(squatter.name, { supervisor: sup });
    }
  });
});
