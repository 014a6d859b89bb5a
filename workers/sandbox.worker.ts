/**
 * A worker thread that hosts sandbox actors (src/actor): as many as the pool hands it
 * (src/pool), or one in strict isolation. This file only wires ports to actors.
 */

import '../src/link/comlinkErrors.ts';
import { expose } from 'comlink';
import nodeEndpoint from 'comlink/dist/esm/node-adapter.mjs';
import { parentPort, workerData } from 'node:worker_threads';
import type { PoolMessage, SandboxWorkerData } from '../src/actor/contract.ts';
import { SandboxActor } from '../src/actor/SandboxActor.ts';
import { EventPublisher } from '../src/cluster/EventPublisher.ts';
import { withActorEnv } from '../src/runtime/actorEnv.ts';

const hosted = new Map<number, SandboxActor>();

/**
 * Hosts one more sandbox actor in this worker. Its calls run with its own runtime
 * variables (src/runtime/actorEnv.ts), never the worker's `process.env`: other actors of
 * this worker were created with theirs.
 */
function host(id: number, data: SandboxWorkerData): void {
  const env = data.env ?? {};
  // A cluster node's sandbox publishes its events from here, on this worker's connection.
  const actor = withActorEnv(env, () => new SandboxActor(data, data.events ? EventPublisher.for(data.events) : undefined));
  hosted.set(id, actor);
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
      hosted.get(msg.id)?.dispose();
      hosted.delete(msg.id);
      break;
    case 'crash':
      setImmediate(() => {
        throw new Error(msg.message);
      });
      break;
  }
});
