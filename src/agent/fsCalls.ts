/**
 * The SDK's file calls as they cross into the sandbox's worker (and, for a detached
 * sandbox, its control socket): plain data in, plain data out. Open files live here, in
 * the worker, under numeric handles the SDK holds.
 */

import { CorralError } from '../errors.ts';
import type { FsEntry, FsReader, FsStat, FsWriter, GuestFs, OpenWriteOptions } from './GuestFs.ts';

/** One file call, as `SandboxWorkerApi.fs` takes it. */
export type FsCall =
  | { readonly op: 'stat'; readonly path: string }
  | { readonly op: 'list'; readonly path: string }
  | { readonly op: 'mkdir'; readonly path: string; readonly recursive?: boolean; readonly mode?: number }
  | { readonly op: 'remove'; readonly path: string; readonly recursive?: boolean }
  | { readonly op: 'rename'; readonly from: string; readonly to: string }
  | { readonly op: 'symlink'; readonly target: string; readonly path: string }
  | { readonly op: 'readlink'; readonly path: string }
  | { readonly op: 'openRead'; readonly path: string }
  | ({ readonly op: 'openWrite'; readonly path: string } & OpenWriteOptions)
  | { readonly op: 'read'; readonly handle: number; readonly maxBytes?: number }
  | { readonly op: 'write'; readonly handle: number; readonly data: Uint8Array }
  | { readonly op: 'close'; readonly handle: number };

/** What each call resolves with. */
export type FsCallResult = FsStat | FsEntry[] | string | Uint8Array | { readonly handle: number; readonly stat: FsStat } | null;

/** Most files a sandbox's callers may hold open at once (the agent allows 64). */
const MAX_OPEN = 48;

/**
 * Serves {@link FsCall}s against the current VM's agent.
 *
 * @example
 * const calls = new FsCalls(() => new GuestFs(vm.agent));
 * const { handle } = (await calls.call({ op: 'openRead', path: '/etc/hostname' })) as { handle: number };
 */
export class FsCalls {
  readonly #open = new Map<number, FsReader | FsWriter>();
  #next = 1;

  constructor(readonly fs: () => GuestFs) {}

  async call(c: FsCall): Promise<FsCallResult> {
    const fs = this.fs();
    switch (c.op) {
      case 'stat':
        return fs.stat(c.path);
      case 'list':
        return fs.list(c.path);
      case 'mkdir':
        await fs.mkdir(c.path, { ...(c.recursive !== undefined ? { recursive: c.recursive } : {}), ...(c.mode !== undefined ? { mode: c.mode } : {}) });
        return null;
      case 'remove':
        await fs.remove(c.path, { recursive: c.recursive ?? false });
        return null;
      case 'rename':
        await fs.rename(c.from, c.to);
        return null;
      case 'symlink':
        await fs.symlink(c.target, c.path);
        return null;
      case 'readlink':
        return fs.readlink(c.path);
      case 'openRead':
      case 'openWrite': {
        if (this.#open.size >= MAX_OPEN) throw new CorralError('E_FS', `too many open files in the guest (max ${MAX_OPEN}): close some`, { details: { errno: 'EMFILE', path: c.path } });
        const { op: _op, path, ...opts } = c;
        const f = c.op === 'openRead' ? await fs.openRead(path) : await fs.openWrite(path, opts as OpenWriteOptions);
        const handle = this.#next++;
        this.#open.set(handle, f);
        return { handle, stat: f.stat };
      }
      case 'read': {
        const f = this.#handle(c.handle);
        if (!('read' in f)) throw new CorralError('E_INVALID_OPTION', `invalid option handle: file handle ${c.handle} is open for writing`, { details: { option: 'handle' } });
        return f.read(c.maxBytes);
      }
      case 'write': {
        const f = this.#handle(c.handle);
        if (!('write' in f)) throw new CorralError('E_INVALID_OPTION', `invalid option handle: file handle ${c.handle} is open for reading`, { details: { option: 'handle' } });
        await f.write(c.data);
        return null;
      }
      case 'close': {
        const f = this.#open.get(c.handle);
        this.#open.delete(c.handle);
        await f?.close();
        return null;
      }
      default:
        throw new CorralError('E_INVALID_OPTION', `invalid option op: one of stat, list, mkdir, remove, rename, symlink, readlink, openRead, openWrite, read, write, close (got ${JSON.stringify((c as { op: unknown }).op)})`, {
          details: { option: 'op' },
        });
    }
  }

  #handle(handle: number): FsReader | FsWriter {
    const f = this.#open.get(handle);
    if (!f) throw new CorralError('E_INVALID_OPTION', `invalid option handle: no open file ${handle} in this sandbox`, { details: { option: 'handle' } });
    return f;
  }
}
