/**
 * `sandbox.fs()`: the guest's filesystem from the host, over the agent's FS frames (no shell,
 * no base64). Files move in chunks: a stream never holds a whole file in the host or the guest.
 */

import { createReadStream, createWriteStream } from 'node:fs';
import { lstat, mkdir, readdir, readlink, symlink } from 'node:fs/promises';
import { join, posix } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { FsCall, FsCallResult } from '../agent/fsCalls.ts';
import { checkGuestPath, type FsEntry, type FsStat } from '../agent/GuestFs.ts';
import { randomInt } from 'node:crypto';
import { CorralError } from '../errors.ts';
import { logFailure } from '../runtime/log.ts';
import { startWatch, validateWatchOptions, type FsWatch, type FsWatchLink, type FsWatchOptions } from './FsWatch.ts';

export type { FsEntry, FsEntryType, FsStat } from '../agent/GuestFs.ts';
export type { FsWatch, FsWatchEvent, FsWatchEventType, FsWatchEndReason, FsWatchOptions } from './FsWatch.ts';

/** Options of {@link SandboxFs.write} and {@link SandboxFs.createWriteStream}. */
export interface FsWriteOptions {
  /** chmod the file to this (0–0o7777). Default: a new file gets 0644, an existing one keeps its mode. */
  readonly mode?: number;
  /** Append instead of truncating. */
  readonly append?: boolean;
  /** Create missing parent directories. */
  readonly parents?: boolean;
  /** Aborting it stops the transfer (the file is closed, what was written stays) with E_ABORTED. */
  readonly signal?: AbortSignal;
}

/** Options of the calls that only move data. */
export interface FsTransferOptions {
  /** Aborting it stops the transfer with E_ABORTED; the guest file is closed. */
  readonly signal?: AbortSignal;
}

/** Rethrows an abort (Node's AbortError, or the signal's reason) as E_ABORTED. */
async function abortable<T>(signal: AbortSignal | undefined, what: string, fn: () => Promise<T>): Promise<T> {
  try {
    signal?.throwIfAborted();
    return await fn();
  } catch (err) {
    if (signal?.aborted) throw new CorralError('E_ABORTED', `${what} aborted`, { cause: signal.reason ?? err });
    throw err;
  }
}

/** Bytes per read call (the agent serves at most 512 KiB). */
const READ_CHUNK = 256 * 1024;
/** Bytes per write call into the worker (it splits them into frames). */
const WRITE_CALL = 1024 * 1024;
const encoder = new TextEncoder();

type Caller = (call: FsCall) => Promise<FsCallResult>;

/** What a watch needs of its sandbox: its link, and the handle's `{ signal, timeoutMs }` bound. */
export interface FsWatcher {
  link(): FsWatchLink;
  bound<T>(what: string, options: { signal?: AbortSignal; timeoutMs?: number }, fn: () => Promise<T>): Promise<T>;
}

/**
 * File access in one sandbox's guest, as root. Errors are CorralErrors `E_FS` whose
 * `details.errno` names the guest's errno (`ENOENT`, `EISDIR`, `EACCES`…) and `details.path`
 * the path.
 *
 * @example
 * const fs = sb.fs();
 * await fs.write('/work/data.bin', bytes, { parents: true });
 * for (const e of await fs.list('/work')) console.log(e.name, e.type, e.sizeBytes);
 * await pipeline(fs.createReadStream('/work/data.bin'), createWriteStream('copy.bin'));
 */
export class SandboxFs {
  constructor(
    readonly sandbox: string,
    readonly call: Caller,
    readonly watcher?: FsWatcher,
  ) {}

  /**
   * Watches a guest directory (inotify in the guest agent): resolves once the guest watches
   * it, with an {@link FsWatch} — an AsyncIterable and an `events$` Observable of `create`,
   * `write`, `remove`, `rename` (with `from`) and `overflow` events, ending on `stop()`, the
   * directory's removal or the sandbox's stop. A missing path rejects with E_FS
   * (`details.errno` ENOENT), a file with ENOTDIR, a 33rd watch of a sandbox with EMFILE.
   *
   * @example
   * const w = await sb.fs().watch('/work', { recursive: true });
   * for await (const e of w) if (e.type === 'write') console.log(e.path);
   */
  async watch(path: string, options: FsWatchOptions = {}): Promise<FsWatch> {
    const maxQueued = validateWatchOptions(options);
    checkGuestPath(path);
    if (!this.watcher) throw new CorralError('E_ILLEGAL_STATE', `cannot watch files of sandbox "${this.sandbox}": this handle has no event stream`);
    const watcher = this.watcher;
    options.signal?.throwIfAborted();
    const link = watcher.link();
    // Random ids, as for execs: several processes may watch one detached sandbox at once.
    const id = randomInt(1, 2 ** 31 - 1);
    const bound = { ...(options.signal ? { signal: options.signal } : {}), ...(options.timeoutMs !== undefined ? { timeoutMs: options.timeoutMs } : {}) };
    return startWatch(link, id, path, options.recursive ?? false, maxQueued, options.signal, (fn) => watcher.bound(`watch ${path} in sandbox "${this.sandbox}"`, bound, fn));
  }

