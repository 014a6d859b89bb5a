// When the process that owns attached sandboxes ends — normally or by SIGKILL — no qemu
// process, socket or run dir of corral is left behind.
import { readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { describe, expect, it } from 'vitest';
import { startChild } from '../helpers/child.ts';
import { alive, testSupervisor, until } from '../helpers/sandbox.ts';

/** Socket dirs of VM boots by process `pid` (other test files boot VMs at the same time). */
function runDirsOf(pid: number): string[] {
  return readdirSync(tmpdir()).filter((f) => f.startsWith(`corral-run-${pid}-`));
}

describe('cleanup when the owning process ends', () => {
  it('leaves no qemu when the process exits without stopping its sandbox', async () => {
    const { child, first } = await startChild('exit');
    const vmPid = first.vmPid as number;
    expect(alive(vmPid)).toBe(true);
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGUSR2'); // now it returns
    await exited;
    // The jail's launcher outlives qemu by the moment it takes to remove the run dir.
    await until(() => !alive(vmPid) && runDirsOf(child.pid!).length === 0, 10_000, `qemu ${vmPid} and its run dir to go`);
    // The process said so in the store on its way out (this once failed with lmdb-js's
    // "No current read transaction available" from an 'exit' hook).
    const sup = testSupervisor();
    try {
      expect(sup.store.getSandbox(`child-${child.pid}`)).toMatchObject({ status: 'stopped', stopReason: 'killed' });
    } finally {
      await sup.close();
    }
  });

  it('leaves no qemu when the process is SIGKILLed', async () => {
    const { child, first } = await startChild('hang');
    const vmPid = first.vmPid as number;
    expect(alive(vmPid)).toBe(true);
    child.kill('SIGKILL');
    await until(() => !alive(vmPid) && runDirsOf(child.pid!).length === 0, 10_000, `qemu ${vmPid} and its run dir to go`);
  });
});
