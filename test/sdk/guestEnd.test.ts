// A guest that ends itself ends its sandbox: busybox poweroff/halt/reboot (forced ones call
// reboot(2) directly, plain ones signal PID 1), PID 1 (the agent) dying, a kernel panic. Each
// on a real VM: the reason, wait()'s result, the sandbox.stopped event, the store record,
// and no qemu process left. Attached and detached, template-restored and cold-booted.
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox, type SandboxEvent, type StopReason } from '../../src/index.ts';
import type { Supervisor } from '../../src/supervisor/Supervisor.ts';
import { alive, testSupervisor, uniqueName, until } from '../helpers/sandbox.ts';

const REPO = fileURLToPath(new URL('../..', import.meta.url));

// PID 1's code overwritten with int3 through /proc/1/mem: the next instruction it runs traps,
// the agent dies of SIGTRAP and the kernel panics ("Attempted to kill init!").
const KILL_AGENT = [
  "set -- $(grep -m1 ' r-xp ' /proc/1/maps)",
  'start=$((0x${1%-*})); end=$((0x${1#*-}))',
  "tr '\\0' '\\314' < /dev/zero | dd of=/proc/1/mem bs=4096 seek=$((start / 4096)) count=$(((end - start) / 4096)) conv=notrunc",
].join('\n');

// A real kernel panic with no sysrq in the kernel: an out-of-memory with panic_on_oom=2
// (a panic even when the OOM is confined to the exec's cgroup).
const PANIC = 'echo 2 > /proc/sys/vm/panic_on_oom; awk \'BEGIN { s = "x"; for (i = 0; i < 25; i++) s = s s; for (i = 0; i < 400; i++) a[i] = s i }\'';

/** Runs `command` in the guest, waits for the sandbox to end on its own, checks everything that says how. */
async function endsWith(sup: Supervisor, sb: Sandbox, command: string, reason: StopReason, settled?: () => Promise<void>): Promise<void> {
  const events: SandboxEvent[] = [];
  const sub = sb.events$.subscribe((e) => events.push(e));
  try {
    const { pid } = await sb.info();
    expect(alive(pid!)).toBe(true);
    const waited = sb.wait();
    // The exec never finishes: its VM goes away under it.
    const exec = sb.shell(command).then(
      (r) => ({ ok: true as const, r }),
      (e: Error & { code?: string }) => ({ ok: false as const, code: e.code }),
    );
    const info = await waited;
    expect(info).toMatchObject({ status: 'stopped', stopReason: reason });
    expect(alive(pid!)).toBe(false);
    expect(await exec).toMatchObject({ ok: false });
    expect(events.filter((e) => e.type === 'sandbox.stopped')).toMatchObject([{ type: 'sandbox.stopped', reason }]);
    await settled?.();
    expect(sup.store.getSandbox(sb.name)).toMatchObject({ status: 'stopped', stopReason: reason });
  } finally {
    sub.unsubscribe();
    await Sandbox.remove(sb.name, { supervisor: sup });
  }
}

describe('a guest that ends itself', () => {
  let sup: Supervisor;
  beforeAll(() => {
    sup = testSupervisor();
  });
  afterAll(async () => {
    await sup?.close();
  });

  const restored = (prefix: string) => Sandbox.builder(uniqueName(prefix)).supervisor(sup).create();
  const cold = (prefix: string) => Sandbox.builder(uniqueName(prefix)).template(false).supervisor(sup).create();

  it.each([
    ['poweroff -f', 'guest-poweroff'],
    ['poweroff', 'guest-poweroff'],
    // The guest kernel has no power-off device: it turns a power-off into a halt itself.
    ['halt -f', 'guest-poweroff'],
    ['halt', 'guest-poweroff'],
    ['reboot -f', 'guest-reboot'],
    ['reboot', 'guest-reboot'],
  ] as const)('`%s` in a template-restored VM stops the sandbox as %s', async (command, reason) => {
    await endsWith(sup, await restored('end'), command, reason);
  });

  it.each([
    ['poweroff -f', 'guest-poweroff'],
    ['halt', 'guest-poweroff'],
    ['reboot', 'guest-reboot'],
  ] as const)('`%s` in a cold-booted VM stops the sandbox as %s', async (command, reason) => {
    await endsWith(sup, await cold('cold'), command, reason);
  });

  it('the agent (PID 1) dying is a crash', async () => {
    await endsWith(sup, await restored('agent'), KILL_AGENT, 'crashed');
  });

  it('a kernel panic is a crash', async () => {
    // little RAM, so the OOM comes fast: 128 MiB, the least Debian's kernel is given
    const sb = await Sandbox.builder(uniqueName('panic')).template(false).memory(128).supervisor(sup).create();
    await endsWith(sup, sb, PANIC, 'crashed');
  });

  it('a detached sandbox whose guest powers off is stopped, its host process and VM gone', async () => {
    const sb = await Sandbox.builder(uniqueName('det')).supervisor(sup).createDetached();
    const ownerPid = sup.store.getSandbox(sb.name)!.ownerPid!;
    // The host process writes the final record, asynchronously to the answer wait() got;
    // it has when it exits (its supervisor's close flushes the store).
    await endsWith(sup, sb, 'poweroff -f', 'guest-poweroff', () => until(() => !alive(ownerPid), 10_000, 'the detached host process to exit'));
  });

  it('a plain Node script: wait() resolves after the guest powers itself off, and the process exits 0', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'corral-poweroff-'));
    try {
      mkdirSync(join(dir, 'node_modules'));
      symlinkSync(REPO, join(dir, 'node_modules', 'corral'));
      writeFileSync(
        join(dir, 'x.mjs'),
        [
          "import { Sandbox } from 'corral';",
          `const sb = await Sandbox.builder('script-${process.pid}').create();`,
          'const w = sb.wait();',
          "const ran = await sb.shell('sleep 1; poweroff -f').catch((e) => `exec failed: ${e.code}`);",
          'console.log(typeof ran === "string" ? ran : "exec finished");',
          'const info = await w;',
          'console.log(`stopped: ${info.stopReason}`);',
          'await Sandbox.remove(sb.name);',
        ].join('\n'),
      );
      const child = spawn(process.execPath, ['--import', join(REPO, 'node_modules/tsx/dist/esm/index.mjs'), 'x.mjs'], {
        cwd: dir,
        env: process.env,
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let out = '';
      let err = '';
      child.stdout.on('data', (d) => (out += d));
      child.stderr.on('data', (d) => (err += d));
      const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
      expect({ code, err }).toMatchObject({ code: 0 });
      expect(out).toBe('exec failed: E_VM_CRASHED\nstopped: guest-poweroff\n');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
