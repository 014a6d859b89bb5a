/**
 * Every event corral emits, as one discriminated union.
 *
 * Events are namespaced and past tense. Each carries the sandbox `name`, a per-sandbox
 * sequence number `seq` (1, 2, 3… for the life of one sandbox actor, no gaps) and a wall
 * clock timestamp `ts` (ms since the epoch). The worker that hosts a sandbox stamps them, so
 * the order seen by every subscriber is the order things happened in that sandbox.
 */

import type { SerializedError } from '../errors.ts';

/**
 * Why a sandbox stopped. `guest-poweroff`: the guest powered off or halted itself (`poweroff`,
 * `halt`, forced or not: with no power-off device its kernel cannot tell them apart);
 * `guest-reboot`: it reset itself (`reboot`; a sandbox does not boot again); `crashed`: its
 * VM died, its kernel panicked or its agent (PID 1) exited; `node-lost`: the cluster node that
 * ran it stopped answering (its heartbeat stopped: the node process, or its machine, is gone).
 */
export type StopReason =
  | 'requested'
  | 'killed'
  | 'crashed'
  | 'drained'
  | 'max-duration'
  | 'idle-timeout'
  | 'boot-failed'
  | 'guest-poweroff'
  | 'guest-reboot'
  | 'node-lost'
  /** The VM process grew past its cgroup's memory limit and the kernel killed it (src/vm/cgroups.ts). */
  | 'out-of-memory';

/** The lifecycle states of a sandbox (see machines/sandbox.machine.ts). */
export type SandboxStatus = 'creating' | 'running' | 'paused' | 'draining' | 'stopped';

/** How the VM's CPUs are run. */
export type Accel = 'kvm' | 'tcg';

interface Base {
  readonly name: string;
  readonly seq: number;
  readonly ts: number;
}

/**
 * Image pull progress (src/image/pull.ts), on the stream of the sandbox that pulls.
 * `image` is the canonical reference, `layer` a compressed blob digest; a pull served from
 * the cache emits only `image.pull.done` with `cached: true`.
 */
export type ImagePullEventBody =
  | {
      readonly type: 'image.pull.started';
      readonly image: string;
      /** The platform manifest digest being pulled. */
      readonly digest: string;
      readonly layers: number;
      /** Layers already in the cache (not downloaded). */
      readonly cachedLayers: number;
      /** Compressed bytes to download. */
      readonly bytesTotal: number;
    }
  | {
      readonly type: 'image.pull.progress';
      readonly image: string;
      readonly layer: string;
      /** `download` (bytesDone of bytesTotal compressed), `unpack` (building the layer image), `done`. */
      readonly phase: 'download' | 'unpack' | 'done';
      readonly bytesDone: number;
      readonly bytesTotal: number;
    }
  | {
      readonly type: 'image.pull.progress';
      readonly image: string;
      /**
       * `squash`: merging layers 2…n into one layer image (images of more than 3 layers, see
       * src/image/squash.ts), after their unpacks: emitted when it starts (`bytesDone` 0) and
       * when the squashed layer is stored (`bytesDone` = `bytesTotal`).
       */
      readonly phase: 'squash';
      /** The compressed blob digests of the merged layers, bottom first. */
      readonly layers: readonly string[];
      /** Compressed bytes of the merged layers. */
      readonly bytesDone: number;
      readonly bytesTotal: number;
    }
  | {
      readonly type: 'image.pull.done';
      readonly image: string;
      readonly digest: string;
      readonly layers: number;
      /** Compressed bytes downloaded. */
      readonly bytes: number;
      readonly durationMs: number;
      readonly cached: boolean;
    }
  | { readonly type: 'image.pull.failed'; readonly image: string; readonly error: SerializedError };

/** What happened to a path a file watch sees (`sb.fs().watch`). `overflow`: changes were lost. */
export type FsWatchChangeType = 'create' | 'write' | 'remove' | 'rename' | 'overflow';

/** One change a file watch saw in the guest. */
export interface FsWatchChange {
  readonly type: FsWatchChangeType;
  /** The absolute guest path (a rename's new path; an overflow's: the watched directory). */
  readonly path: string;
  /** `path` relative to the watched directory ("" for an overflow). */
  readonly name: string;
  /** A rename's old absolute path. */
  readonly from?: string;
  readonly isDir: boolean;
}

/**
 * Why a file watch ended: `stopped` (its `stop()`), `removed` (the watched directory was
 * removed, moved or unmounted), `failed` (the guest could not go on reading it),
 * `sandbox-stopped` (the sandbox stopped, or its guest connection ended), `sandbox-moved` (a
 * cluster drain with migrate moved the sandbox to another node: a watch does not follow it).
 */
export type FsWatchEndReason = 'stopped' | 'removed' | 'failed' | 'sandbox-stopped' | 'sandbox-moved';

