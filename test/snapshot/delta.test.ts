// Snapshots of sandboxes that run on a template's RAM hold only the pages their guest
// changed (src/vm/migrationStream.ts), on real VMs.
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Sandbox } from '../../src/index.ts';
import { listTemplates, pruneTemplates } from '../../src/snapshot/templates.ts';
import { Supervisor } from '../../src/supervisor/Supervisor.ts';
import { uniqueName } from '../helpers/sandbox.ts';

describe('snapshots over a template', () => {
  it('hold only the changed pages, restore them exactly, chain, and need their template', async () => {
    // A state dir of its own: the test removes its template at the end.
    const dir = mkdtempSync(join(tmpdir(), 'corral-test-delta-'));
    const sup = new Supervisor({ stateDir: dir });
    const made: Sandbox[] = [];
    try {
      const src = await Sandbox.builder(uniqueName('delta')).supervisor(sup).create();
      made.push(src);
      // 8 MiB of random bytes that live in guest memory only (a tmpfs), and their digest.
      await src.shell('mkdir -p /mnt/m && mount -t tmpfs none /mnt/m && dd if=/dev/urandom of=/mnt/m/x bs=1048576 count=8 2>/dev/null && md5sum /mnt/m/x > /root/x.md5');
      const first = uniqueName('d1');
      const meta = await src.snapshot(first);
      const [tpl] = await listTemplates(dir);
      expect(meta.ram?.template).toBe(tpl!.key);
      // The 8 MiB and what else the guest changed, not its 256 MiB of RAM.
      const bytes = statSync(join(dir, 'snapshots', first, 'state')).size;
      expect(bytes).toBeGreaterThan(8 * 2 ** 20);
      expect(bytes).toBeLessThan(64 * 2 ** 20);

      const a = await Sandbox.builder(uniqueName('froma')).fromSnapshot(first).supervisor(sup).create();
      made.push(a);
      expect((await a.shell('md5sum -c /root/x.md5')).stdout).toBe('/mnt/m/x: OK\n');
      // A sandbox restored from such a snapshot runs on the same template's RAM: its own
      // snapshot is a delta over it too, and holds both its parent's changes and its own.
      await a.shell('echo second > /mnt/m/y');
      const second = uniqueName('d2');
      expect((await a.snapshot(second)).ram?.template).toBe(tpl!.key);
      const b = await Sandbox.builder(uniqueName('fromb')).fromSnapshot(second).supervisor(sup).create();
      made.push(b);
      expect((await b.shell('md5sum -c /root/x.md5 && cat /mnt/m/y')).stdout).toBe('/mnt/m/x: OK\nsecond\n');

      for (const s of made.splice(0)) {
        await s.stop();
        await Sandbox.remove(s.name, { supervisor: sup });
      }
      // The snapshots need the template's RAM: a prune keeps it.
      expect((await pruneTemplates(dir)).templates).toBe(0);
      rmSync(join(dir, 'templates', tpl!.key), { recursive: true, force: true });
      await expect(Sandbox.builder(uniqueName('gone')).fromSnapshot(first).supervisor(sup).create()).rejects.toMatchObject({
        code: 'E_SNAPSHOT',
        message: expect.stringContaining(`template ${tpl!.key}, and that template is gone`),
      });
    } finally {
      await Promise.all(made.map((s) => s.stop()));
      await sup.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
