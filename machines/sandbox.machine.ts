/**
 * The lifecycle of one sandbox, as a state chart:
 *
 *   creating ──► running ⇄ paused
 *      │            │  └──► draining ──► stopping ──► stopped
 *      │            └────────────────────┘              ▲
 *      └── boot failure / kill / VM death ──────────────┘
 *   any live state ── the guest powers off or halts, resets, panics ──► ending ──► stopped
 *
 * This file holds no I/O. The worker `.provide()`s the real actors (boot, stop, kill the VM)
 * and actions (start an exec, pause, resume); tests provide fakes. Each state accepts only
 * the commands legal in it: callers ask `snapshot.can(command)` first and report an
 * E_ILLEGAL_STATE error naming the state otherwise (see {@link assertCan}).
 */

import { assign, cancel, fromPromise, raise, setup, type SnapshotFrom } from 'xstate';
import type { Accel, SandboxStatus, StopReason } from '../src/bus/events.ts';
import { CorralError, serializeError, type SerializedError } from '../src/errors.ts';

/** What the machine needs to know about the sandbox it runs. */
export interface SandboxInput {
  readonly name: string;
  /** How long a graceful stop may take before it escalates to kill. */
  readonly stopTimeoutMs: number;
  /** Host-enforced lifetime; on expiry the sandbox drains. Undefined: none. */
  readonly maxDurationMs?: number | undefined;
  /** Host-enforced idle limit: no exec running for this long drains the sandbox (or pauses it). */
  readonly idleTimeoutMs?: number | undefined;
  /** What the idle limit does: `stop` drains the sandbox (default), `pause` freezes it until a call needs it. */
  readonly idleAction?: IdleAction | undefined;
  /** Start by restoring the shape's template rather than booting cold. */
  readonly useTemplate?: boolean;
}

/** What the idle limit does to a sandbox. */
export type IdleAction = 'stop' | 'pause';

/** What booting produced. */
export interface VmBooted {
  readonly pid: number;
  readonly accel: Accel;
  readonly bootMs: number;
}

/** How the VM process ended. */
export interface VmEnded {
  readonly exitCode: number | null;
  readonly signal: string | null;
}

export interface SandboxContext {
  readonly name: string;
  stopTimeoutMs: number;
  /** The lifetime limit counted from the start of `live`, or from the last `maxDuration.set`. */
  maxDurationMs: number | undefined;
  readonly idleTimeoutMs: number | undefined;
  readonly idleAction: IdleAction;
  /** Why the sandbox is paused: a `pause` command, or its idle limit (then a call that needs the guest resumes it). */
  pausedBy: 'request' | 'idle' | undefined;
  /** What ended the last pause: a `resume` command, or a call that needed the guest. */
  resumedBy: 'request' | 'call' | undefined;
  readonly useTemplate: boolean;
  vm: VmBooted | undefined;
  inFlight: number;
  stopReason: StopReason | undefined;
  ended: VmEnded | undefined;
  error: SerializedError | undefined;
}

/** Commands from the API, and notices from the VM side. */
export type SandboxCommand =
  | { type: 'exec'; execId: number }
  | { type: 'exec.done'; execId: number }
  | { type: 'pause' }
  | { type: 'resume' }
  /** A call that needs the guest (exec, files, ping): resumes a sandbox its idle limit paused. */
  | { type: 'wake' }
  /** Ends the sandbox's life `ms` from now (the max-duration policy, set again while it runs). */
  | { type: 'maxDuration.set'; ms: number }
  /** The lifetime limit's own timer (raised by the machine, on its clock). */
  | { type: 'maxDuration.reached' }
  | { type: 'drain' }
  | { type: 'stop'; timeoutMs?: number }
  | { type: 'kill' }
  /** Save memory + upper disk under a name; the sandbox runs on afterwards. */
  | { type: 'snapshot'; snapshot: string }
  /** The VM process ended without being asked to. */
  | { type: 'vm.exited'; exitCode: number | null; signal: string | null; oomKilled?: boolean }
  /** The guest's kernel said it powered off (or halted), reset or panicked (src/vm/guestEnd.ts). */
  | { type: 'vm.guestEnded'; how: 'poweroff' | 'reboot' | 'panic' }
  /** The agent connection broke (protocol violation, I/O error). */
  | { type: 'vm.failed'; error: SerializedError };

/** A kernel panic (PID 1 exiting is one) is a crash; the rest are the guest's own choice. */
const GUEST_END_REASON = {
  poweroff: 'guest-poweroff',
  reboot: 'guest-reboot',
  panic: 'crashed',
} as const satisfies Record<string, StopReason>;

