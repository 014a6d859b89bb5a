// Spare VMs (Supervisor option `spares`, src/snapshot/spares.ts), on real VMs: a create of
// the template's shape takes a restored, warmed, frozen VM and makes it the sandbox's own,
// disk and identity included; a sandbox with guest devices never takes one.
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { firstValueFrom } from 'rxjs';
import { filter } from 'rxjs/operators';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox, Supervisor, type SandboxEvent } from '../../src/index.ts';
import { isSandboxVm } from '../../src/runtime/process.ts';
import { findTemplate, pruneTemplates } from '../../src/snapshot/templates.ts';
import { sandboxDir } from '../../src/runtime/rootfs.ts';
import { uniqueName } from '../helpers/sandbox.ts';

describe('spare VMs', () => {
  let sup: Supervisor;
  // Their own state dir: the spares dir and its cleanup are part of what is checked.
  const stateDir = mkdtempSync(join(tmpdir(), 'corral-spares-'));
  const events: SandboxEvent[] = [];
  beforeAll(() => {
    // One worker: the spare is made where the next create lands.
    sup = new Supervisor({ stateDir, spares: 1, workers: 1 });
    sup.events$.subscribe((e) => events.push(e));
  });
  afterAll(async () => {
    await sup?.close();
    expect(existsSync(join(stateDir, 'spares', String(process.pid)))).toBe(false);
    rmSync(stateDir, { recursive: true, force: true });
  });

  it('refuses a bad count, naming the option', () => {
    expect(() => new Supervisor({ stateDir, spares: 9 })).toThrowError(expect.objectContaining({ code: 'E_INVALID_OPTION', message: expect.stringContaining('spares') }));
  });

  it('hands a create a warmed spare that becomes the sandbox: its name, its disk, its VM', async () => {
    const spareReady = firstValueFrom(sup.events$.pipe(filter((e) => e.type === 'template.spare')));
    const first = await Sandbox.builder(uniqueName('spare-a')).supervisor(sup).create();
    try {
      await spareReady; // made after the first create restored from the template
      const name = uniqueName('spare-b');
      let sb = await Sandbox.builder(name).supervisor(sup).create();
      const restored = events.find((e) => e.name === name && e.type === 'sandbox.restored');
      expect(restored).toMatchObject({ spare: true });
      expect(events.find((e) => e.name === name && e.type === 'sandbox.vm.spawned')).toMatchObject({ pid: (await sb.info()).pid });
      expect(await sb.exec('hostname')).toMatchObject({ code: 0, stdout: `${name}\n` });
      // Its overlay moved into its own directory: the crash reconciler knows its VM, and
      // what it writes survives a kill and a start like any sandbox's.
      expect(isSandboxVm((await sb.info()).pid!, sandboxDir(stateDir, name), name)).toBe(true);
      expect(await sb.shell('echo mine > /root/own && sync')).toMatchObject({ code: 0 });
      await sb.kill();
      // A spare ran its first exec before it was frozen: no warm-up of its own (a restore's).
      expect(events.filter((e) => e.name === name && e.type === 'sandbox.warmed')).toHaveLength(0);
      sb = await Sandbox.start(name, { supervisor: sup });
      expect(await sb.exec('cat', ['/root/own'])).toMatchObject({ code: 0, stdout: 'mine\n' });
      await sb.kill();
      await Sandbox.remove(name, { supervisor: sup });
    } finally {
      await first.kill();
      await Sandbox.remove(first.name, { supervisor: sup });
    }
  });

  it('gives none to a sandbox with a volume (its VM needs a device a spare lacks)', async () => {
    const name = uniqueName('spare-vol');
    const dir = mkdtempSync(join(tmpdir(), 'corral-spare-vol-'));
    try {
      const sb = await Sandbox.builder(name).volume('/data', (v) => v.bind(dir)).supervisor(sup).create();
      expect(events.find((e) => e.name === name && e.type === 'sandbox.restored')).toMatchObject({ spare: false });
      await sb.kill();
      await Sandbox.remove(name, { supervisor: sup });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    // The spares that wait have their overlays in this process's spares dir, nothing else.
    for (const f of readdirSync(join(stateDir, 'spares', String(process.pid)))) expect(f).toMatch(/^[0-9a-f]{16}-[0-9a-f]{8}\.qcow2$/);
  });

  it('keeps the template a waiting spare is backed by when templates are pruned', async () => {
    const ready = firstValueFrom(sup.events$.pipe(filter((e) => e.type === 'template.spare')));
    const a = await Sandbox.builder(uniqueName('spare-p')).supervisor(sup).create();
    await ready;
    const key = (events.find((e) => e.name === a.name && e.type === 'sandbox.restored') as Extract<SandboxEvent, { type: 'sandbox.restored' }>).template;
    await a.kill();
    await Sandbox.remove(a.name, { supervisor: sup });
    // No sandbox uses that template now; the spare does (the volume test's template goes).
    await pruneTemplates(stateDir);
    expect(findTemplate(stateDir, key)).toBeDefined();
    const name = uniqueName('spare-q');
    const b = await Sandbox.builder(name).supervisor(sup).create();
    expect(events.find((e) => e.name === name && e.type === 'sandbox.restored')).toMatchObject({ spare: true });
    await b.kill();
    const again = await Sandbox.start(name, { supervisor: sup }); // a cold boot on its overlay: the backing file is there
    expect((await again.exec('true')).code).toBe(0);
    await again.kill();
    await Sandbox.remove(name, { supervisor: sup });
  });
});
