// Templates: the first sandbox of a shape boots cold and leaves a saved VM; later ones
// restore it and are then handed their own identity. Real VMs, real qemu migration.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox, type SandboxEvent } from '../../src/index.ts';
import type { Supervisor } from '../../src/supervisor/Supervisor.ts';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { findTemplate, listTemplates, pruneTemplates } from '../../src/snapshot/templates.ts';
import { Supervisor as SupervisorClass } from '../../src/supervisor/Supervisor.ts';
import { testSupervisor, uniqueName } from '../helpers/sandbox.ts';

describe('templates', () => {
  let sup: Supervisor;
  const events: SandboxEvent[] = [];
  // A memory size of its own: this file's template is built here, whatever ran before.
  const memoryMib = 200;
  beforeAll(() => {
    sup = testSupervisor();
    sup.events$.subscribe((e) => events.push(e));
  });
  afterAll(async () => {
    await sup?.close();
  });

  it('builds one template for concurrent creates of a new shape, then restores clones with their own identity', async () => {
    const names = [uniqueName('tpl'), uniqueName('tpl')];
    const [a, b] = await Promise.all(names.map((n) => Sandbox.builder(n).memory(memoryMib).supervisor(sup).create()));
    try {
      const built = events.filter((e) => e.type === 'template.built');
      expect(built).toHaveLength(1);
      for (const n of names) expect(events.find((e) => e.name === n && e.type === 'sandbox.restored')).toBeTruthy();

      // Clones share RAM up to the save, so each must get fresh randomness, its clock, its name.
      const [ra, rb] = await Promise.all([a!, b!].map((s) => s.shell('cat /proc/sys/kernel/random/uuid; head -c 16 /dev/urandom | od -An -tx1; hostname; date +%s')));
      const [ua, xa, ha, ta] = ra!.stdout.trim().split('\n');
      const [ub, xb, hb, tb] = rb!.stdout.trim().split('\n');
      expect(ua).not.toBe(ub);
      expect(xa).not.toBe(xb);
      expect([ha, hb]).toEqual(names);
      const now = Date.now() / 1000;
      expect(Math.abs(Number(ta) - now)).toBeLessThan(30);
      expect(Math.abs(Number(tb) - now)).toBeLessThan(30);

      // Each has its own upper disk: a write in one is not seen by the other.
      await a!.shell('echo only-a > /root/mine');
      expect((await b!.shell('cat /root/mine 2>&1 || echo absent')).stdout).toMatch(/absent|No such file/);
      expect((await a!.shell('cat /root/mine')).stdout).toBe('only-a\n');
    } finally {
      await Promise.all([a, b].map((s) => s?.stop()));
    }
  });

  it('a restored sandbox restarts from its own disk after a stop', async () => {
    const name = uniqueName('tplrestart');
    const sb = await Sandbox.builder(name).memory(memoryMib).supervisor(sup).create();
    await sb.shell('echo kept > /root/kept; sync');
    await sb.stop();
    const again = await Sandbox.start(name, { supervisor: sup });
    try {
      expect((await again.shell('cat /root/kept')).stdout).toBe('kept\n');
    } finally {
      await again.stop();
    }
  });

  it('a change of shape is a new template; template(false) boots cold', async () => {
    const before = events.filter((e) => e.type === 'template.built').length;
    const cold = await Sandbox.builder(uniqueName('cold')).memory(memoryMib).template(false).supervisor(sup).create();
    try {
      expect(events.filter((e) => e.name === cold.name && e.type === 'sandbox.restored')).toHaveLength(0);
      expect((await cold.exec('echo', ['cold'])).stdout).toBe('cold\n');
    } finally {
      await cold.stop();
    }
    const other = await Sandbox.builder(uniqueName('shape')).memory(memoryMib + 16).supervisor(sup).create();
    try {
      expect(events.filter((e) => e.type === 'template.built').length).toBe(before + 1);
    } finally {
      await other.stop();
    }
  });

  it('are indexed, and pruned only when no sandbox disk backs onto them', async () => {
    // A state dir of its own: a prune must not race the other test files' templates.
    const dir = mkdtempSync(join(tmpdir(), 'corral-test-prune-'));
    const own = new SupervisorClass({ stateDir: dir });
    try {
      const name = uniqueName('prune');
      const sb = await Sandbox.builder(name).supervisor(own).create();
      await sb.stop();
      const [rec] = await listTemplates(dir);
      expect(rec).toMatchObject({ key: expect.any(String), bytes: expect.any(Number) });
      expect(await pruneTemplates(dir)).toEqual({ templates: 0, bytes: 0 });
      // The stopped sandbox's disk backs onto the template: it must still start.
      const again = await Sandbox.start(name, { supervisor: own });
      expect((await again.exec('echo', ['ok'])).stdout).toBe('ok\n');
      await again.stop();
      await Sandbox.remove(name, { supervisor: own });
      expect((await pruneTemplates(dir)).templates).toBe(1);
      expect(await listTemplates(dir)).toEqual([]);
      expect(findTemplate(dir, rec!.key)).toBeUndefined();
    } finally {
      await own.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