function notProvided(what: string): never {
  throw new Error(`sandbox machine: ${what} was not provided`);
}

export const sandboxMachine = setup({
  types: {
    input: {} as SandboxInput,
    context: {} as SandboxContext,
    events: {} as SandboxCommand,
  },
  actors: {
    bootVm: fromPromise<VmBooted, SandboxInput>(async () => notProvided('bootVm')),
    /** Restores the VM from its shape's template (building the template first if needed). */
    restoreVm: fromPromise<VmBooted, SandboxInput>(async () => notProvided('restoreVm')),
    /** Graceful stop with escalation; resolves with how the VM ended. */
    stopVm: fromPromise<VmEnded, { timeoutMs: number; reason: StopReason }>(async () => notProvided('stopVm')),
    killVm: fromPromise<VmEnded, void>(async () => notProvided('killVm')),
    /** Ends a VM whose guest has ended itself (QMP quit, then kill); resolves with how it ended. */
    endVm: fromPromise<VmEnded, void>(async () => notProvided('endVm')),
    /** Pauses, saves memory and upper disk, resumes. */
    snapshotVm: fromPromise<void, { snapshot: string }>(async () => notProvided('snapshotVm')),
  },
  actions: {
    execDone: assign({ inFlight: ({ context }) => Math.max(0, context.inFlight - 1) }),
    takeStopRequest: assign({
      stopReason: ({ context }) => (context.stopReason === 'max-duration' || context.stopReason === 'idle-timeout' ? context.stopReason : 'requested'),
      stopTimeoutMs: ({ context, event }) => (event.type === 'stop' && event.timeoutMs !== undefined ? event.timeoutMs : context.stopTimeoutMs),
    }),
    startExec: (_, _params: { execId: number }) => notProvided('startExec'),
    /** Notes why a restore fell back to a cold boot. */
    restoreFailed: () => notProvided('restoreFailed'),
    pauseVm: () => notProvided('pauseVm'),
    resumeVm: () => notProvided('resumeVm'),
    /** Fails every exec still in flight (the VM is gone). */
    abortExecs: (_, _params: { reason: string }) => notProvided('abortExecs'),
  },
  guards: {
    idle: ({ context }) => context.inFlight === 0,
    pausedOnIdle: ({ context }) => context.pausedBy === 'idle',
  },
  delays: {
    // A timer of the machine, in the host process: nothing in the guest can move it.
    maxDuration: ({ context }) => context.maxDurationMs ?? 2 ** 31 - 1,
    idleTimeout: ({ context }) => context.idleTimeoutMs ?? 2 ** 31 - 1,
    drainGrace: ({ context }) => context.stopTimeoutMs,
  },
}).createMachine({
  id: 'sandbox',
  context: ({ input }) => ({
    name: input.name,
    stopTimeoutMs: input.stopTimeoutMs,
    maxDurationMs: input.maxDurationMs,
    idleTimeoutMs: input.idleTimeoutMs,
    idleAction: input.idleAction ?? 'stop',
    pausedBy: undefined,
    resumedBy: undefined,
    useTemplate: input.useTemplate ?? false,
    vm: undefined,
    inFlight: 0,
    stopReason: undefined,
    ended: undefined,
    error: undefined,
  }),
  initial: 'creating',
  states: {
    /** Pull/prepare and boot: restored from a template when one fits, else a cold boot. */
    creating: {
      initial: 'choosing',
      states: {
        choosing: {
          always: [{ guard: ({ context }) => context.useTemplate, target: 'restoring' }, { target: 'booting' }],
        },
        restoring: {
          invoke: {
            src: 'restoreVm',
            input: ({ context }) => ({ name: context.name, stopTimeoutMs: context.stopTimeoutMs }),
            onDone: { target: '#sandbox.live', actions: assign({ vm: ({ event }) => event.output }) },
            onError: [
              // A missing image, setup or snapshot fails a cold boot just the same: stop here.
              {
                guard: ({ event }) => /^E_(IMAGE|REGISTRY|SETUP|INVALID_OPTION|SNAPSHOT)/.test((event.error as { code?: string })?.code ?? ''),
                target: '#sandbox.stopped',
                actions: assign({ stopReason: 'boot-failed', error: ({ event }) => serializeError(event.error) }),
              },
              // A template that cannot be built or restored is no reason to fail: boot cold.
              { target: 'booting', actions: 'restoreFailed' },
            ],
          },
        },
        booting: {
          invoke: {
            src: 'bootVm',
            input: ({ context }) => ({ name: context.name, stopTimeoutMs: context.stopTimeoutMs }),
            onDone: { target: '#sandbox.live', actions: assign({ vm: ({ event }) => event.output }) },
            onError: {
              target: '#sandbox.stopped',
              actions: assign({ stopReason: 'boot-failed', error: ({ event }) => serializeError(event.error) }),
            },
          },
        },
      },
      on: {
        // Leaving `creating` stops the boot actor, whose abort signal kills the half-booted VM.
        kill: { target: 'stopped', actions: assign({ stopReason: 'killed' }) },
      },
    },
    /**
     * The VM is up: running, paused or draining. The lifetime limit spans all three: a timer
     * of the machine (a delayed event on its clock, so the guest cannot move it), which
     * `maxDuration.set` cancels and starts again.
     */
    live: {
      initial: 'running',
      entry: raise({ type: 'maxDuration.reached' }, { id: 'maxDuration', delay: 'maxDuration' }),
      exit: cancel('maxDuration'),
      on: {
        stop: { target: 'stopping', actions: 'takeStopRequest' },
        'maxDuration.reached': {
          guard: ({ context }) => context.maxDurationMs !== undefined,
          target: '.draining',
          actions: assign({ stopReason: 'max-duration' }),
        },
        'maxDuration.set': {
          actions: [
            cancel('maxDuration'),
            assign({ maxDurationMs: ({ event }) => event.ms }),
            raise({ type: 'maxDuration.reached' }, { id: 'maxDuration', delay: 'maxDuration' }),
          ],
        },
      },
      states: {
        running: {
          after: {
            idleTimeout: [
              {
                guard: ({ context }) => context.idleTimeoutMs !== undefined && context.inFlight === 0 && context.idleAction === 'pause',
                target: 'paused',
                actions: assign({ pausedBy: 'idle' }),
              },
              {
                guard: ({ context }) => context.idleTimeoutMs !== undefined && context.inFlight === 0,
                target: 'draining',
                actions: assign({ stopReason: 'idle-timeout' }),
              },
            ],
          },
          on: {
            // Re-entering `running` restarts the idle timer: every exec start and end is activity.
            exec: {
              target: 'running',
              reenter: true,
              actions: [assign({ inFlight: ({ context }) => context.inFlight + 1 }), { type: 'startExec', params: ({ event }) => ({ execId: event.execId }) }],
            },
            'exec.done': { target: 'running', reenter: true, actions: 'execDone' },
            // Harmless where the guest already runs: a call may race the idle pause.
            wake: {},
            pause: { target: 'paused', actions: assign({ pausedBy: 'request' }) },
            drain: 'draining',
            snapshot: 'snapshotting',
          },
        },
        /** The VM is briefly frozen while its memory and disk are saved. */
        snapshotting: {
          invoke: {
            src: 'snapshotVm',
            input: ({ event }) => ({ snapshot: event.type === 'snapshot' ? event.snapshot : '' }),
            onDone: 'running',
            onError: 'running',
          },
        },
        paused: {
          entry: 'pauseVm',
          exit: 'resumeVm',
          on: {
            resume: { target: 'running', actions: assign({ pausedBy: undefined, resumedBy: 'request' }) },
            // Paused by its idle limit: whatever needs the guest resumes it (the exit action
            // continues the VM before the exec starts), and re-entering running restarts the timer.
            wake: { guard: 'pausedOnIdle', target: 'running', actions: assign({ pausedBy: undefined, resumedBy: 'call' }) },
            exec: {
              guard: 'pausedOnIdle',
              target: 'running',
              actions: [
                assign({ pausedBy: undefined, resumedBy: 'call', inFlight: ({ context }) => context.inFlight + 1 }),
                { type: 'startExec', params: ({ event }) => ({ execId: event.execId }) },
              ],
            },
          },
        },
        draining: {
          always: {
            guard: 'idle',
            target: '#sandbox.stopping',
            actions: assign({ stopReason: ({ context }) => context.stopReason ?? 'drained' }),
          },
          // The lifetime limit is a limit: running commands get the graceful stop budget to
          // end, then the sandbox stops under them (a background server would hold it for
          // ever). A drain that was asked for waits for them, as it says.
          after: {
            drainGrace: {
              guard: ({ context }) => context.stopReason === 'max-duration',
              target: '#sandbox.stopping',
            },
          },
          on: {
            // During a requested drain: entered again, so the grace starts now.
            'maxDuration.reached': {
              guard: ({ context }) => context.maxDurationMs !== undefined,
              target: 'draining',
              reenter: true,
              actions: assign({ stopReason: 'max-duration' }),
            },
          },
        },
      },
    },
    stopping: {
      invoke: {
        src: 'stopVm',
        input: ({ context }) => ({ timeoutMs: context.stopTimeoutMs, reason: context.stopReason ?? 'requested' }),
        onDone: { target: 'stopped', actions: assign({ ended: ({ event }) => event.output }) },
        onError: { target: 'stopped', actions: assign({ error: ({ event }) => serializeError(event.error) }) },
      },
      on: {
        // The VM ending is what stopVm waits for: not a crash here (the agent's own reset
        // prints "Restarting system" too).
        'vm.exited': {},
        'vm.failed': {},
        'vm.guestEnded': {},
      },
    },
    /** The guest ended itself: nothing to ask it any more, the host ends its VM. */
    ending: {
      invoke: {
        src: 'endVm',
        onDone: { target: 'stopped', actions: assign({ ended: ({ event }) => event.output }) },
        onError: { target: 'stopped', actions: assign({ error: ({ event }) => serializeError(event.error) }) },
      },
      on: { 'vm.exited': {}, 'vm.failed': {}, 'vm.guestEnded': {} },
    },
    killing: {
      invoke: {
        src: 'killVm',
        onDone: { target: 'stopped', actions: assign({ ended: ({ event }) => event.output }) },
        onError: { target: 'stopped', actions: assign({ error: ({ event }) => serializeError(event.error) }) },
      },
      on: { kill: {}, 'vm.exited': {}, 'vm.failed': {}, 'vm.guestEnded': {} },
    },
    stopped: {
      type: 'final',
      entry: { type: 'abortExecs', params: ({ context }) => ({ reason: `sandbox stopped (${context.stopReason ?? 'unknown'})` }) },
    },
  },
  on: {
    'exec.done': { actions: 'execDone' },
    // Legal in every state but creating (which handles it itself) and stopped (final).
    kill: { target: '.killing', actions: assign({ stopReason: 'killed' }) },
    'vm.exited': {
      target: '.stopped',
      actions: assign({
        stopReason: ({ event }) => (event.oomKilled ? 'out-of-memory' : event.exitCode === 0 && event.signal === null ? 'guest-poweroff' : 'crashed'),
        ended: ({ event }) => ({ exitCode: event.exitCode, signal: event.signal }),
      }),
    },
    'vm.guestEnded': {
      target: '.ending',
      actions: assign({ stopReason: ({ event }) => GUEST_END_REASON[event.how] }),
    },
    'vm.failed': {
      target: '.killing',
      actions: assign({ stopReason: 'crashed', error: ({ event }) => event.error }),
    },
  },
});

