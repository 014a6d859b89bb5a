/**
 * File access in the guest over the agent's FS frames (native/agent/PROTOCOL.md, "File
 * access"): one-shot ops, and file handles read or written in chunks the host asks for, so
 * a large file never sits whole in the host or the guest.
 *
 * The guest is hostile: every reply is checked here (kinds, modes, sizes, names, lengths
 * against what was asked) and a bad one throws E_PROTOCOL inside the frame's handling,
 * which fails the connection (and so only this sandbox).
 */

import { CorralError } from '../errors.ts';
import type { AgentClient, FsChannel } from './AgentClient.ts';
import { PayloadWriter, type PayloadReader } from './frame.ts';

/** Largest READ the agent serves (its FS_READ_MAX). */
export const FS_READ_MAX = 512 * 1024;
/** Bytes per WRITE frame (well under the 1 MiB frame limit). */
export const FS_WRITE_CHUNK = 256 * 1024;
const PATH_MAX = 4096;

const Op = { STAT: 1, LIST: 2, MKDIR: 3, REMOVE: 4, RENAME: 5, OPEN_READ: 6, READ: 7, OPEN_WRITE: 8, WRITE: 9, CLOSE: 10, SYMLINK: 11, READLINK: 12 } as const;
const OpenWrite = { APPEND: 1, MODE: 2, PARENTS: 4 } as const;
const KINDS = { 1: 'file', 2: 'directory', 3: 'symlink', 4: 'other' } as const;

/** What kind of entry a path is. */
export type FsEntryType = (typeof KINDS)[keyof typeof KINDS];

/** `stat` of a guest path (symlinks are not followed). */
export interface FsStat {
  readonly type: FsEntryType;
  /** Permission bits (0o7777). */
  readonly mode: number;
  readonly sizeBytes: number;
  /** Modification time, ms since the epoch. */
  readonly mtimeMs: number;
  readonly uid: number;
  readonly gid: number;
}

/** One entry of a directory listing. */
export interface FsEntry extends FsStat {
  readonly name: string;
}

/** An open guest file being read. */
export interface FsReader {
  readonly stat: FsStat;
  /** The next bytes, at most `maxBytes` (≤ 512 KiB); empty at the end of the file. */
  read(maxBytes?: number): Promise<Uint8Array>;
  close(): Promise<void>;
}

/** An open guest file being written. */
export interface FsWriter {
  /** The file right after it was opened. */
  readonly stat: FsStat;
  /** Appends bytes (split into frames of FS_WRITE_CHUNK); resolves once the guest wrote them. */
  write(data: Uint8Array): Promise<void>;
  close(): Promise<void>;
}

/** Options of {@link GuestFs.openWrite}. */
export interface OpenWriteOptions {
  /** chmod the file to this (0–0o7777); default: a new file gets 0644, an existing one keeps its mode. */
  readonly mode?: number;
  readonly append?: boolean;
  /** Create missing parent directories (0755). */
  readonly parents?: boolean;
}

function protocol(message: string): CorralError<'E_PROTOCOL'> {
  return new CorralError('E_PROTOCOL', message);
}

function readStat(r: PayloadReader): FsStat {
  const kind = r.u32();
  const type = KINDS[kind as keyof typeof KINDS];
  if (!type) throw protocol(`guest sent a stat record of unknown kind ${kind}`);
  const mode = r.u32();
  if (mode > 0o7777) throw protocol(`guest sent a stat record with mode 0o${mode.toString(8)}`);
  const sizeBytes = r.u64();
  const mtimeMs = r.i64();
  const uid = r.u32();
  const gid = r.u32();
  return { type, mode, sizeBytes, mtimeMs, uid, gid };
}

function nothing(): void {}

/** Checks a guest path argument: absolute, no NUL, ≤ 4096 bytes. */
export function checkGuestPath(path: unknown, option = 'path'): string {
  if (typeof path !== 'string' || !path.startsWith('/') || path.includes('\0') || Buffer.byteLength(path) > PATH_MAX) {
    throw new CorralError('E_INVALID_OPTION', `invalid option ${option}: an absolute guest path without NUL, at most ${PATH_MAX} bytes (got ${JSON.stringify(path)})`, {
      details: { option },
    });
  }
  return path;
}

