/**
 * Per-actor runtime variables (CORRAL_QEMU, CORRAL_ACCEL…).
 *
 * Many sandbox actors share one worker thread, so the variables a create was made with
 * cannot be copied into `process.env` (one actor's fake qemu would become every actor's).
 * Each actor runs its calls inside {@link withActorEnv}; code that reads one of these
 * variables asks {@link runtimeVar}, which sees the calling actor's values and falls back
 * to the process environment outside any actor (the supervisor thread, the CLI, tests).
 */

import { AsyncLocalStorage } from 'node:async_hooks';

/** Variables a sandbox actor reads, taken from the creating thread at create time. */
export const RUNTIME_VARS = [
  'CORRAL_QEMU',
  'CORRAL_FAKE_GUEST',
  'CORRAL_FAKE_FLOOD_MIB',
  'CORRAL_FAKE_PROTOCOL',
  'CORRAL_ACCEL',
  'CORRAL_KERNEL',
  'CORRAL_CACHE_DIR',
  'XDG_CACHE_HOME',
  'CORRAL_GUEST_RESOLV_CONF',
  'CORRAL_JAIL',
] as const;

/** One of {@link RUNTIME_VARS}. */
export type RuntimeVar = (typeof RUNTIME_VARS)[number];

/** An actor's values of the runtime variables (absent: unset). */
export type ActorEnv = Readonly<Partial<Record<RuntimeVar, string | undefined>>>;

const store = new AsyncLocalStorage<ActorEnv>();

/**
 * The runtime variables of the calling thread, to hand a new actor.
 *
 * @example
 * pool.host({ ...data, env: captureActorEnv() })
 */
export function captureActorEnv(): ActorEnv {
  return Object.fromEntries(RUNTIME_VARS.map((k) => [k, process.env[k]]));
}

/**
 * Runs `fn` (and every callback, timer and promise it starts) with `env` as the actor's
 * variables.
 *
 * @example
 * withActorEnv({ CORRAL_QEMU: '/x/fake-qemu' }, () => actor.start())
 */
export function withActorEnv<T>(env: ActorEnv, fn: () => T): T {
  return store.run(env, fn);
}

/**
 * A runtime variable as the calling actor sees it: its own value when run inside
 * {@link withActorEnv}, else the process's.
 *
 * @example
 * const qemu = runtimeVar('CORRAL_QEMU') || artifacts.qemu;
 */
export function runtimeVar(name: RuntimeVar): string | undefined {
  const env = store.getStore();
  return env ? env[name] : process.env[name];
}

/**
 * The environment of a child process an actor starts (qemu): the process's, with the
 * actor's runtime variables in place of the process's.
 */
export function childEnv(): NodeJS.ProcessEnv {
  const env = store.getStore();
  if (!env) return process.env;
  const out: NodeJS.ProcessEnv = { ...process.env };
  for (const k of RUNTIME_VARS) {
    const v = env[k];
    if (v === undefined) delete out[k];
    else out[k] = v;
  }
  return out;
}
