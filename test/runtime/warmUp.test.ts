// The warm-up of a restored VM (src/actor/SandboxActor.ts, #warmUp), on real VMs: a fresh
// TCG qemu restored from a template or a snapshot runs `true` once in the background (unless
// the sandbox's own first exec comes within 250 ms), so the guest's exec paths are
// translated before the sandbox's first exec needs them (issue #19: that first exec,
// whenever it came, read as a slow wake). What is checked are its conditions and events;
// its effect on latency is a figure (`npm run bench:cpu`, exec_after_idle).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox, Snapshot, type SandboxEvent } from '../../src/index.ts';
import type { Supervisor } from '../../src/supervisor/Supervisor.ts';
import { testSupervisor, uniqueName, until } from '../helpers/sandbox.ts';

describe('warm-up of a restored VM', () => {
  let sup: Supervisor;
  const events: SandboxEvent[] = [];
  const of = (name: string, type: SandboxEvent['type']) => events.filter((e) => e.name === name && e.type === type);
  beforeAll(() => {
    sup = testSupervisor();
    sup.events$.subscribe((e) => events.push(e));
  });
  afterAll(async () => {
    await sup?.close();
  });

  it('runs once after a restore, as no exec of the sandbox: sandbox.warmed follows sandbox.restored, and exec events are the caller’s alone', async () => {
    const name = uniqueName('warm');
    const sb = await Sandbox.builder(name).supervisor(sup).create();
    // Under KVM there is nothing to translate, and no warm-up.
    if ((await sb.info()).accel !== 'tcg') return void (await sb.stop());
    try {
      await until(() => of(name, 'sandbox.warmed').length > 0, 30_000, 'sandbox.warmed');
      const mine = events.filter((e) => e.name === name).map((e) => e.type);
      expect(mine.indexOf('sandbox.restored')).toBeLessThan(mine.indexOf('sandbox.warmed'));
      expect(of(name, 'sandbox.warmed')).toHaveLength(1);
      expect(of(name, 'sandbox.warmed')[0]).toMatchObject({ ms: expect.any(Number) });
      expect(await sb.exec('echo', ['hi'])).toMatchObject({ code: 0, stdout: 'hi\n' });
      expect(of(name, 'exec.started')).toHaveLength(1);
      expect(of(name, 'exec.started')[0]).toMatchObject({ argv: ['echo', 'hi'] });
      expect(of(name, 'exec.exited')).toHaveLength(1);
    } finally {
      await sb.stop();
    }
    expect(of(name, 'sandbox.warmed')).toHaveLength(1);
  });

  it('lets an exec that comes at once after the create run as usual: the caller’s exec alone, the warm-up at most once (skipped when the exec came first)', async () => {
    const name = uniqueName('warmnow');
    const sb = await Sandbox.builder(name).supervisor(sup).create();
    try {
      expect(await sb.exec('echo', ['now'])).toMatchObject({ code: 0, stdout: 'now\n' });
      expect(of(name, 'exec.started')).toEqual([expect.objectContaining({ argv: ['echo', 'now'] })]);
    } finally {
      await sb.stop();
    }
    expect(of(name, 'sandbox.warmed').length).toBeLessThanOrEqual(1);
  });

  it('leaves a sandbox stopped right after its create (warm-up still running or not) stopped as requested, not failed', async () => {
    const name = uniqueName('warmstop');
    const sb = await Sandbox.builder(name).supervisor(sup).create();
    await sb.stop();
    expect((await sb.info()).status).toBe('stopped');
    expect(of(name, 'sandbox.stopped')).toEqual([expect.objectContaining({ reason: 'requested' })]);
    expect(of(name, 'sandbox.failed')).toHaveLength(0);
  });

  it('warms a sandbox restored from a snapshot, and not a cold-booted one', async () => {
    const src = await Sandbox.builder(uniqueName('warmsrc')).supervisor(sup).create();
    const snap = uniqueName('warmsnap');
    const cold = uniqueName('warmcold');
    let copy: Sandbox | undefined;
    let coldSb: Sandbox | undefined;
    try {
      await src.snapshot(snap);
      copy = await Sandbox.builder(uniqueName('warmcopy')).fromSnapshot(snap).supervisor(sup).create();
      if ((await copy.info()).accel === 'tcg') await until(() => of(copy!.name, 'sandbox.warmed').length > 0, 30_000, 'sandbox.warmed of the copy');
      expect((await copy.exec('true')).code).toBe(0);
      coldSb = await Sandbox.builder(cold).template(false).supervisor(sup).create();
      expect((await coldSb.exec('true')).code).toBe(0);
    } finally {
      await Promise.all([src.stop(), copy?.stop(), coldSb?.stop()]);
      await Snapshot.remove(snap, { supervisor: sup });
    }
    // Every event of the cold sandbox came before its stop resolved.
    expect(of(cold, 'sandbox.started')).toHaveLength(1);
    expect(of(cold, 'sandbox.warmed')).toHaveLength(0);
  });
});