  /** The whole file's bytes. */
  async read(path: string, options: FsTransferOptions = {}): Promise<Uint8Array> {
    return abortable(options.signal, `read ${path}`, async () => {
      const parts: Uint8Array[] = [];
      for await (const chunk of this.createReadStream(path, options)) parts.push(chunk as Uint8Array);
      return Buffer.concat(parts);
    });
  }

  /** The whole file as text. */
  async readText(path: string, options: FsTransferOptions & { encoding?: BufferEncoding } = {}): Promise<string> {
    return Buffer.from(await this.read(path, options)).toString(options.encoding ?? 'utf8');
  }

  /** Writes (or appends) bytes or UTF-8 text. */
  async write(path: string, data: string | Uint8Array, options: FsWriteOptions = {}): Promise<void> {
    const bytes = typeof data === 'string' ? encoder.encode(data) : data;
    if (!(bytes instanceof Uint8Array)) throw new CorralError('E_INVALID_OPTION', `invalid option data: a string or a Uint8Array (got ${typeof data})`, { details: { option: 'data' } });
    await abortable(options.signal, `write ${path}`, async () => {
      const handle = await this.#openWrite(path, options);
      try {
        await this.#writeAll(handle, bytes, options.signal);
      } catch (err) {
        await this.call({ op: 'close', handle }).catch(logFailure(`closing guest file handle ${handle} after a failed write`));
        throw err;
      }
      await this.call({ op: 'close', handle });
    });
  }

