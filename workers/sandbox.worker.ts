/**
 * A worker thread that hosts sandbox actors (src/actor): as many as the pool hands it
 * (src/pool), or one in strict isolation. This file only wires ports to actors.
 */

import '../src/link/comlinkErrors.ts';
import { expose } from 'comlink';
import nodeEndpoint from 'comlink/dist/esm/node-adapter.mjs';
import { parentPort, workerData } from 'node:worker_threads';
import type { PoolMessage, SandboxWorkerData, WorkerLoaded } from '../src/actor/contract.ts';
import { SandboxActor, closeThreadStores } from '../src/actor/SandboxActor.ts';
import { EventPublisher } from '../src/cluster/EventPublisher.ts';
import { SandboxCalls } from '../src/cluster/SandboxCalls.ts';
import { withActorEnv } from '../src/runtime/actorEnv.ts';
import { logFailure, runtimeLog } from '../src/runtime/log.ts';
import { closeSharedRoots } from '../src/store/lmdbEnv.ts';

const hosted = new Map<number, { readonly name: string; readonly actor: SandboxActor; readonly calls: SandboxCalls | undefined }>();

/**
 * Hosts one more sandbox actor in this worker. Its calls run with its own runtime
 * variables (src/runtime/actorEnv.ts), never the worker's `process.env`: other actors of
 * this worker were created with theirs.
 */
function host(id: number, data: SandboxWorkerData): void {
  if (ending) {
    // The pool hands an ending worker nothing; should it, the caller sees its port close.
    runtimeLog.warn(`sandbox worker: asked to host "${data.config.name}" while it ends; refused`);
    (data.control as unknown as { close(): void }).close();
    return;
  }
  const env = data.env ?? {};
  // A cluster node's sandbox publishes its events from here, on this worker's connection,
  // and answers its plain calls on it.
  const events = data.events ? EventPublisher.for(data.events) : undefined;
  const call = (method: string, args: unknown[]): Promise<unknown> => (scoped as unknown as Record<string, (...a: unknown[]) => Promise<unknown>>)[method]!(...args);
  const calls: SandboxCalls | undefined = events && data.callSubject ? new SandboxCalls(events, data.callSubject, call) : undefined;
  const actor: SandboxActor = withActorEnv(env, () => new SandboxActor(data, events, calls));
  hosted.set(id, { name: data.config.name, actor, calls });
  const scoped = new Proxy(actor, {
    get(target, key) {
      const v = Reflect.get(target, key) as unknown;
      if (typeof v !== 'function') return v;
      return (...args: unknown[]) => withActorEnv(env, () => (v as (...a: unknown[]) => unknown).apply(target, args));
    },
  });
  expose(scoped, nodeEndpoint(data.control as never));
}

let ending: Promise<void> | undefined;

/**
 * Ends this thread by itself, at a point where no JavaScript is inside LMDB: its actors are
 * disposed (their VMs killed, their ports closed), what they recorded is committed, every
 * LMDB root of the thread closed, and only then does the thread exit. The pool terminates a
 * thread only when this misses its deadline: a thread terminated while it loads LMDB's addon
 * aborts the process (node's FATAL ERROR napi_throw), and one terminated while its store is
 * open breaks the store of every process sharing it (lmdbEnv.ts).
 */
function end(): Promise<void> {
  ending ??= (async () => {
    const calls: Promise<void>[] = [];
    for (const [id, h] of hosted) {
      hosted.delete(id);
      if (h.calls) calls.push(h.calls.close().catch(logFailure(`ending the calls of sandbox "${h.name}"`)));
      h.actor.dispose();
    }
    await Promise.all(calls);
    await closeThreadStores().catch(logFailure('committing the event records of an ending sandbox worker'));
    await closeSharedRoots(logFailure('closing the state store of an ending sandbox worker'));
    process.exit(0);
  })();
  return ending;
}

// A worker is either started for one sandbox (its data in workerData, as a detached host
// did) or started by the pool: modules loaded, hosting the actors the pool hands it.
const initial = workerData as Partial<SandboxWorkerData>;
if (initial.config) host(0, initial as SandboxWorkerData);
parentPort?.on('message', (msg: PoolMessage) => {
  switch (msg.type) {
    case 'host':
      host(msg.id, msg.data);
      break;
    case 'dispose': {
      const h = hosted.get(msg.id);
      hosted.delete(msg.id);
      // The node ended its calls already (before letting it go); this is for any other end.
      void h?.calls?.close().catch(logFailure(`ending the calls of sandbox "${h.name}"`));
      h?.actor.dispose();
      break;
    }
    case 'end':
      void end();
      break;
    case 'stall': {
      const until = performance.now() + msg.ms;
      while (performance.now() < until); // busy: no message is read meanwhile
      break;
    }
    case 'crash':
      setImmediate(() => {
        throw new Error(msg.message);
      });
      break;
  }
});

// Loaded: until now the pool kept this thread referenced, so that the process does not tear
// it down while LMDB's addon registers (src/pool/SandboxPool.ts).
parentPort?.postMessage({ type: 'loaded' } satisfies WorkerLoaded);
