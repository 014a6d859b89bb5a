/**
 * A worker thread that hosts sandbox actors (src/actor): as many as the pool hands it
 * (src/pool), or one in strict isolation. This file only wires ports to actors.
 */

import '../src/link/comlinkErrors.ts';
import { expose } from 'comlink';
import nodeEndpoint from 'comlink/dist/esm/node-adapter.mjs';
import { parentPort, workerData } from 'node:worker_threads';
import type { PoolMessage, SandboxWorkerData, WorkerLoaded } from '../src/actor/contract.ts';
import { SandboxActor } from '../src/actor/SandboxActor.ts';
import { endThread, letGo, threadEnding, type HostedEntry } from '../src/actor/endThread.ts';
import { EventPublisher } from '../src/cluster/EventPublisher.ts';
import { SandboxCalls } from '../src/cluster/SandboxCalls.ts';
import { withActorEnv } from '../src/runtime/actorEnv.ts';
import { runtimeLog } from '../src/runtime/log.ts';

const hosted = new Map<number, HostedEntry>();

/**
 * Hosts one more sandbox actor in this worker. Its calls run with its own runtime
 * variables (src/runtime/actorEnv.ts), never the worker's `process.env`: other actors of
 * this worker were created with theirs.
 */
function host(id: number, data: SandboxWorkerData): void {
  if (threadEnding()) {
    runtimeLog.warn(`sandbox worker: asked to host "${data.config.name}" while it ends; refused (its port closes)`);
    return (data.control as unknown as { close(): void }).close();
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

// A worker is either started for one sandbox (its data in workerData, as a detached host
// did) or started by the pool: modules loaded, hosting the actors the pool hands it.
const initial = workerData as Partial<SandboxWorkerData>;
if (initial.config) host(0, initial as SandboxWorkerData);
parentPort?.on('message', (msg: PoolMessage) => {
  switch (msg.type) {
    case 'host':
      host(msg.id, msg.data);
      break;
    case 'dispose':
      void letGo(hosted, msg.id);
      break;
    case 'end': // by itself, never terminated mid-LMDB (src/actor/endThread.ts)
      void endThread(hosted);
      break;
    case 'stall': // busy: no message is read meanwhile
      for (const until = performance.now() + msg.ms; performance.now() < until; );
      break;
    case 'crash':
      setImmediate(() => {
        throw new Error(msg.message);
      });
      break;
  }
});

// Loaded: until now the pool held the process for this thread (src/pool/SandboxPool.ts).
parentPort?.postMessage({ type: 'loaded' } satisfies WorkerLoaded);
