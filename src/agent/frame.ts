/**
 * The wire format between the host and the guest agent (native/agent/PROTOCOL.md).
 *
 * A frame is a 12-byte header (u32 length, u32 session, u16 type, u16 flags; little-endian)
 * and a payload of at most {@link MAX_PAYLOAD} bytes. The guest is hostile: the decoder
 * bounds every length before allocating and rejects what it does not know.
 */

import { CorralError } from '../errors.ts';

export const HEADER_SIZE = 12;
/** Largest payload either side may send (1 MiB). */
export const MAX_PAYLOAD = 1024 * 1024;
export const PROTOCOL_VERSION = 6;
/** The oldest agent protocol the host still speaks (version 1 has no SETUP frame). */
export const MIN_PROTOCOL_VERSION = 1;

export const FrameType = {
  HELLO: 1,
  EXEC: 2,
  STDIN: 3,
  STDOUT: 4,
  STDERR: 5,
  STARTED: 6,
  EXIT: 7,
  SIGNAL: 8,
  ERROR: 9,
  SHUTDOWN: 10,
  PING: 11,
  PONG: 12,
  CONFIGURE: 13,
  CONFIGURED: 14,
  SETUP: 15,
  SETUP_DONE: 16,
  /** Protocol 3: file access (src/agent/GuestFs.ts). */
  FS: 17,
  FS_REPLY: 18,
  /** Protocol 3: a tty exec's window size. */
  RESIZE: 19,
  /** Protocol 4: stdin bytes of a CREDIT exec that left the agent's buffer (flow control). */
  STDIN_ACK: 20,
  /** Protocol 5: output bytes of an OUT_CREDIT exec the host's consumer took (flow control). */
  OUTPUT_ACK: 21,
  /** Protocol 5: a diagnostic for the benchmarks' floors (spawn timing, raw port throughput). */
  PROBE: 22,
  PROBE_REPLY: 23,
  /** Protocol 6: file watches (inotify in the agent). */
  WATCH: 24,
  WATCH_STOP: 25,
  WATCH_EVENTS: 26,
  WATCH_END: 27,
} as const;
export type FrameTypeName = keyof typeof FrameType;
export type FrameTypeCode = (typeof FrameType)[FrameTypeName];

/** Frame types the guest may send to the host. */
export const GUEST_TYPES: ReadonlySet<number> = new Set([
  FrameType.HELLO,
  FrameType.STDOUT,
  FrameType.STDERR,
  FrameType.STARTED,
  FrameType.EXIT,
  FrameType.ERROR,
  FrameType.PONG,
  FrameType.CONFIGURED,
  FrameType.SETUP_DONE,
  FrameType.FS_REPLY,
  FrameType.STDIN_ACK,
  FrameType.PROBE_REPLY,
  FrameType.WATCH_EVENTS,
  FrameType.WATCH_END,
]);

export const ExecFlags = { STDIN: 1, MERGE_STDERR: 2, TTY: 4, USER: 8, CREDIT: 16, OUT_CREDIT: 32 } as const;

/**
 * Most output bytes (STDOUT + STDERR payload) of one OUT_CREDIT exec (protocol 5) the agent
 * sends before the host acknowledges them with OUTPUT_ACK: a consumer that does not read
 * holds the guest's writer back at this many bytes.
 */
export const OUTPUT_WINDOW = 2 * 1024 * 1024;
/**
 * What the agent may send past the window: a session the host finishes with SIGNAL once its
 * command is gone has what its pipes hold (≤ 16 chunks) sent regardless.
 */
export const OUTPUT_DRAIN_ALLOWANCE = 16 * 64 * 1024;

/** PROBE ops (protocol 5). */
export const ProbeOp = { SPAWN: 1, SINK: 2 } as const;

/**
 * Most stdin bytes of one CREDIT exec (protocol 4) the host keeps unacknowledged by
 * STDIN_ACK: the agent's buffer per session stays under this, far from its 4 MiB limit.
 */
export const STDIN_WINDOW = 1024 * 1024;

/** Flags of a protocol-3 EXIT frame. */
export const ExitFlags = { OOM_KILLED: 1 } as const;

export interface Frame {
  readonly type: number;
  readonly session: number;
  readonly payload: Uint8Array;
}

