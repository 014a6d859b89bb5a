// The lifecycle chart on its own, with fake VM actors: the machine file holds no I/O, so its
// rules (which command is legal where, stop reasons, drain) are checked without a VM here.
// The same rules run against real VMs in test/sdk/*.test.ts. The policy timers (max duration,
// idle timeout) are the machine's `after` delays, which run on the actor's clock: here a
// SimulatedClock that only moves when a test moves it, so no test waits on a real timer.
import { afterEach, describe, expect, it } from 'vitest';
import { SimulatedClock, createActor, fromPromise, waitFor } from 'xstate';
import { assertCan, sandboxMachine, stateName, type SandboxInput, type VmBooted, type VmEnded } from '../../machines/sandbox.machine.ts';
import type { StopReason } from '../../src/bus/events.ts';
import { CorralError } from '../../src/errors.ts';

/** Every actor a test started: stopped after it, or their `after` timers outlive the file. */
const started = new Set<{ stop(): void }>();
afterEach(() => {
  for (const a of started) a.stop();
  started.clear();
});

function fakeMachine(opts: { bootFails?: boolean; maxDurationMs?: number; idleTimeoutMs?: number; idleAction?: 'stop' | 'pause' } = {}) {
  const log: string[] = [];
  let endStop!: (v: VmEnded) => void;
  const machine = sandboxMachine.provide({
    actors: {
      bootVm: fromPromise<VmBooted, SandboxInput>(async () => {
        if (opts.bootFails) throw new Error('no kernel');
        return { pid: 42, accel: 'tcg', bootMs: 1 };
      }),
      stopVm: fromPromise<VmEnded, { timeoutMs: number; reason: StopReason }>(async ({ input }) => {
        log.push(`stopVm:${input.reason}:${input.timeoutMs}`);
        return new Promise<VmEnded>((r) => (endStop = r));
      }),
      killVm: fromPromise<VmEnded, void>(async () => {
        log.push('killVm');
        return { exitCode: null, signal: 'SIGKILL' };
      }),
      endVm: fromPromise<VmEnded, void>(async () => {
        log.push('endVm');
        return { exitCode: 0, signal: null };
      }),
    },
    actions: {
      startExec: (_, p: { execId: number }) => void log.push(`exec:${p.execId}`),
      pauseVm: () => void log.push('pause'),
      resumeVm: () => void log.push('resume'),
      abortExecs: () => void log.push('abort'),
    },
  });
  const clock = new SimulatedClock();
  const actor = createActor(machine, { clock, input: { name: 'm', stopTimeoutMs: 500, maxDurationMs: opts.maxDurationMs, idleTimeoutMs: opts.idleTimeoutMs, idleAction: opts.idleAction } });
  started.add(actor);
  actor.start();
  return { actor, log, clock, finishStop: (v: VmEnded = { exitCode: 0, signal: null }) => endStop(v) };
}