function checkMode(mode: number): number {
  if (!Number.isInteger(mode) || mode < 0 || mode > 0o7777) {
    throw new CorralError('E_INVALID_OPTION', `invalid option mode: an integer from 0 to 0o7777 (got ${mode})`, { details: { option: 'mode' } });
  }
  return mode;
}

/**
 * The guest's filesystem, as the agent (root) sees it.
 *
 * @example
 * const fs = new GuestFs(agent);
 * const w = await fs.openWrite('/tmp/x', { mode: 0o600 });
 * await w.write(bytes); await w.close();
 */
export class GuestFs {
  constructor(readonly agent: AgentClient) {}

  async stat(path: string): Promise<FsStat> {
    checkGuestPath(path);
    return this.#oneShot('stat', path, new PayloadWriter().u32(Op.STAT).str(path), readStat);
  }

  /** Every entry of a directory (in pages of under 1 MiB), without `.` and `..`. */
  async list(path: string): Promise<FsEntry[]> {
    checkGuestPath(path);
    const out: FsEntry[] = [];
    const seen = new Set<string>();
    let start = 0;
    for (;;) {
      const page = await this.#oneShot('list', path, new PayloadWriter().u32(Op.LIST).str(path).u32(start), (r) => {
        const more = r.u32();
        const count = r.u32();
        if (more > 1) throw protocol(`guest sent a LIST reply with more=${more}`);
        if (count > r.remaining / 36) throw protocol(`guest sent a LIST reply of ${count} entries in ${r.remaining} bytes`);
        const entries: FsEntry[] = [];
        const page = new Set<string>();
        for (let i = 0; i < count; i++) {
          const name = r.str(255);
          if (name === '' || name === '.' || name === '..' || name.includes('/') || name.includes('\0')) throw protocol(`guest sent a LIST entry named ${JSON.stringify(name)}`);
          if (page.has(name)) throw protocol(`guest listed ${JSON.stringify(name)} twice in one page of ${path}`);
          page.add(name);
          entries.push({ name, ...readStat(r) });
        }
        if (more && count === 0) throw protocol('guest sent an empty LIST page that says more follow');
        return { more: more === 1, entries };
      });
      // Across pages a name can repeat when the directory changed in between: keep the first.
      for (const e of page.entries) if (!seen.has(e.name)) (seen.add(e.name), out.push(e));
      if (!page.more) return out;
      start += page.entries.length;
    }
  }

  async mkdir(path: string, options: { recursive?: boolean; mode?: number } = {}): Promise<void> {
    checkGuestPath(path);
    const w = new PayloadWriter().u32(Op.MKDIR).str(path).u32(checkMode(options.mode ?? 0o755)).u32(options.recursive ? 1 : 0);
    return this.#oneShot('mkdir', path, w, nothing);
  }

  async remove(path: string, options: { recursive?: boolean } = {}): Promise<void> {
    checkGuestPath(path);
    return this.#oneShot('remove', path, new PayloadWriter().u32(Op.REMOVE).str(path).u32(options.recursive ? 1 : 0), nothing);
  }

  async rename(from: string, to: string): Promise<void> {
    checkGuestPath(from, 'from');
    checkGuestPath(to, 'to');
    return this.#oneShot('rename', from, new PayloadWriter().u32(Op.RENAME).str(from).str(to), nothing);
  }

  async symlink(target: string, path: string): Promise<void> {
    checkGuestPath(path);
    if (typeof target !== 'string' || target === '' || target.includes('\0')) throw new CorralError('E_INVALID_OPTION', 'invalid option target: a non-empty string without NUL', { details: { option: 'target' } });
    return this.#oneShot('symlink', path, new PayloadWriter().u32(Op.SYMLINK).str(target).str(path), nothing);
  }

  async readlink(path: string): Promise<string> {
    checkGuestPath(path);
    return this.#oneShot('readlink', path, new PayloadWriter().u32(Op.READLINK).str(path), (r) => Buffer.from(r.bytes(PATH_MAX)).toString('utf8'));
  }

  async openRead(path: string): Promise<FsReader> {
    checkGuestPath(path);
    const ch = this.agent.fsChannel();
    const stat = await this.#wrap('open', path, ch.request(new PayloadWriter().u32(Op.OPEN_READ).str(path).finish(), readStat));
    if (stat.type !== 'file') throw protocol(`guest opened ${path} for reading as a ${stat.type}`);
    let closed = false;
    return {
      stat,
      read: (maxBytes = 256 * 1024) => {
        if (!Number.isInteger(maxBytes) || maxBytes < 1 || maxBytes > FS_READ_MAX) throw new RangeError(`maxBytes must be an integer from 1 to ${FS_READ_MAX} (got ${maxBytes})`);
        return this.#wrap('read', path, ch.request(new PayloadWriter().u32(Op.READ).u32(maxBytes).finish(), (r) => r.bytes(maxBytes)));
      },
      close: async () => {
        if (closed) return;
        closed = true;
        await this.#wrap('close', path, ch.request(new PayloadWriter().u32(Op.CLOSE).finish(), nothing, { last: true })).catch((err: unknown) => {
          // A handle an earlier failure already closed: nothing left to close.
          if (!(err instanceof CorralError && err.code === 'E_CLOSED')) throw err;
        });
      },
    };
  }

  async openWrite(path: string, options: OpenWriteOptions = {}): Promise<FsWriter> {
    checkGuestPath(path);
    const flags = (options.append ? OpenWrite.APPEND : 0) | (options.mode !== undefined ? OpenWrite.MODE : 0) | (options.parents ? OpenWrite.PARENTS : 0);
    const ch = this.agent.fsChannel();
    const stat = await this.#wrap('open', path, ch.request(new PayloadWriter().u32(Op.OPEN_WRITE).str(path).u32(options.mode === undefined ? 0 : checkMode(options.mode)).u32(flags).finish(), readStat));
    if (stat.type !== 'file') throw protocol(`guest opened ${path} for writing as a ${stat.type}`);
    let closed = false;
    return {
      stat,
      write: async (data) => {
        // All chunks go out at once (the agent answers in order); at most 4 MiB per call
        // keeps the guest's input queue bounded.
        if (data.length > 4 * 1024 * 1024) throw new RangeError(`write at most 4 MiB per call (got ${data.length} bytes)`);
        const sent: Promise<void>[] = [];
        for (let off = 0; off < data.length; off += FS_WRITE_CHUNK) {
          const chunk = data.subarray(off, Math.min(data.length, off + FS_WRITE_CHUNK));
          sent.push(this.#wrap('write', path, ch.request(new PayloadWriter().u32(Op.WRITE).bytes(chunk).finish(), nothing)));
        }
        await Promise.all(sent);
      },
      close: async () => {
        if (closed) return;
        closed = true;
        await this.#wrap('close', path, ch.request(new PayloadWriter().u32(Op.CLOSE).finish(), nothing, { last: true })).catch((err: unknown) => {
          // A failed write already closed the file in the guest (and reported why).
          if (!(err instanceof CorralError && err.code === 'E_CLOSED')) throw err;
        });
      },
    };
  }

  #oneShot<T>(op: string, path: string, w: PayloadWriter, decode: (r: PayloadReader) => T): Promise<T> {
    const ch: FsChannel = this.agent.fsChannel();
    return this.#wrap(op, path, ch.request(w.finish(), decode, { last: true }));
  }

  /** Names the op and path in an E_FS error. */
  async #wrap<T>(op: string, path: string, p: Promise<T>): Promise<T> {
    try {
      return await p;
    } catch (err) {
      if (err instanceof CorralError && err.code === 'E_FS') {
        const errno = String(err.details?.errno ?? '');
        throw new CorralError('E_FS', `${op} ${path} in the guest failed: ${errno} (${err.message})`, { cause: err, details: { ...err.details, op, path } });
      }
      throw err;
    }
  }
}
