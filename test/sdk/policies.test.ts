// pause/resume, drain, wait, crashes and the host-enforced policies, on real VMs.
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox, type SandboxEvent } from '../../src/index.ts';
import type { Supervisor } from '../../src/supervisor/Supervisor.ts';
import { alive, testSupervisor, uniqueName, withFakeQemu } from '../helpers/sandbox.ts';

/** utime + stime of a process, in clock ticks. */
function cpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(fields[11]) + Number(fields[12]);
}

describe('lifecycle verbs and policies', () => {
  let sup: Supervisor;
  beforeAll(() => {
    sup = testSupervisor();
  });
  afterAll(async () => {
    await sup?.close();
  });

  it('pause freezes the VM (no CPU used) and resume carries on the running exec', async () => {
    const sb = await Sandbox.builder(uniqueName('pause')).supervisor(sup).create();
    try {
      const { pid } = await sb.info();
      const running = sb.shell('sleep 1; echo done');
      await sb.pause();
      await new Promise((r) => setTimeout(r, 300)); // let in-flight work settle
      const t0 = cpuTicks(pid!);
      await new Promise((r) => setTimeout(r, 1500));
      const used = cpuTicks(pid!) - t0;
      // 1.5 s at 100 ticks/s; a running TCG guest burns dozens of ticks even when idle.
      expect(used).toBeLessThanOrEqual(2);
      await sb.resume();
      expect((await running).stdout).toBe('done\n');
    } finally {
      await sb.stop();
    }
  });

  it('drain lets the running exec finish, refuses new ones, then stops with reason drained', async () => {
    const sb = await Sandbox.builder(uniqueName('drain')).supervisor(sup).create();
    const events: SandboxEvent[] = [];
    sb.events$.subscribe((e) => events.push(e));
    const running = sb.shell('sleep 1; echo finished');
    await new Promise((r) => setTimeout(r, 200));
    const drained = sb.drain();
    await new Promise((r) => setTimeout(r, 100));
    await expect(sb.exec('true')).rejects.toThrowError(/it is draining|released/);
    expect((await running).stdout).toBe('finished\n');
    expect(await drained).toMatchObject({ status: 'stopped', stopReason: 'drained' });
    expect(events.map((e) => e.type)).toContain('sandbox.draining');
  });

  it('wait resolves when the guest shuts down on its own, without stopping it', async () => {
    const sb = await Sandbox.builder(uniqueName('wait')).supervisor(sup).create();
    const waited = sb.wait();
    // The exec never ends: its VM goes away under it (every way of ending: guestEnd.test.ts).
    const exec = sb.exec('reboot', ['-f']).then(() => 'finished', (e: Error & { code?: string }) => e.code);
    expect(await waited).toMatchObject({ status: 'stopped', stopReason: 'guest-reboot' });
    expect(await exec).toBe('E_VM_CRASHED');
  });

  it('a VM process that dies is reported as crashed, with an event, and its execs fail', async () => {
    const sb = await Sandbox.builder(uniqueName('crash')).supervisor(sup).create();
    const events: SandboxEvent[] = [];
    sb.events$.subscribe((e) => events.push(e));
    const { pid } = await sb.info();
    const stream = await sb.execStream('sleep', ['100']);
    const failed = stream.exited.then(() => undefined, (e: Error) => e);
    process.kill(pid!, 'SIGKILL');
    const info = await sb.wait();
    expect(info).toMatchObject({ status: 'stopped', stopReason: 'crashed', exitSignal: 'SIGKILL' });
    expect(await failed).toMatchObject({ code: 'E_VM_CRASHED' });
    expect(events.at(-1)).toMatchObject({ type: 'sandbox.stopped', reason: 'crashed', signal: 'SIGKILL' });
    expect(alive(pid!)).toBe(false);
  });

  it('max duration drains the sandbox when it passes', async () => {
    const sb = await Sandbox.builder(uniqueName('maxdur')).maxDuration(3).supervisor(sup).create();
    expect(await sb.wait()).toMatchObject({ status: 'stopped', stopReason: 'max-duration' });
  });

  it('idle timeout never reaps a long exec, and drains once the sandbox is idle', async () => {
    const sb = await Sandbox.builder(uniqueName('idle')).idleTimeout(1).supervisor(sup).create();
    const t0 = Date.now();
    const long = await sb.exec('sh', ['-c', 'sleep 2.5; echo survived']);
    expect(long.stdout).toBe('survived\n');
    expect(Date.now() - t0).toBeGreaterThan(2000);
    expect(await sb.wait()).toMatchObject({ status: 'stopped', stopReason: 'idle-timeout' });
  });

  it('stop with a timeout escalates to kill when the guest does not go in time', async () => {
    // A guest that ignores SHUTDOWN and QMP quit: the fake qemu, as the real agent always obeys.
    const sb = await withFakeQemu('deaf', () => Sandbox.builder(uniqueName('deaf')).template(false).supervisor(sup).create());
    const t0 = Date.now();
    const info = await sb.stop({ timeoutMs: 500 });
    expect(info).toMatchObject({ status: 'stopped', stopReason: 'requested', exitSignal: 'SIGKILL' });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(500);
  });

  it('an aborted signal turns a graceful stop into a kill', async () => {
    const sb = await withFakeQemu('deaf', () => Sandbox.builder(uniqueName('abort')).template(false).supervisor(sup).create());
    const info = await sb.stop({ timeoutMs: 60_000, signal: AbortSignal.timeout(300) });
    expect(info).toMatchObject({ status: 'stopped', stopReason: 'killed', exitSignal: 'SIGKILL' });
  });
});