/** Event bodies before the worker stamps `name`, `seq` and `ts`. */
export type SandboxEventBody =
  | ImagePullEventBody
  | { readonly type: 'sandbox.creating'; readonly image: string; readonly memoryMib: number; readonly cpus: number }
  | { readonly type: 'sandbox.vm.spawned'; readonly pid: number; readonly accel: Accel; readonly accelReason: string }
  | {
      readonly type: 'sandbox.started';
      readonly pid: number;
      readonly accel: Accel;
      /** ms from the create command to the agent's HELLO. */
      readonly bootMs: number;
      /** ms the guest kernel + agent took, as the agent measured it (CLOCK_BOOTTIME at HELLO). */
      readonly guestBootMs: number;
      readonly agentVersion: string;
      /** The guest kernel, "debian 6.1.0-57-amd64" or "custom 6.1.192" (src/runtime/kernel.ts). */
      readonly kernel: string;
    }
  | { readonly type: 'template.built'; readonly key: string; readonly buildMs: number }
  /** A spare VM of the template is ready (made after this sandbox's create took or wanted one). */
  | { readonly type: 'template.spare'; readonly key: string; readonly makeMs: number }
  | {
      readonly type: 'sandbox.restored';
      /** The template's key. */
      readonly template: string;
      /** ms from qemu spawn (or from taking a spare) to the agent answering with the sandbox's identity. */
      readonly restoreMs: number;
      /** It took a spare VM restored and warmed before (Supervisor option `spares`). */
      readonly spare: boolean;
    }
  /**
   * A freshly restored VM ran its warm-up exec of `true` (in the background after the
   * restore), so the guest's exec paths are translated before the sandbox's first exec
   * needs them (under TCG); `ms` from its start to its exit.
   */
  | { readonly type: 'sandbox.warmed'; readonly ms: number }
  | { readonly type: 'sandbox.snapshotted'; readonly snapshot: string; readonly ms: number; readonly bytes: number }
  /** A cluster moved it from node `from` to node `to` (a drain with `migrate`), in `ms`. */
  | { readonly type: 'sandbox.moved'; readonly from: string; readonly to: string; readonly ms: number }
  /** `idle`: its idle limit with action `pause` (a call that needs the guest resumes it). */
  | { readonly type: 'sandbox.paused'; readonly reason: 'requested' | 'idle' }
  /** `call`: a call that needed the guest resumed a sandbox its idle limit had paused. */
  | { readonly type: 'sandbox.resumed'; readonly reason: 'requested' | 'call' }
  | { readonly type: 'sandbox.draining'; readonly inFlight: number }
  | { readonly type: 'sandbox.stopping'; readonly reason: StopReason }
  | {
      readonly type: 'sandbox.stopped';
      readonly reason: StopReason;
      readonly exitCode: number | null;
      readonly signal: string | null;
      readonly error?: SerializedError;
    }
  | { readonly type: 'sandbox.failed'; readonly error: SerializedError }
  | {
      readonly type: 'sandbox.state';
      /** The leaf state of the lifecycle machine. */
      readonly state: string;
      readonly status: SandboxStatus;
      /** The machine's snapshot: its full state value and the parts of its context that matter. */
      readonly snapshot: { readonly value: unknown; readonly inFlight: number; readonly stopReason: StopReason | null };
    }
  | { readonly type: 'exec.started'; readonly execId: number; readonly argv: readonly string[]; readonly pid: number }
  | { readonly type: 'exec.stdout'; readonly execId: number; readonly data: Uint8Array }
  | { readonly type: 'exec.stderr'; readonly execId: number; readonly data: Uint8Array }
  | {
      readonly type: 'exec.exited';
      readonly execId: number;
      readonly code: number | null;
      readonly signal: number | null;
      readonly durationMs: number;
      /** The guest kernel's OOM killer killed a process of this exec. */
      readonly oomKilled?: boolean;
    }
  | { readonly type: 'exec.failed'; readonly execId: number; readonly error: SerializedError }
  /** Changes a file watch saw, in the order the guest reported them (one frame's worth). */
  | { readonly type: 'fs.watch'; readonly watchId: number; readonly changes: readonly FsWatchChange[] }
  | { readonly type: 'fs.watch.ended'; readonly watchId: number; readonly reason: FsWatchEndReason; readonly error?: SerializedError }
  /**
   * Not emitted by a sandbox: a replaying stream (`events({ since })`) says with it that its
   * buffer no longer reaches back to `since`. Events `since + 1 … seq` are lost; `seq` is the
   * last lost one, so the next event has `seq + 1`. Never stored.
   */
  | { readonly type: 'stream.gap'; readonly since: number; readonly missed: number };

/** A stamped event, as subscribers see it. */
export type SandboxEvent = SandboxEventBody & Base;

/** The `type` strings of all events. */
export type SandboxEventType = SandboxEvent['type'];

/** The event whose `type` is `T`. */
export type EventOf<T extends SandboxEventType> = Extract<SandboxEvent, { type: T }>;

/** True for events that concern one exec session. */
export function isExecEvent(e: SandboxEvent): e is Extract<SandboxEvent, { execId: number }> {
  return e.type.startsWith('exec.');
}
