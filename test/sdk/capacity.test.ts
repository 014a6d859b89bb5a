// The supervisor's limits (maxSandboxes, memoryHeadroomMib): a create past one fails with
// E_NO_CAPACITY saying which, before anything is recorded or booted. Real VMs.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Sandbox, Supervisor, type SandboxEvent } from '../../src/index.ts';
import { uniqueName } from '../helpers/sandbox.ts';

describe('capacity limits', () => {
  const stateDir = mkdtempSync(join(tmpdir(), 'corral-capacity-'));
  const sups: Supervisor[] = [];
  const open = (o: ConstructorParameters<typeof Supervisor>[0]) => {
    const sup = new Supervisor({ stateDir, ...o });
    sups.push(sup);
    return sup;
  };
  afterAll(async () => {
    for (const s of sups) await s.close();
    rmSync(stateDir, { recursive: true, force: true });
  });

  it('refuses a create that would leave less host memory than memoryHeadroomMib, booting nothing', async () => {
    const sup = open({ memoryHeadroomMib: 100_000_000 });
    const spawned: SandboxEvent[] = [];
    sup.events$.subscribe((e) => e.type === 'sandbox.vm.spawned' && spawned.push(e));
    const name = uniqueName('cap-mem');
    await expect(Sandbox.builder(name).supervisor(sup).create()).rejects.toMatchObject({
      code: 'E_NO_CAPACITY',
      message: expect.stringMatching(/has \d+ MiB of memory available; a 256 MiB guest would leave less than memoryHeadroomMib 100000000/),
    });
    expect(spawned).toEqual([]);
    expect((await Sandbox.list({ supervisor: sup })).map((s) => s.name)).not.toContain(name);
  });

  it('refuses a create past maxSandboxes, and takes one again once a sandbox stopped', async () => {
    const sup = open({ maxSandboxes: 1 });
    const first = await Sandbox.builder(uniqueName('cap-1')).supervisor(sup).create();
    const second = uniqueName('cap-2');
    try {
      await expect(Sandbox.builder(second).supervisor(sup).create()).rejects.toMatchObject({ code: 'E_NO_CAPACITY', message: expect.stringContaining('maxSandboxes 1'), details: { live: 1, maxSandboxes: 1 } });
      expect((await Sandbox.list({ supervisor: sup })).map((s) => s.name)).not.toContain(second);
      expect((await first.info()).status).toBe('running');
    } finally {
      await first.stop();
    }
    const again = await Sandbox.builder(second).supervisor(sup).create();
    expect((await again.exec('true')).code).toBe(0);
    await again.stop();
    await Sandbox.remove(second, { supervisor: sup });
    await Sandbox.remove(first.name, { supervisor: sup });
  });
});
