/**
 * XState's inspection protocol across the worker boundary: a sandbox actor runs in a worker
 * thread, and its inspection events (`@xstate.actor`, `@xstate.event`, `@xstate.snapshot`,
 * `@xstate.microstep`, `@xstate.action`) come over its control port as data. Here they are
 * handed to the supervisor's `inspect` option in the shape `createActor({ inspect })` gives,
 * with stand-in actor refs that carry what inspection tools read: `sessionId`, `id`,
 * `_parent`, `getSnapshot()`, and for the sandbox machine `logic.config`, its definition. So
 * `@statelyai/inspect` (and any tool built for XState's `inspect`) can be attached.
 */

import type { InspectionEvent, Observer } from 'xstate';
import { sandboxMachine } from '../../machines/sandbox.machine.ts';
import type { WireInspectionEvent } from '../actor/contract.ts';
import { logFailure } from '../runtime/log.ts';

/** What `inspect` takes: a function, or an observer (as `@statelyai/inspect`'s `inspector.inspect`). */
export type InspectOption = ((event: InspectionEvent) => void) | Partial<Observer<InspectionEvent>>;

interface StandInRef {
  readonly sessionId: string;
  readonly id: string;
  readonly _parent?: StandInRef;
  readonly logic?: { readonly config: unknown };
  getSnapshot(): unknown;
}

/**
 * A relay for one supervisor: `(wire) => void` turns each event into an InspectionEvent and
 * hands it on. A throwing inspector is logged, never the sandbox's problem.
 */
export function inspectionRelay(inspect: InspectOption): (wire: WireInspectionEvent) => void {
  const next = typeof inspect === 'function' ? inspect : (e: InspectionEvent) => inspect.next?.(e);
  const refs = new Map<string, StandInRef & { snapshot: unknown }>();
  const refFor = (w: Pick<WireInspectionEvent, 'sessionId' | 'actorId' | 'parentId' | 'isMachine'>): StandInRef & { snapshot: unknown } => {
    let ref = refs.get(w.sessionId);
    if (!ref) {
      const parent = w.parentId ? refs.get(w.parentId) : undefined;
      const made: StandInRef & { snapshot: unknown } = {
        sessionId: w.sessionId,
        id: w.actorId,
        snapshot: undefined,
        ...(parent ? { _parent: parent } : {}),
        ...(w.isMachine ? { logic: { config: sandboxMachine.config } } : {}),
        getSnapshot: () => made.snapshot,
      };
      ref = made;
      refs.set(w.sessionId, made);
    }
    return ref;
  };
  return (w) => {
    const actorRef = refFor(w);
    if (w.snapshot !== undefined) actorRef.snapshot = w.snapshot;
    const base = { type: w.type, rootId: w.rootId, actorRef };
    const event = {
      ...base,
      ...(w.event !== undefined ? { event: w.event } : {}),
      ...(w.snapshot !== undefined ? { snapshot: w.snapshot } : {}),
      ...(w.action !== undefined ? { action: w.action } : {}),
      ...(w.type === '@xstate.event' ? { sourceRef: w.sourceId ? refs.get(w.sourceId) : undefined } : {}),
      ...(w.type === '@xstate.microstep' ? { _transitions: [] } : {}),
    } as unknown as InspectionEvent;
    try {
      next(event);
    } catch (err) {
      logFailure(`the inspect option (${w.type} of ${w.actorId})`)(err);
    }
    // A stopped actor's stand-in is let go of with its last snapshot.
    if (w.type === '@xstate.snapshot' && (w.snapshot as { status?: string } | undefined)?.status !== 'active') refs.delete(w.sessionId);
  };
}
