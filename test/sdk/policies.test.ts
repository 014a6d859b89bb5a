// pause/resume, drain, wait, crashes and the host-enforced policies, on real VMs.
import { firstValueFrom } from 'rxjs';
import { filter } from 'rxjs/operators';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { Sandbox, type ExecStreamItem, type SandboxEvent } from '../../src/index.ts';
import type { Supervisor } from '../../src/supervisor/Supervisor.ts';
import { alive, testSupervisor, uniqueName, withFakeQemu } from '../helpers/sandbox.ts';

/** Everything a stream wrote to stdout, once it exits. */
async function stdoutOf(stream: AsyncIterable<ExecStreamItem>): Promise<string> {
  let out = '';
  for await (const item of stream) if (item.type === 'stdout') out += Buffer.from(item.data).toString();
  return out;
}

describe('lifecycle verbs and policies', () => {
  let sup: Supervisor;
  beforeAll(() => {
    sup = testSupervisor();
  });
  afterAll(async () => {
    await sup?.close();
  });

  // How much CPU a paused VM burns is a figure, not a condition: bench/policies.bench.ts prints it.
  it('pause freezes the VM (paused event and status) and resume carries on the running exec', async () => {
    const sb = await Sandbox.builder(uniqueName('pause')).supervisor(sup).create();
    const events: SandboxEvent[] = [];
    sb.events$.subscribe((e) => events.push(e));
    try {
      // The exec waits for a line on stdin, so it is still running whatever the pause takes.
      const running = await sb.execStream('sh', ['-c', 'read x; echo done $x'], { stdin: 'pipe' });
      await sb.pause();
      expect(events.map((e) => e.type)).toContain('sandbox.paused');
      expect((await sb.info()).status).toBe('paused');
      await expect(sb.exec('true')).rejects.toThrowError(/it is paused/);
      await sb.resume();
      expect(events.map((e) => e.type)).toContain('sandbox.resumed');
      await running.write('resumed\n');
      await running.end();
      expect(await stdoutOf(running)).toBe('done resumed\n');
    } finally {
      await sb.stop();
    }
  });

  it('drain lets the running exec finish, refuses new ones, then stops with reason drained', async () => {
    const sb = await Sandbox.builder(uniqueName('drain')).supervisor(sup).create();
    const events: SandboxEvent[] = [];
    sb.events$.subscribe((e) => events.push(e));
    // Running (its start is awaited) and held on stdin: it cannot finish before the drain is in.
    const running = await sb.execStream('sh', ['-c', 'read x; echo finished $x'], { stdin: 'pipe' });
    const draining = firstValueFrom(sb.events$.pipe(filter((e) => e.type === 'sandbox.draining')));
    const drained = sb.drain();
    expect(await draining).toMatchObject({ type: 'sandbox.draining', inFlight: 1 });
    await expect(sb.exec('true')).rejects.toThrowError(/it is draining/);
    await running.write('ok\n');
    await running.end();
    expect(await stdoutOf(running)).toBe('finished ok\n');
    expect(await drained).toMatchObject({ status: 'stopped', stopReason: 'drained' });
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
    // The exec outlives 2.5 idle periods by the guest's own clock; that it ends with its output is the condition.
    const long = await sb.exec('sh', ['-c', 'sleep 2.5; echo survived']);
    expect(long.stdout).toBe('survived\n');
    expect(await sb.wait()).toMatchObject({ status: 'stopped', stopReason: 'idle-timeout' });
  });

  it('idle timeout with action pause freezes the VM, and the next call that needs the guest resumes it and restarts the timer', async () => {
    const sb = await Sandbox.builder(uniqueName('napper')).idleTimeout(1, { action: 'pause' }).supervisor(sup).create();
    try {
      await sb.waitForEvent('sandbox.paused', { where: (e) => e.reason === 'idle' });
      // info() and list() read it paused without waking it.
      expect((await sb.info()).status).toBe('paused');
      // The record follows the state event as its write commits.
      await vi.waitFor(async () => expect((await Sandbox.list({ supervisor: sup })).find((r) => r.name === sb.name)?.status).toBe('paused'));
      expect((await sb.info()).status).toBe('paused');
      // A file call wakes it…
      let woke = sb.waitForEvent('sandbox.resumed');
      await sb.fs().write('/tmp/woken', 'yes');
      expect((await woke).reason).toBe('call');
      // …and the idle timer starts again: it pauses once more, and an exec wakes it.
      await sb.waitForEvent('sandbox.paused', { where: (e) => e.reason === 'idle' });
      woke = sb.waitForEvent('sandbox.resumed');
      expect((await sb.exec('cat', ['/tmp/woken'])).stdout).toBe('yes');
      expect((await woke).reason).toBe('call');
      // waitForEvent ends when the sandbox stops first, or past its timeout.
      await expect(sb.waitForEvent('sandbox.snapshotted', { timeoutMs: 50 })).rejects.toMatchObject({ code: 'E_TIMEOUT' });
      // A pause asked for by the caller is not undone by a call: that exec is refused.
      await sb.pause();
      await expect(sb.exec('true')).rejects.toThrowError(/it is paused/);
      await sb.resume();
      const never = expect(sb.waitForEvent('sandbox.snapshotted')).rejects.toMatchObject({ code: 'E_ILLEGAL_STATE', message: expect.stringContaining('stopped') });
      await sb.stop();
      await never;
    } finally {
      await sb.stop();
    }
  });

  it('setMaxDuration sets the lifetime again from now, and a bad value names the option', async () => {
    const sb = await Sandbox.builder(uniqueName('extend')).maxDuration(3600).supervisor(sup).create();
    await expect(sb.setMaxDuration(-1)).rejects.toMatchObject({ code: 'E_INVALID_OPTION', message: expect.stringContaining('maxDuration') });
    await sb.setMaxDuration(1);
    expect(await sb.wait()).toMatchObject({ status: 'stopped', stopReason: 'max-duration' });
  });

  it('stop with a timeout escalates to kill when the guest does not go in time', async () => {
    // A guest that ignores SHUTDOWN and QMP quit: the fake qemu, as the real agent always obeys.
    const sb = await withFakeQemu('deaf', () => Sandbox.builder(uniqueName('deaf')).template(false).supervisor(sup).create());
    // The deaf guest never exits on its own: SIGKILL is the escalation, whatever the clock says.
    const info = await sb.stop({ timeoutMs: 500 });
    expect(info).toMatchObject({ status: 'stopped', stopReason: 'requested', exitSignal: 'SIGKILL' });
  });

  it('an aborted signal turns a graceful stop into a kill', async () => {
    const sb = await withFakeQemu('deaf', () => Sandbox.builder(uniqueName('abort')).template(false).supervisor(sup).create());
    const info = await sb.stop({ timeoutMs: 60_000, signal: AbortSignal.timeout(300) });
    expect(info).toMatchObject({ status: 'stopped', stopReason: 'killed', exitSignal: 'SIGKILL' });
  });
});