function protocolError(message: string): CorralError<'E_PROTOCOL'> {
  return new CorralError('E_PROTOCOL', message);
}

/** Encodes one frame. */
export function encodeFrame(type: FrameTypeCode, session: number, payload: Uint8Array = new Uint8Array(0)): Buffer {
  if (payload.length > MAX_PAYLOAD) throw new RangeError(`frame payload of ${payload.length} bytes exceeds ${MAX_PAYLOAD}`);
  const buf = Buffer.allocUnsafe(HEADER_SIZE + payload.length);
  buf.writeUInt32LE(payload.length, 0);
  buf.writeUInt32LE(session >>> 0, 4);
  buf.writeUInt16LE(type, 8);
  buf.writeUInt16LE(0, 10);
  buf.set(payload, HEADER_SIZE);
  return buf;
}

/**
 * Incremental decoder of guest→host frames. Feed it chunks as they arrive; it returns the
 * whole frames they complete, and throws an E_PROTOCOL error on anything malformed. After a
 * throw the stream is unusable (the caller fails the sandbox).
 *
 * Payloads are views into the chunks fed, never copies, but for a frame of a type not in
 * `stream` that spans chunks (its bytes are joined, once). A frame of a type in `stream`
 * (output: a byte stream whatever its framing) is handed on in parts as its bytes arrive:
 * consecutive frames of the same type and session, each a view into one chunk. A 64 KiB
 * output frame seldom lines up with a 64 KiB socket read, so joining it copied most output.
 */
export class FrameDecoder {
  #chunks: Buffer[] = [];
  #buffered = 0;
  readonly #accept: ReadonlySet<number>;
  readonly #stream: ReadonlySet<number>;
  /** A `stream` frame whose payload is still arriving: its type, session and bytes to come. */
  #open: { type: number; session: number; left: number } | undefined;

  constructor(options: { accept?: ReadonlySet<number>; stream?: ReadonlySet<number> } = {}) {
    this.#accept = options.accept ?? GUEST_TYPES;
    this.#stream = options.stream ?? new Set();
  }

  /** Bytes held for an incomplete frame. Never exceeds HEADER_SIZE + MAX_PAYLOAD + one chunk. */
  get buffered(): number {
    return this.#buffered;
  }

