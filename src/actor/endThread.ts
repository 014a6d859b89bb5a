/**
 * How a sandbox worker thread ends when its pool asks it to (src/pool/SandboxPool.ts): by
 * itself, at a point where none of its JavaScript is inside LMDB. The pool terminates a
 * thread only when this misses its deadline: a thread terminated while it loads LMDB's addon
 * aborts the process (node's FATAL ERROR napi_throw), and one terminated while its store is
 * open breaks the store of every process sharing it (src/store/lmdbEnv.ts).
 */

import { logFailure } from '../runtime/log.ts';
import { closeSharedRoots } from '../store/lmdbEnv.ts';
import { closeThreadStores } from './SandboxActor.ts';

/** An actor as its worker hosts it: what ending the thread lets go of. */
export interface HostedEntry {
  readonly name: string;
  readonly actor: { dispose(): void };
  /** A cluster node's sandbox: the calls it answers on the worker's NATS connection. */
  readonly calls: { close(): Promise<void> } | undefined;
}

let ending: Promise<void> | undefined;

/** Whether {@link endThread} was called: the thread hosts no new actor. */
export function threadEnding(): boolean {
  return ending !== undefined;
}

/**
 * Lets go of actor `id` of `hosted`: its VM (if one is left) killed, its ports closed, its
 * calls ended (a cluster node ended them already before letting it go; this is for any other
 * end). Resolves once its calls are closed; never rejects (a failure is logged).
 */
export async function letGo(hosted: Map<number, HostedEntry>, id: number): Promise<void> {
  const h = hosted.get(id);
  if (!h) return;
  hosted.delete(id);
  const calls = h.calls?.close().catch(logFailure(`ending the calls of sandbox "${h.name}"`));
  h.actor.dispose();
  await calls;
}

/**
 * Disposes every actor of `hosted` (their VMs killed, their ports closed; the map is emptied),
 * commits what they recorded, closes every LMDB root of the thread, then exits the thread
 * (`process.exit(0)` in a worker ends only the worker). Idempotent.
 *
 * @example
 * parentPort.on('message', (m) => m.type === 'end' && void endThread(hosted));
 */
export function endThread(hosted: Map<number, HostedEntry>): Promise<void> {
  ending ??= (async () => {
    await Promise.all([...hosted.keys()].map((id) => letGo(hosted, id)));
    await closeThreadStores().catch(logFailure('committing the event records of an ending sandbox worker'));
    await closeSharedRoots(logFailure('closing the state store of an ending sandbox worker'));
    process.exit(0);
  })();
  return ending;
}
