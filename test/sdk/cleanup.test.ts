// When the process that owns attached sandboxes ends — normally or by SIGKILL — no qemu
// process, socket or run dir of corral is left behind.
import { readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { describe, expect, it } from 'vitest';
import { startChild } from '../helpers/child.ts';
import { alive, until } from '../helpers/sandbox.ts';

function runDirs(): string[] {
  return readdirSync(tmpdir()).filter((f) => f.startsWith('corral-run-'));
}

describe('cleanup when the owning process ends', () => {
  it('leaves no qemu when the process exits without stopping its sandbox', async () => {
    const before = runDirs();
    const { child, first } = await startChild('exit');
    const vmPid = first.vmPid as number;
    expect(alive(vmPid)).toBe(true);
    await new Promise((r) => child.once('exit', r));
    await until(() => !alive(vmPid), 10_000, `qemu ${vmPid} to go`);
    expect(runDirs().filter((d) => !before.includes(d))).toEqual([]);
  });

  it('leaves no qemu when the process is SIGKILLed', async () => {
    const before = runDirs();
    const { child, first } = await startChild('hang');
    const vmPid = first.vmPid as number;
    expect(alive(vmPid)).toBe(true);
    child.kill('SIGKILL');
    await until(() => !alive(vmPid), 10_000, `qemu ${vmPid} to go`);
    expect(runDirs().filter((d) => !before.includes(d))).toEqual([]);
  });
});
