/**
 * Moving a sandbox's snapshot archive from one node to another, as NATS requests.
 *
 *   corral.node.<to>.receive.begin   { name, memoryMib, bytes }          → { id }   (room held)
 *   corral.node.<to>.receive.chunk   { id, offset, data }                → null     (written at offset)
 *   corral.node.<to>.receive.end     { id, config, createdAt }           → SandboxInfo (booted there)
 *   corral.node.<to>.receive.abort   { id }                              → null
 *
 * A chunk is written at its offset, so one asked again (src/cluster/replies.ts) writes the same
 * bytes; one chunk is in flight at a time, so the sender never buffers more than a chunk and
 * the receiver never more than its file. A receive that hears nothing for {@link IDLE_MS} is
 * dropped with its file and the room it held (a sender that died mid-way).
 */

import { open, rm, mkdir, type FileHandle } from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import { join } from 'node:path';
import { nuid } from '@nats-io/transport-node';
import type { Cluster } from '../cluster/Cluster.ts';
import { CorralError, InvalidOptionError } from '../errors.ts';
import { logFailure } from '../runtime/log.ts';

/** Bytes of archive per request: well under NATS's default 1 MiB payload once in base64 JSON. */
export const CHUNK_BYTES = 512 * 1024;
/** A receive with no request for this long is dropped. */
export const IDLE_MS = 60_000;
/** One chunk's request timeout (asked again within it by the cluster's resend). */
const CHUNK_TIMEOUT_MS = 60_000;

/** What the receiving node answers to `receive.begin`. */
export interface ReceiveBegun {
  readonly id: string;
}

/**
 * Sends archive `file` of sandbox `name` to node `to` and has it boot the sandbox there from
 * it. Resolves with what `receive.end` answered; on failure the receiver is told to drop it.
 */
export async function sendArchive<T>(cluster: Cluster, to: string, file: string, bytes: number, end: { name: string; memoryMib: number; config: unknown; createdAt: number }): Promise<T> {
  const { id } = await cluster.request<ReceiveBegun>(to, 'receive.begin', { name: end.name, memoryMib: end.memoryMib, bytes });
  try {
    let offset = 0;
    for await (const chunk of createReadStream(file, { highWaterMark: CHUNK_BYTES })) {
      const data = chunk as Buffer;
      await cluster.request(to, 'receive.chunk', { id, offset, data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) }, { timeoutMs: CHUNK_TIMEOUT_MS });
      offset += data.byteLength;
    }
    if (offset !== bytes) throw new CorralError('E_SNAPSHOT', `the archive of "${end.name}" changed while it was sent (${offset} bytes read, ${bytes} expected)`);
    return await cluster.request<T>(to, 'receive.end', { id, config: end.config, createdAt: end.createdAt }, { timeoutMs: 10 * 60_000 });
  } catch (err) {
    await cluster.request(to, 'receive.abort', { id }).catch(logFailure(`telling node "${to}" to drop the archive of "${end.name}"`));
    throw err;
  }
}

interface Incoming {
  readonly id: string;
  readonly name: string;
  readonly memoryMib: number;
  readonly bytes: number;
  readonly file: string;
  readonly fh: FileHandle;
  timer: NodeJS.Timeout;
}

/**
 * A node's side of a transfer: the archives coming in, each with the room it holds.
 *
 * @example
 * const rx = new Receiver(join(stateDir, 'incoming'), { hold, release });
 * const { id } = await rx.begin({ name, memoryMib, bytes });
 */
export class Receiver {
  readonly #dir: string;
  readonly #room: { hold(name: string, memoryMib: number): void; release(name: string): void };
  readonly #incoming = new Map<string, Incoming>();

  constructor(dir: string, room: { hold(name: string, memoryMib: number): void; release(name: string): void }) {
    this.#dir = dir;
    this.#room = room;
  }

