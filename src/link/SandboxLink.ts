/**
 * How the SDK reaches one sandbox actor, wherever it lives: a worker thread of this process
 * (attached) or a host process of its own reached over its control socket (detached).
 */

import type { Observable } from 'rxjs';
import type { SandboxEvent } from '../bus/events.ts';
import type { SandboxConfig } from '../config.ts';
import type { SandboxWorkerApi } from '../actor/contract.ts';

/** Every worker API method, returning a promise. */
export type SandboxApi = {
  [K in keyof SandboxWorkerApi]: SandboxWorkerApi[K] extends (...args: infer A) => infer R ? (...args: A) => Promise<Awaited<R>> : never;
};

export interface SandboxLink {
  readonly config: SandboxConfig;
  readonly api: SandboxApi;
  /** The sandbox's events, from this link's start on. */
  readonly events$: Observable<SandboxEvent>;
  /** True when the sandbox lives in a host process of its own. */
  readonly detached: boolean;
  /** Runs `fn` keeping the process alive meanwhile (an idle link does not). */
  busy<T>(fn: () => Promise<T>): Promise<T>;
  /** Lets go of the sandbox once it stopped (attached: ends its worker). Idempotent. */
  release(): Promise<void>;
  /** Lets go of the sandbox without stopping it (closes a control connection). Idempotent. */
  detach(): Promise<void>;
}
