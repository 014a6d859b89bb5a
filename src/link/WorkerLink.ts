/**
 * The link to a sandbox actor in a worker thread of this process (an attached sandbox).
 */

import './comlinkErrors.ts';
import { releaseProxy, type Remote } from 'comlink';
import type { Observable } from 'rxjs';
import type { SandboxWorkerApi } from '../actor/contract.ts';
import type { SandboxEvent } from '../bus/events.ts';
import type { SandboxConfig } from '../config.ts';
import { CorralError } from '../errors.ts';
import type { HostedActor } from '../pool/SandboxPool.ts';
import { holding } from '../runtime/hold.ts';
import type { SandboxApi, SandboxLink } from './SandboxLink.ts';
import { FORWARDED_CALLS } from './wire.ts';

/**
 * The link to a sandbox actor hosted by a worker thread of this process (attached): Comlink
 * over the actor's control port. The SDK's `Sandbox` wraps it. Internal: not exported from
 * the package entry.
 */
export class WorkerLink implements SandboxLink {
  readonly #remote: Remote<SandboxWorkerApi>;
  readonly #actor: HostedActor;
  /**
   * The actor's API. Each call holds the process until it settles (the worker is
   * unreferenced while idle), and rejects instead of staying pending for ever (Comlink would
   * leave it so) when the actor's worker dies under it (E_WORKER_CRASHED), or with E_CLOSED
   * once {@link terminate} (release, replace, `Supervisor.destroy()`) let go of the actor.
   */
  readonly api: SandboxApi;
  readonly detached = false;
  readonly events$: Observable<SandboxEvent>;
  /** The seq of the last event the actor posted (events the supervisor adds follow it). */
  lastSeq = 0;
  /** Why calls no longer reach the actor (its worker died, or it was released). */
  #ended: CorralError | undefined;
  readonly #pending = new Set<(err: CorralError) => void>();
  #terminated: Promise<void> | undefined;
  readonly #onRelease: (link: WorkerLink) => Promise<void>;

  constructor(
    readonly config: SandboxConfig,
    actor: HostedActor,
    remote: Remote<SandboxWorkerApi>,
    events$: Observable<SandboxEvent>,
    /** Lets go of the sandbox once it stopped (the supervisor's registry and the actor). */
    onRelease: (link: WorkerLink) => Promise<void>,
  ) {
    this.#onRelease = onRelease;
    this.#actor = actor;
    this.#remote = remote;
    this.events$ = events$;
    const api: Record<string, (...args: unknown[]) => Promise<unknown>> = {};
    for (const m of WORKER_METHODS) api[m] = (...args: unknown[]) => this.busy(() => this.#call(m, args));
    this.api = api as unknown as SandboxApi;
  }

  /** The worker thread hosting this sandbox. */
  get threadId(): number {
    return this.#actor.threadId;
  }

  #call(method: string, args: unknown[]): Promise<unknown> {
    if (this.#ended) return Promise.reject(this.#ended);
    const fn = (this.#remote as unknown as Record<string, (...a: unknown[]) => Promise<unknown>>)[method]!;
    return new Promise((resolve, reject) => {
      this.#pending.add(reject);
      fn(...args).then(resolve, reject).finally(() => this.#pending.delete(reject));
    });
  }

  /** Every call in flight, and every later one, rejects with `err` (the first reason stays). */
  #endCalls(err: CorralError): void {
    this.#ended ??= err;
    for (const reject of this.#pending) reject(this.#ended);
    this.#pending.clear();
  }

  /** @internal the worker hosting this actor died. */
  markLost(err: CorralError): void {
    this.#endCalls(err);
  }

  /**
   * Runs `fn` while keeping the worker referenced, so the process does not exit with a call
   * pending. An idle attached sandbox does not keep the process alive: when the process
   * ends, its VMs end with it. Every {@link api} call goes through here already.
   */
  busy<T>(fn: () => Promise<T>): Promise<T> {
    return this.#actor.hold(() => holding(fn));
  }

  release(): Promise<void> {
    return this.#onRelease(this);
  }

  /** An attached sandbox stays with its supervisor: dropping a handle changes nothing. */
  async detach(): Promise<void> {}

  /**
   * Lets go of the actor: its worker drops it (and kills its VM if one is left); in strict
   * isolation the worker thread ends. Calls still pending reject with E_CLOSED. Idempotent.
   */
  terminate(): Promise<void> {
    this.#terminated ??= (async () => {
      this.#endCalls(new CorralError('E_CLOSED', `sandbox "${this.config.name}" was released: its worker no longer hosts it`));
      this.#remote[releaseProxy]();
      await this.#actor.release();
    })();
    return this.#terminated;
  }

  /** @internal test-only: makes the worker hosting this sandbox throw; resolves once it exited. */
  crashWorkerForTest(): Promise<void> {
    return this.#actor.crashWorker();
  }
}

/** Every method of the worker's API (a missing one fails the typecheck). */
const WORKER_METHODS = ['start', 'silenceEvents', 'holdCalls', 'openCalls', 'closeCalls', ...FORWARDED_CALLS] as const satisfies readonly (keyof SandboxWorkerApi)[];
type MissingMethod = Exclude<keyof SandboxWorkerApi, (typeof WORKER_METHODS)[number]>;
const allMethods: [MissingMethod] extends [never] ? true : MissingMethod = true;
void allMethods;