describe('sandbox machine', () => {
  it('boots into running and counts execs in flight', async () => {
    const { actor, log } = fakeMachine();
    await waitFor(actor, (s) => stateName(s) === 'running');
    actor.send({ type: 'exec', execId: 1 });
    actor.send({ type: 'exec', execId: 2 });
    expect(actor.getSnapshot().context.inFlight).toBe(2);
    actor.send({ type: 'exec.done', execId: 1 });
    expect(actor.getSnapshot().context.inFlight).toBe(1);
    expect(log).toEqual(['exec:1', 'exec:2']);
  });

  it('refuses exec while paused with an error that names the state', async () => {
    const { actor, log } = fakeMachine();
    await waitFor(actor, (s) => stateName(s) === 'running');
    actor.send({ type: 'pause' });
    expect(stateName(actor.getSnapshot())).toBe('paused');
    expect(() => assertCan(actor.getSnapshot(), { type: 'exec', execId: 1 })).toThrowError(/cannot exec sandbox "m": it is paused/);
    expect(() => assertCan(actor.getSnapshot(), { type: 'pause' })).toThrowError(CorralError);
    actor.send({ type: 'resume' });
    expect(stateName(actor.getSnapshot())).toBe('running');
    expect(() => assertCan(actor.getSnapshot(), { type: 'resume' })).toThrowError(/cannot resume sandbox "m": it is running/);
    expect(log).toEqual(['pause', 'resume']);
  });

  it('drains: refuses new execs, waits for running ones, then stops with reason drained', async () => {
    const { actor, log, finishStop } = fakeMachine();
    await waitFor(actor, (s) => stateName(s) === 'running');
    actor.send({ type: 'exec', execId: 1 });
    actor.send({ type: 'drain' });
    expect(stateName(actor.getSnapshot())).toBe('draining');
    expect(() => assertCan(actor.getSnapshot(), { type: 'exec', execId: 2 })).toThrowError(/it is draining/);
    actor.send({ type: 'exec.done', execId: 1 });
    expect(stateName(actor.getSnapshot())).toBe('stopping');
    finishStop();
    const s = await waitFor(actor, (s) => s.status === 'done');
    expect(s.context.stopReason).toBe('drained');
    expect(log).toEqual(['exec:1', 'stopVm:drained:500', 'abort']);
  });

  it('stops gracefully with reason requested and records how the VM ended', async () => {
    const { actor, finishStop } = fakeMachine();
    await waitFor(actor, (s) => stateName(s) === 'running');
    actor.send({ type: 'stop' });
    // The VM ending during a stop is the stop working, not a crash.
    actor.send({ type: 'vm.exited', exitCode: 0, signal: null });
    expect(stateName(actor.getSnapshot())).toBe('stopping');
    finishStop({ exitCode: 0, signal: null });
    const s = await waitFor(actor, (s) => s.status === 'done');
    expect(s.context.stopReason).toBe('requested');
    expect(s.context.ended).toEqual({ exitCode: 0, signal: null });
  });

  it('escalates a stop to kill on request', async () => {
    const { actor, log } = fakeMachine();
    await waitFor(actor, (s) => stateName(s) === 'running');
    actor.send({ type: 'stop' });
    actor.send({ type: 'kill' });
    const s = await waitFor(actor, (s) => s.status === 'done');
    expect(s.context.stopReason).toBe('killed');
    expect(log).toContain('killVm');
  });

  it('records a VM that died on its own as crashed', async () => {
    const { actor } = fakeMachine();
    await waitFor(actor, (s) => stateName(s) === 'running');
    actor.send({ type: 'vm.exited', exitCode: null, signal: 'SIGSEGV' });
    const s = await waitFor(actor, (s) => s.status === 'done');
    expect(s.context.stopReason).toBe('crashed');
    expect(s.context.ended).toEqual({ exitCode: null, signal: 'SIGSEGV' });
  });

  it("records a VM that its cgroup's OOM killer ended as out-of-memory", async () => {
    const { actor } = fakeMachine();
    await waitFor(actor, (s) => stateName(s) === 'running');
    actor.send({ type: 'vm.exited', exitCode: null, signal: 'SIGKILL', oomKilled: true });
    const s = await waitFor(actor, (s) => s.status === 'done');
    expect(s.context.stopReason).toBe('out-of-memory');
    expect(s.context.ended).toEqual({ exitCode: null, signal: 'SIGKILL' });
  });

  it.each([
    ['poweroff', 'guest-poweroff'],
    ['reboot', 'guest-reboot'],
    ['panic', 'crashed'],
  ] as const)('a guest that says it did %s ends its VM and stops as %s', async (how, reason) => {
    const { actor, log } = fakeMachine();
    await waitFor(actor, (s) => stateName(s) === 'running');
    actor.send({ type: 'vm.guestEnded', how });
    // The VM's exit that follows is what endVm waits for, not a second crash.
    actor.send({ type: 'vm.exited', exitCode: 0, signal: null });
    const s = await waitFor(actor, (s) => s.status === 'done');
    expect(s.context.stopReason).toBe(reason);
    expect(log).toEqual(['endVm', 'abort']);
  });

  it('a guest reset seen while stopping (the agent resets to stop) stays a requested stop', async () => {
    const { actor, log, finishStop } = fakeMachine();
    await waitFor(actor, (s) => stateName(s) === 'running');
    actor.send({ type: 'stop' });
    actor.send({ type: 'vm.guestEnded', how: 'reboot' });
    finishStop();
    const s = await waitFor(actor, (s) => s.status === 'done');
    expect(s.context.stopReason).toBe('requested');
    expect(log).not.toContain('endVm');
  });

  it('kills the VM when the agent connection breaks', async () => {
    const { actor, log } = fakeMachine();
    await waitFor(actor, (s) => stateName(s) === 'running');
    actor.send({ type: 'vm.failed', error: { name: 'CorralError', message: 'bad frame', code: 'E_PROTOCOL' } });
    const s = await waitFor(actor, (s) => s.status === 'done');
    expect(s.context.stopReason).toBe('crashed');
    expect(s.context.error?.code).toBe('E_PROTOCOL');
    expect(log).toContain('killVm');
  });

  it('ends in stopped with reason boot-failed when boot fails', async () => {
    const { actor } = fakeMachine({ bootFails: true });
    const s = await waitFor(actor, (s) => s.status === 'done');
    expect(s.context.stopReason).toBe('boot-failed');
    expect(s.context.error?.message).toBe('no kernel');
  });

  it('drains when the max duration passes, across pause and resume', async () => {
    const { actor, clock, finishStop } = fakeMachine({ maxDurationMs: 150 });
    await waitFor(actor, (s) => stateName(s) === 'running');
    clock.increment(100);
    actor.send({ type: 'pause' });
    clock.increment(30);
    actor.send({ type: 'resume' });
    // Pausing and resuming did not restart the lifetime: 149 ms in, it still runs.
    clock.increment(19);
    expect(stateName(actor.getSnapshot())).toBe('running');
    clock.increment(1);
    expect(stateName(actor.getSnapshot())).toBe('stopping');
    finishStop();
    const s = await waitFor(actor, (s) => s.status === 'done');
    expect(s.context.stopReason).toBe('max-duration');
  });

  it('stops at the max duration a graceful-stop budget after draining, even under a command that never ends', async () => {
    const { actor, clock, finishStop } = fakeMachine({ maxDurationMs: 150 });
    await waitFor(actor, (s) => stateName(s) === 'running');
    actor.send({ type: 'exec', execId: 1 }); // a background server: it never ends by itself
    clock.increment(150);
    expect(stateName(actor.getSnapshot())).toBe('draining');
    clock.increment(499); // stopTimeoutMs 500
    expect(stateName(actor.getSnapshot())).toBe('draining');
    clock.increment(1);
    expect(stateName(actor.getSnapshot())).toBe('stopping');
    finishStop();
    expect((await waitFor(actor, (s) => s.status === 'done')).context.stopReason).toBe('max-duration');
  });

  it('lets a requested drain wait for its commands however long, until the max duration comes', async () => {
    const { actor, clock, finishStop } = fakeMachine({ maxDurationMs: 10_000 });
    await waitFor(actor, (s) => stateName(s) === 'running');
    actor.send({ type: 'exec', execId: 1 });
    actor.send({ type: 'drain' });
    clock.increment(9_999);
    expect(stateName(actor.getSnapshot())).toBe('draining');
    clock.increment(1); // the max duration: the grace of a stop budget starts now
    clock.increment(499);
    expect(stateName(actor.getSnapshot())).toBe('draining');
    clock.increment(1);
    expect(stateName(actor.getSnapshot())).toBe('stopping');
    finishStop();
    expect((await waitFor(actor, (s) => s.status === 'done')).context.stopReason).toBe('max-duration');
  });

  it('runs on with no max duration, however long', async () => {
    const { actor, clock } = fakeMachine();
    await waitFor(actor, (s) => stateName(s) === 'running');
    clock.increment(2 ** 31 - 1);
    expect(stateName(actor.getSnapshot())).toBe('running');
  });

  it('drains after the idle timeout, but never while an exec runs', async () => {
    const { actor, clock, finishStop } = fakeMachine({ idleTimeoutMs: 100 });
    await waitFor(actor, (s) => stateName(s) === 'running');
    actor.send({ type: 'exec', execId: 1 });
    // Three idle periods with the exec running: still running.
    clock.increment(350);
    expect(stateName(actor.getSnapshot())).toBe('running');
    actor.send({ type: 'exec.done', execId: 1 });
    // The end of the exec is activity: the idle period starts again from it.
    clock.increment(99);
    expect(stateName(actor.getSnapshot())).toBe('running');
    clock.increment(1);
    expect(stateName(actor.getSnapshot())).toBe('stopping');
    finishStop();
    expect((await waitFor(actor, (s) => s.status === 'done')).context.stopReason).toBe('idle-timeout');
  });

  it('restarts the idle period on every exec start', async () => {
    const { actor, clock } = fakeMachine({ idleTimeoutMs: 100 });
    await waitFor(actor, (s) => stateName(s) === 'running');
    clock.increment(90);
    actor.send({ type: 'exec', execId: 1 });
    actor.send({ type: 'exec.done', execId: 1 });
    clock.increment(90);
    expect(stateName(actor.getSnapshot())).toBe('running');
    clock.increment(10);
    expect(stateName(actor.getSnapshot())).toBe('stopping');
    expect(actor.getSnapshot().context.stopReason).toBe('idle-timeout');
  });

  it('takes the stop timeout from the stop command', async () => {
    const { actor, log, finishStop } = fakeMachine();
    await waitFor(actor, (s) => stateName(s) === 'running');
    actor.send({ type: 'stop', timeoutMs: 1234 });
    finishStop();
    await waitFor(actor, (s) => s.status === 'done');
    expect(log).toContain('stopVm:requested:1234');
  });

  it('pauses on the idle timeout with action pause, and an exec resumes it and restarts the timer', async () => {
    const { actor, clock, log } = fakeMachine({ idleTimeoutMs: 100, idleAction: 'pause' });
    await waitFor(actor, (s) => stateName(s) === 'running');
    clock.increment(99);
    expect(stateName(actor.getSnapshot())).toBe('running');
    clock.increment(1);
    expect(stateName(actor.getSnapshot())).toBe('paused');
    expect(actor.getSnapshot().context.pausedBy).toBe('idle');
    // Paused, not stopping: however long it waits.
    clock.increment(10_000);
    expect(stateName(actor.getSnapshot())).toBe('paused');
    assertCan(actor.getSnapshot(), { type: 'exec', execId: 1 });
    actor.send({ type: 'exec', execId: 1 });
    expect(stateName(actor.getSnapshot())).toBe('running');
    expect(actor.getSnapshot().context).toMatchObject({ inFlight: 1, resumedBy: 'call', pausedBy: undefined });
    // The VM is continued before the exec is started.
    expect(log).toEqual(['pause', 'resume', 'exec:1']);
    clock.increment(500);
    expect(stateName(actor.getSnapshot())).toBe('running');
    actor.send({ type: 'exec.done', execId: 1 });
    clock.increment(100);
    expect(stateName(actor.getSnapshot())).toBe('paused');
  });

  it('wakes a sandbox its idle limit paused, but not one paused on request', async () => {
    const { actor, clock } = fakeMachine({ idleTimeoutMs: 100, idleAction: 'pause' });
    await waitFor(actor, (s) => stateName(s) === 'running');
    clock.increment(100);
    actor.send({ type: 'wake' });
    expect(stateName(actor.getSnapshot())).toBe('running');
    // A call racing the idle pause finds it running: wake is harmless there.
    actor.send({ type: 'wake' });
    expect(stateName(actor.getSnapshot())).toBe('running');
    actor.send({ type: 'pause' });
    expect(actor.getSnapshot().context.pausedBy).toBe('request');
    expect(actor.getSnapshot().can({ type: 'wake' })).toBe(false);
    expect(() => assertCan(actor.getSnapshot(), { type: 'exec', execId: 2 })).toThrowError(/it is paused/);
    actor.send({ type: 'resume' });
    expect(actor.getSnapshot().context.resumedBy).toBe('request');
  });

  it('sets the max duration again from now, and starts one where there was none', async () => {
    const { actor, clock, finishStop } = fakeMachine({ maxDurationMs: 100 });
    await waitFor(actor, (s) => stateName(s) === 'running');
    clock.increment(80);
    actor.send({ type: 'maxDuration.set', ms: 100 });
    // 80 + 99 ms: past the first limit, within the new one.
    clock.increment(99);
    expect(stateName(actor.getSnapshot())).toBe('running');
    clock.increment(1);
    expect(stateName(actor.getSnapshot())).toBe('stopping');
    finishStop();
    expect((await waitFor(actor, (s) => s.status === 'done')).context.stopReason).toBe('max-duration');

    const other = fakeMachine();
    await waitFor(other.actor, (s) => stateName(s) === 'running');
    other.actor.send({ type: 'maxDuration.set', ms: 50 });
    other.clock.increment(49);
    expect(stateName(other.actor.getSnapshot())).toBe('running');
    other.clock.increment(1);
    expect(stateName(other.actor.getSnapshot())).toBe('stopping');
  });
});
