// Which qemu is a sandbox's, as the crash reconciler asks before it kills one: real VMs,
// a restored clone (its command line names the template's guest, not the sandbox) and a
// cold boot.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox } from '../../src/index.ts';
import { isSandboxVm } from '../../src/runtime/process.ts';
import { sandboxDir } from '../../src/runtime/rootfs.ts';
import type { Supervisor } from '../../src/supervisor/Supervisor.ts';
import { testSupervisor, uniqueName } from '../helpers/sandbox.ts';

describe('isSandboxVm', () => {
  let sup: Supervisor;
  beforeAll(() => {
    sup = testSupervisor();
  });
  afterAll(async () => {
    await sup?.close();
  });

  it.each([
    ['restored from its template', true],
    ['cold-booted', false],
  ])('knows the VM of a sandbox %s, and no other process', async (_, template) => {
    const name = uniqueName(template ? 'vm-restored' : 'vm-cold');
    const other = `${name}x`; // a longer name with the same prefix is another sandbox
    const sb = await Sandbox.builder(name).template(template).supervisor(sup).create();
    try {
      const pid = (await sb.info()).pid!;
      expect(isSandboxVm(pid, sandboxDir(sup.stateDir, name), name)).toBe(true);
      expect(isSandboxVm(pid, sandboxDir(sup.stateDir, other), other)).toBe(false);
      expect(isSandboxVm(process.pid, sandboxDir(sup.stateDir, name), name)).toBe(false); // not a qemu
      await sb.kill();
      expect(isSandboxVm(pid, sandboxDir(sup.stateDir, name), name)).toBe(false); // gone
    } finally {
      await sb.kill();
      await Sandbox.remove(name, { supervisor: sup });
    }
  });
});