  /** Holds the room (the caller checked it) and opens the file. */
  async begin(p: { name?: unknown; memoryMib?: unknown; bytes?: unknown }): Promise<ReceiveBegun> {
    if (typeof p?.name !== 'string') throw new InvalidOptionError('name', 'a sandbox name', p?.name);
    if (typeof p.memoryMib !== 'number' || !Number.isInteger(p.memoryMib) || p.memoryMib < 1) throw new InvalidOptionError('memoryMib', 'a positive integer of MiB', p.memoryMib);
    if (typeof p.bytes !== 'number' || !Number.isInteger(p.bytes) || p.bytes < 1) throw new InvalidOptionError('bytes', 'the archive size, a positive integer', p.bytes);
    await mkdir(this.#dir, { recursive: true, mode: 0o700 });
    const id = nuid.next().toLowerCase();
    const file = join(this.#dir, `${id}.corral`);
    this.#room.hold(p.name, p.memoryMib);
    try {
      const fh = await open(file, 'wx', 0o600);
      const inc: Incoming = { id, name: p.name, memoryMib: p.memoryMib, bytes: p.bytes, file, fh, timer: this.#idle(id) };
      this.#incoming.set(id, inc);
      return { id };
    } catch (err) {
      this.#room.release(p.name);
      throw err;
    }
  }

  async chunk(p: { id?: unknown; offset?: unknown; data?: unknown }): Promise<null> {
    const inc = this.#get(p?.id);
    if (!(p.data instanceof Uint8Array)) throw new InvalidOptionError('data', 'bytes', typeof p.data);
    if (typeof p.offset !== 'number' || !Number.isInteger(p.offset) || p.offset < 0 || p.offset + p.data.byteLength > inc.bytes) {
      throw new InvalidOptionError('offset', `an offset within the ${inc.bytes} bytes announced`, p.offset);
    }
    clearTimeout(inc.timer);
    inc.timer = this.#idle(inc.id);
    await inc.fh.write(p.data, 0, p.data.byteLength, p.offset);
    return null;
  }

  /**
   * The whole archive is here: `boot(file)` makes the sandbox of it (the room held is let go
   * just before, for the boot to take). The file goes either way.
   */
  async end<T>(p: { id?: unknown }, boot: (name: string, file: string) => Promise<T>): Promise<T> {
    const inc = this.#get(p?.id);
    this.#incoming.delete(inc.id);
    clearTimeout(inc.timer);
    try {
      await inc.fh.close();
      this.#room.release(inc.name);
      return await boot(inc.name, inc.file);
    } finally {
      await rm(inc.file, { force: true });
    }
  }

  async abort(p: { id?: unknown }): Promise<null> {
    const inc = typeof p?.id === 'string' ? this.#incoming.get(p.id) : undefined;
    if (inc) await this.#drop(inc);
    return null;
  }

  /** Drops every receive (the node is closing). */
  async close(): Promise<void> {
    await Promise.all([...this.#incoming.values()].map((inc) => this.#drop(inc)));
  }

  #get(id: unknown): Incoming {
    const inc = typeof id === 'string' ? this.#incoming.get(id) : undefined;
    if (!inc) throw new CorralError('E_SNAPSHOT', `no transfer ${String(id)} in progress here (it ended, or was idle for ${IDLE_MS} ms and dropped)`);
    return inc;
  }

  #idle(id: string): NodeJS.Timeout {
    const t = setTimeout(() => {
      const inc = this.#incoming.get(id);
      if (inc) void this.#drop(inc).catch(logFailure(`dropping the idle transfer of "${inc.name}"`));
    }, IDLE_MS);
    t.unref();
    return t;
  }

  async #drop(inc: Incoming): Promise<void> {
    this.#incoming.delete(inc.id);
    clearTimeout(inc.timer);
    this.#room.release(inc.name);
    await inc.fh.close().catch(logFailure(`closing the transfer file of "${inc.name}"`));
    await rm(inc.file, { force: true });
  }
}