  /**
   * A Node Readable of the file's bytes, fetched chunk by chunk as it is read (also an
   * AsyncIterable of Buffers).
   */
  createReadStream(path: string, options: FsTransferOptions = {}): Readable {
    checkGuestPath(path);
    let handle: number | undefined;
    const caller = this.call;
    return new Readable({
      highWaterMark: READ_CHUNK,
      ...(options.signal ? { signal: options.signal } : {}),
      construct: (cb) => {
        this.call({ op: 'openRead', path }).then(
          (r) => {
            handle = (r as { handle: number }).handle;
            cb();
          },
          (err: Error) => cb(err),
        );
      },
      read(this: Readable) {
        void (async () => {
          try {
            const chunk = (await caller({ op: 'read', handle: handle!, maxBytes: READ_CHUNK })) as Uint8Array;
            this.push(chunk.length === 0 ? null : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length));
          } catch (err) {
            this.destroy(err as Error);
          }
        })();
      },
      destroy: (err, cb) => {
        const h = handle;
        handle = undefined;
        if (h === undefined) return cb(err);
        this.call({ op: 'close', handle: h }).then(
          () => cb(err),
          (e: Error) => cb(err ?? e),
        );
      },
    });
  }

  /** A Node Writable into the file; it is closed (and its errors reported) on `end()`. */
  createWriteStream(path: string, options: FsWriteOptions = {}): Writable {
    checkGuestPath(path);
    let handle: number | undefined;
    const closeHandle = async () => {
      const h = handle;
      handle = undefined;
      if (h !== undefined) await this.call({ op: 'close', handle: h });
    };
    return new Writable({
      highWaterMark: WRITE_CALL,
      ...(options.signal ? { signal: options.signal } : {}),
      construct: (cb) => {
        this.#openWrite(path, options).then(
          (h) => {
            handle = h;
            cb();
          },
          (err: Error) => cb(err),
        );
      },
      writev: (chunks, cb) => {
        this.#writeAll(handle!, Buffer.concat(chunks.map((c) => c.chunk as Buffer))).then(() => cb(), (err: Error) => cb(err));
      },
      final: (cb) => {
        closeHandle().then(() => cb(), (err: Error) => cb(err));
      },
      destroy: (err, cb) => {
        closeHandle().then(
          () => cb(err),
          (e: Error) => cb(err ?? e),
        );
      },
    });
  }

  /** The entries of a directory (without `.` and `..`), symlinks not followed. */
  async list(path: string): Promise<FsEntry[]> {
    return (await this.call({ op: 'list', path })) as FsEntry[];
  }

  /** A path's type, mode, size, mtime, owner (symlinks not followed). */
  async stat(path: string): Promise<FsStat> {
    return (await this.call({ op: 'stat', path })) as FsStat;
  }

  /** Whether something is at the path. */
  async exists(path: string): Promise<boolean> {
    try {
      await this.stat(path);
      return true;
    } catch (err) {
      if (err instanceof CorralError && err.code === 'E_FS' && err.details?.errno === 'ENOENT') return false;
      throw err;
    }
  }

  /** Creates a directory (`recursive`: and its parents; an existing one is then fine). Default mode 0755. */
  async mkdir(path: string, options: { recursive?: boolean; mode?: number } = {}): Promise<void> {
    await this.call({ op: 'mkdir', path, ...options });
  }

  /** Removes a file, a symlink or an empty directory (`recursive`: a whole tree). */
  async remove(path: string, options: { recursive?: boolean } = {}): Promise<void> {
    await this.call({ op: 'remove', path, ...options });
  }

  /** Moves a path within the guest (rename(2): one filesystem). */
  async rename(from: string, to: string): Promise<void> {
    await this.call({ op: 'rename', from, to });
  }

  /** Copies a host file or directory tree (files, dirs, symlinks; modes kept) to `guestPath`. */
  async copyIn(hostPath: string, guestPath: string, options: FsTransferOptions = {}): Promise<void> {
    checkGuestPath(guestPath, 'guestPath');
    await abortable(options.signal, `copyIn ${hostPath}`, () => this.#copyIn(hostPath, guestPath, options.signal));
  }

  async #copyIn(hostPath: string, guestPath: string, signal: AbortSignal | undefined): Promise<void> {
    signal?.throwIfAborted();
    const st = await lstat(hostPath);
    if (st.isDirectory()) {
      await this.mkdir(guestPath, { recursive: true, mode: st.mode & 0o7777 });
      for (const name of await readdir(hostPath)) await this.#copyIn(join(hostPath, name), posix.join(guestPath, name), signal);
    } else if (st.isFile()) {
      await pipeline(createReadStream(hostPath), this.createWriteStream(guestPath, { mode: st.mode & 0o7777 }), ...(signal ? [{ signal }] : []));
    } else if (st.isSymbolicLink()) {
      await this.call({ op: 'symlink', target: await readlink(hostPath), path: guestPath });
    } else {
      throw new CorralError('E_FS', `copyIn ${hostPath}: not a file, directory or symlink`, { details: { errno: 'EINVAL', path: hostPath, op: 'copyIn' } });
    }
  }

  /**
   * Copies a guest file or directory tree to `hostPath`. Inside a directory nothing on the
   * host is overwritten or followed (each entry is created new), so a hostile guest's
   * listing cannot steer writes outside `hostPath`.
   */
  async copyOut(guestPath: string, hostPath: string, options: FsTransferOptions = {}): Promise<void> {
    await abortable(options.signal, `copyOut ${guestPath}`, async () => this.#copyOut(guestPath, hostPath, await this.stat(guestPath), true, options.signal));
  }

  async #copyOut(guestPath: string, hostPath: string, st: FsStat, top: boolean, signal: AbortSignal | undefined): Promise<void> {
    signal?.throwIfAborted();
    if (st.type === 'directory') {
      await mkdir(hostPath, { recursive: top, mode: st.mode & 0o777 });
      for (const e of await this.list(guestPath)) await this.#copyOut(posix.join(guestPath, e.name), join(hostPath, e.name), e, false, signal);
    } else if (st.type === 'file') {
      await pipeline(this.createReadStream(guestPath), createWriteStream(hostPath, { flags: top ? 'w' : 'wx', mode: st.mode & 0o777 }), ...(signal ? [{ signal }] : []));
    } else if (st.type === 'symlink') {
      await symlink((await this.call({ op: 'readlink', path: guestPath })) as string, hostPath);
    }
    // Devices, sockets, FIFOs: nothing to copy.
  }

  async #openWrite(path: string, options: FsWriteOptions): Promise<number> {
    const r = await this.call({ op: 'openWrite', path, ...options });
    return (r as { handle: number }).handle;
  }

  async #writeAll(handle: number, bytes: Uint8Array, signal?: AbortSignal): Promise<void> {
    for (let off = 0; off < bytes.length; off += WRITE_CALL) {
      signal?.throwIfAborted();
      // A copy: a view would clone its whole buffer across the worker boundary.
      await this.call({ op: 'write', handle, data: bytes.slice(off, Math.min(bytes.length, off + WRITE_CALL)) });
    }
  }
}