export type SandboxSnapshot = SnapshotFrom<typeof sandboxMachine>;

/**
 * The leaf state's name: `choosing`, `restoring`, `booting` (all three are creating),
 * `running`, `snapshotting` (running), `paused`, `draining`, `stopping`, `killing`, `stopped`.
 */
export function stateName(snapshot: SandboxSnapshot): string {
  const v = snapshot.value;
  return typeof v === 'string' ? v : String(Object.values(v)[0]);
}

/** The public status of a machine state. `stopping` reads as draining, `killing` as stopped. */
export function statusOf(snapshot: SandboxSnapshot): SandboxStatus {
  const v = stateName(snapshot);
  switch (v) {
    case 'choosing':
    case 'restoring':
    case 'booting':
      return 'creating';
    case 'snapshotting':
      return 'running';
    case 'running':
    case 'paused':
    case 'draining':
    case 'stopped':
      return v;
    case 'stopping':
      return 'draining';
    default:
      return 'stopped';
  }
}

/**
 * Throws E_ILLEGAL_STATE unless the machine accepts `command` in its current state.
 *
 * @example
 * assertCan(actor.getSnapshot(), { type: 'pause' }); actor.send({ type: 'pause' });
 */
export function assertCan(snapshot: SandboxSnapshot, command: SandboxCommand): void {
  if (snapshot.status === 'done' || !snapshot.can(command)) {
    const state = stateName(snapshot);
    throw new CorralError('E_ILLEGAL_STATE', `cannot ${command.type} sandbox "${snapshot.context.name}": it is ${state}`, {
      details: { state, command: command.type },
    });
  }
}
