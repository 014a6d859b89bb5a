/**
 * What must survive a process: one LMDB environment in the state dir.
 *
 * `sandboxes` holds one record per sandbox name: its config, its last known state, and the
 * process that owns it (pid + start time), so a newcomer can tell a live sandbox from one
 * whose owner died.
 */

import type { Database, Key, RootDatabase } from 'lmdb';
import { sharedRoot } from './lmdbEnv.ts';
import { secureStateDir } from './stateDir.ts';
import type { SandboxStatus, StopReason } from '../bus/events.ts';
import type { SandboxConfig } from '../config.ts';
import { CorralError } from '../errors.ts';
import { holding } from '../runtime/hold.ts';

/** A sandbox as the store remembers it. */
export interface SandboxRecord {
  readonly name: string;
  readonly config: SandboxConfig;
  readonly status: SandboxStatus;
  readonly state: string;
  /** The process hosting the sandbox's actor, and the qemu pid. */
  readonly ownerPid: number | null;
  readonly vmPid: number | null;
  readonly stopReason: StopReason | null;
  /** Detached sandboxes: the host process's control socket. */
  readonly controlSocket?: string | null;
  readonly createdAt: number;
  readonly updatedAt: number;
}

/**
 * @example
 * const store = Store.open('/var/lib/corral'); store.putSandbox(rec); await store.close();
 */
export class Store {
  readonly #root: RootDatabase;
  readonly #sandboxes: Database<SandboxRecord, string>;
  #closed = false;

  private constructor(root: RootDatabase) {
    this.#root = root;
    this.#sandboxes = root.openDB<SandboxRecord, string>({ name: 'sandboxes' });
  }

  /** Opens (creating if needed) the store under `stateDir`. */
  static open(stateDir: string): Store {
    secureStateDir(stateDir);
    try {
      const root = sharedRoot(stateDir);
      return new Store(root);
    } catch (err) {
      throw new CorralError('E_STORE', `cannot open the state store in ${stateDir}: ${(err as Error).message}`, { cause: err });
    }
  }

  getSandbox(name: string): SandboxRecord | undefined {
    this.#assertOpen();
    return this.#sandboxes.get(name);
  }

  /** Writes a record; resolves once it is durable. */
  async putSandbox(rec: SandboxRecord): Promise<void> {
    this.#assertOpen();
    await holding(() => this.#sandboxes.put(rec.name, rec));
  }

  /** Writes a record synchronously (for exit hooks and read-repair). */
  putSandboxSync(rec: SandboxRecord): void {
    this.#assertOpen();
    this.#sandboxes.putSync(rec.name, rec);
  }

  /** Updates some fields of an existing record (no-op if it is gone). */
  async patchSandbox(name: string, patch: Partial<Omit<SandboxRecord, 'name' | 'createdAt'>>, options: { keepStopped?: boolean } = {}): Promise<void> {
    this.#assertOpen();
    await holding(() =>
      this.#sandboxes.transaction(() => {
        const cur = this.#sandboxes.get(name);
        if (!cur || (options.keepStopped && cur.status === 'stopped')) return;
        this.#sandboxes.putSync(name, { ...cur, ...patch, updatedAt: Date.now() });
      }),
    );
  }

  async removeSandbox(name: string): Promise<void> {
    this.#assertOpen();
    await holding(() => this.#sandboxes.remove(name));
  }

  /**
   * A named sub-database of the same LMDB environment, for the components that keep their own
   * data next to the records (the replay buffer, exec logs). Keys may be arrays (`[name, n]`).
   */
  database<V, K extends Key = Key>(name: string): Database<V, K> {
    this.#assertOpen();
    return this.#root.openDB<V, K>({ name });
  }

  /** Whether {@link close} was called. */
  get closed(): boolean {
    return this.#closed;
  }

  listSandboxes(): SandboxRecord[] {
    this.#assertOpen();
    return [...this.#sandboxes.getRange()].map((e) => e.value);
  }

  /** Flushes and closes. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    // The environment is shared with the thread's other users of the state dir (image and
    // template indexes): flush, and leave it open for them.
    await this.#root.flushed;
  }

  #assertOpen(): void {
    if (this.#closed) throw new CorralError('E_CLOSED', 'the store is closed');
  }
}