  push(chunk: Buffer): Frame[] {
    this.#chunks.push(chunk);
    this.#buffered += chunk.length;
    const frames: Frame[] = [];
    for (;;) {
      const open = this.#open;
      if (open) {
        const n = Math.min(open.left, this.#buffered);
        for (const part of this.#takeViews(n)) frames.push({ type: open.type, session: open.session, payload: part });
        open.left -= n;
        if (open.left > 0) break;
        this.#open = undefined;
        continue;
      }
      if (this.#buffered < HEADER_SIZE) break;
      const head = this.#peekHeader();
      const length = head.readUInt32LE(0);
      const session = head.readUInt32LE(4);
      const type = head.readUInt16LE(8);
      const flags = head.readUInt16LE(10);
      if (length > MAX_PAYLOAD) throw protocolError(`guest sent a frame of ${length} bytes (max ${MAX_PAYLOAD})`);
      if (flags !== 0) throw protocolError(`guest sent a frame with flags 0x${flags.toString(16)} (must be 0)`);
      if (!this.#accept.has(type)) throw protocolError(`guest sent a frame of unknown type ${type}`);
      if (length > 0 && this.#stream.has(type)) {
        this.#takeViews(HEADER_SIZE);
        this.#open = { type, session, left: length };
        continue;
      }
      if (this.#buffered < HEADER_SIZE + length) break;
      const views = this.#takeViews(HEADER_SIZE + length);
      const whole = views.length === 1 ? views[0]! : Buffer.concat(views, HEADER_SIZE + length);
      frames.push({ type, session, payload: whole.subarray(HEADER_SIZE) });
    }
    return frames;
  }

  /** The next HEADER_SIZE bytes, not taken: a view, or a copy of the few that span chunks. */
  #peekHeader(): Buffer {
    const first = this.#chunks[0]!;
    if (first.length >= HEADER_SIZE) return first;
    const head = Buffer.allocUnsafe(HEADER_SIZE);
    let at = 0;
    for (const c of this.#chunks) {
      at += c.copy(head, at, 0, Math.min(c.length, HEADER_SIZE - at));
      if (at === HEADER_SIZE) break;
    }
    return head;
  }

  /** Takes the next `n` buffered bytes as views into the chunks they are in. */
  #takeViews(n: number): Buffer[] {
    const out: Buffer[] = [];
    while (n > 0) {
      const first = this.#chunks[0]!;
      if (first.length <= n) {
        if (first.length > 0) out.push(first);
        this.#chunks.shift();
        n -= first.length;
        this.#buffered -= first.length;
      } else {
        out.push(first.subarray(0, n));
        this.#chunks[0] = first.subarray(n);
        this.#buffered -= n;
        n = 0;
      }
    }
    return out;
  }
}

/** Writer of control payloads: u32/i32 and length-prefixed strings. */
export class PayloadWriter {
  #parts: Buffer[] = [];
  u32(v: number): this {
    const b = Buffer.allocUnsafe(4);
    b.writeUInt32LE(v >>> 0, 0);
    this.#parts.push(b);
    return this;
  }
  i32(v: number): this {
    const b = Buffer.allocUnsafe(4);
    b.writeInt32LE(v | 0, 0);
    this.#parts.push(b);
    return this;
  }
  bytes(v: Uint8Array): this {
    this.u32(v.length);
    this.#parts.push(Buffer.from(v.buffer, v.byteOffset, v.length));
    return this;
  }
  str(v: string): this {
    if (v.includes('\0')) throw new TypeError('strings sent to the guest may not contain NUL');
    return this.bytes(Buffer.from(v, 'utf8'));
  }
  strList(v: readonly string[]): this {
    this.u32(v.length);
    for (const s of v) this.str(s);
    return this;
  }
  finish(): Buffer {
    return Buffer.concat(this.#parts);
  }
}

/** Reader of control payloads; every read is bounds-checked and throws E_PROTOCOL. */
export class PayloadReader {
  #off = 0;
  readonly #buf: Buffer;
  constructor(payload: Uint8Array, readonly what: string) {
    this.#buf = Buffer.from(payload.buffer, payload.byteOffset, payload.length);
  }
  #need(n: number): void {
    if (this.#off + n > this.#buf.length) throw protocolError(`truncated ${this.what} payload`);
  }
  u32(): number {
    this.#need(4);
    const v = this.#buf.readUInt32LE(this.#off);
    this.#off += 4;
    return v;
  }
  i32(): number {
    this.#need(4);
    const v = this.#buf.readInt32LE(this.#off);
    this.#off += 4;
    return v;
  }
  /** A u64 as a number; E_PROTOCOL past 2^53. */
  u64(): number {
    const lo = this.u32();
    const hi = this.u32();
    if (hi >= 2 ** 21) throw protocolError(`u64 out of range in ${this.what} payload`);
    return hi * 2 ** 32 + lo;
  }
  /** An i64 as a number; E_PROTOCOL beyond ±2^53. */
  i64(): number {
    const lo = this.u32();
    const hi = this.i32();
    if (hi >= 2 ** 21 || hi < -(2 ** 21)) throw protocolError(`i64 out of range in ${this.what} payload`);
    return hi * 2 ** 32 + lo;
  }
  /** A length-prefixed byte field (a copy), at most `maxBytes` long. */
  bytes(maxBytes: number): Uint8Array {
    const n = this.u32();
    if (n > maxBytes) throw protocolError(`${n} bytes in ${this.what} payload (max ${maxBytes})`);
    this.#need(n);
    const b = Uint8Array.prototype.slice.call(this.#buf, this.#off, this.#off + n);
    this.#off += n;
    return b;
  }
  str(maxBytes = 64 * 1024): string {
    const n = this.u32();
    if (n > maxBytes) throw protocolError(`string of ${n} bytes in ${this.what} payload (max ${maxBytes})`);
    this.#need(n);
    const s = this.#buf.toString('utf8', this.#off, this.#off + n);
    this.#off += n;
    return s;
  }
  /** Bytes not read yet. */
  get remaining(): number {
    return this.#buf.length - this.#off;
  }
  end(): void {
    if (this.#off !== this.#buf.length) throw protocolError(`${this.#buf.length - this.#off} trailing bytes in ${this.what} payload`);
  }
}
