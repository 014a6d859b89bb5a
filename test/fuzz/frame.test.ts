// Property-based fuzzing (fast-check) of the host's side of the agent protocol: the frame
// decoder and the AgentClient on top of it, fed what a hostile guest could write to its
// virtio-serial port, split at arbitrary points. The guest is a fake socket the test drives
// synchronously: the real agent never sends malformed frames. Seeds in corpus/frames/ are
// replayed on every run; `npm run fuzz` runs the properties for long.
import { EventEmitter } from 'node:events';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { AgentClient } from '../../src/agent/AgentClient.ts';
import { GuestFs } from '../../src/agent/GuestFs.ts';
import { FrameDecoder, FrameType, GUEST_TYPES, HEADER_SIZE, MAX_PAYLOAD, PROTOCOL_VERSION, PayloadWriter, STDIN_WINDOW, encodeFrame, type FrameTypeCode } from '../../src/agent/frame.ts';
import { CorralError } from '../../src/errors.ts';
import { budget, corpus, timeoutFor } from './budget.ts';

const GUEST_FRAME_TYPES = [...GUEST_TYPES] as FrameTypeCode[];
const OUTPUT_TYPES: ReadonlySet<number> = new Set([FrameType.STDOUT, FrameType.STDERR]);

/** Cuts `bytes` at the given points (taken modulo its length). */
function split(bytes: Buffer, cuts: number[]): Buffer[] {
  if (bytes.length === 0) return [];
  const at = [...new Set(cuts.map((c) => c % bytes.length))].filter((c) => c > 0).sort((a, b) => a - b);
  const out: Buffer[] = [];
  let prev = 0;
  for (const c of [...at, bytes.length]) {
    out.push(bytes.subarray(prev, c));
    prev = c;
  }
  return out;
}

function header(length: number, session: number, type: number, flags = 0): Buffer {
  const h = Buffer.alloc(HEADER_SIZE);
  h.writeUInt32LE(length >>> 0, 0);
  h.writeUInt32LE(session >>> 0, 4);
  h.writeUInt16LE(type & 0xffff, 8);
  h.writeUInt16LE(flags & 0xffff, 10);
  return h;
}

const guestType = fc.oneof(fc.constantFrom(...GUEST_FRAME_TYPES), fc.integer({ min: 0, max: 0xffff }));
/** Pieces a hostile stream is made of: valid frames, lying headers, big frames, noise. */
const segment = fc.oneof(
  { weight: 4, arbitrary: fc.record({ type: fc.constantFrom(...GUEST_FRAME_TYPES), session: fc.nat(), payload: fc.uint8Array({ maxLength: 256 }) }).map((f) => encodeFrame(f.type, f.session, f.payload)) },
  { weight: 2, arbitrary: fc.tuple(fc.oneof(fc.nat({ max: MAX_PAYLOAD + 64 }), fc.nat()), fc.nat(), guestType, fc.oneof(fc.constant(0), fc.nat({ max: 0xffff }))).map(([l, s, t, f]) => header(l, s, t, f)) },
  // A frame at (or just past) the payload limit, body and all: what makes the decoder buffer most.
  { weight: 1, arbitrary: fc.tuple(fc.integer({ min: MAX_PAYLOAD - 8, max: MAX_PAYLOAD + 8 }), fc.constantFrom(...GUEST_FRAME_TYPES)).map(([l, t]) => Buffer.concat([header(l, 1, t), Buffer.alloc(l)])) },
  { weight: 2, arbitrary: fc.uint8Array({ maxLength: 64 }).map((b) => Buffer.from(b)) },
);
const hostileStream = fc.tuple(fc.array(segment, { maxLength: 12 }), fc.array(fc.nat(), { maxLength: 40 })).map(([segs, cuts]) => split(Buffer.concat(segs), cuts));

/** Feeds chunks to a decoder; returns how it ended. Fails the property on anything unclean. */
function drive(chunks: Buffer[], stream?: ReadonlySet<number>): { frames: number; error?: CorralError } {
  const d = new FrameDecoder(stream ? { stream } : {});
  let frames = 0;
  for (const chunk of chunks) {
    try {
      frames += d.push(chunk).length;
    } catch (err) {
      expect(err).toBeInstanceOf(CorralError);
      expect((err as CorralError).code).toBe('E_PROTOCOL');
      return { frames, error: err as CorralError };
    }
    expect(d.buffered).toBeLessThanOrEqual(HEADER_SIZE + MAX_PAYLOAD + chunk.length);
  }
  return { frames };
}

/** A fake socket the test drives synchronously: emit('data') runs the client's handler now. */
class FakeSocket extends EventEmitter {
  written: Buffer[] = [];
  destroyed = false;
  write(b: Buffer): boolean {
    this.written.push(b);
    return true;
  }
  destroy(): void {
    this.destroyed = true;
  }
  pause(): this {
    return this;
  }
  resume(): this {
    return this;
  }
}

const hello = (version = PROTOCOL_VERSION) => encodeFrame(FrameType.HELLO, 0, new PayloadWriter().u32(version).str('fuzz').u32(1).u32(1).finish());
const i32 = (v: number) => new PayloadWriter().i32(v).finish();

/** What a guest says to a client with sessions 1..4 open: mostly plausible, sometimes not. */
const guestAct = fc.oneof(
  { weight: 3, arbitrary: fc.tuple(fc.integer({ min: 1, max: 5 }), fc.integer()).map(([s, pid]) => encodeFrame(FrameType.STARTED, s, i32(pid))) },
  { weight: 4, arbitrary: fc.tuple(fc.integer({ min: 1, max: 5 }), fc.boolean(), fc.uint8Array({ maxLength: 300 })).map(([s, out, d]) => encodeFrame(out ? FrameType.STDOUT : FrameType.STDERR, s, d)) },
  { weight: 2, arbitrary: fc.tuple(fc.integer({ min: 1, max: 5 }), fc.integer(), fc.integer({ min: -1, max: 64 })).map(([s, c, sig]) => encodeFrame(FrameType.EXIT, s, new PayloadWriter().i32(c).i32(sig).u32(0).finish())) },
  // EXIT flags the host does not know (bit 0, OOM, is the only one): a clean failure.
  { weight: 1, arbitrary: fc.tuple(fc.integer({ min: 1, max: 5 }), fc.integer({ min: 1, max: 0x7fffffff })).map(([s, f]) => encodeFrame(FrameType.EXIT, s, new PayloadWriter().i32(0).i32(0).u32(f).finish())) },
  { weight: 1, arbitrary: fc.tuple(fc.integer({ min: 0, max: 5 }), fc.string({ maxLength: 40 })).map(([s, m]) => encodeFrame(FrameType.ERROR, s, new PayloadWriter().i32(2).str(m.replace(/\0/g, '')).finish())) },
  { weight: 1, arbitrary: fc.constantFrom(FrameType.PONG, FrameType.CONFIGURED, FrameType.SETUP_DONE, FrameType.HELLO).map((t) => encodeFrame(t, 0, new Uint8Array(4))) },
  { weight: 1, arbitrary: segment },
);
const conversation = fc
  .tuple(fc.boolean(), fc.array(guestAct, { maxLength: 30 }), fc.array(fc.nat(), { maxLength: 30 }), fc.option(fc.tuple(fc.nat(), fc.nat({ max: 255 })), { nil: undefined }))
  .map(([greets, acts, cuts, flip]) => {
    const bytes = Buffer.concat([greets ? hello() : Buffer.alloc(0), ...acts]);
    if (flip && bytes.length > 0) bytes[flip[0] % bytes.length]! ^= flip[1] || 1;
    return split(bytes, cuts);
  });

type Call = 'started' | 'out' | 'exited' | 'failed';

/** Runs a client against the chunks; checks every session's callbacks and the way it ends. */
function converse(chunks: Buffer[]): void {
  const sock = new FakeSocket();
  const client = new AgentClient(sock as never);
  const calls = new Map<number, Call[]>();
  for (let i = 1; i <= 4; i++) {
    const log: Call[] = [];
    const s = client.exec({ argv: ['x'], env: [], cwd: '/' }, {
      started: () => log.push('started'),
      stdout: () => log.push('out'),
      stderr: () => log.push('out'),
      exited: () => log.push('exited'),
      failed: (e) => {
        expect(e).toBeInstanceOf(CorralError);
        log.push('failed');
      },
    });
    calls.set(s.id, log);
  }
  for (const c of chunks) sock.emit('data', c); // a throw here fails the property
  for (const [, log] of calls) {
    // started? out* (exited|failed)? — and nothing after the end.
    expect(log.join(' ')).toMatch(/^(started( out)*( exited| failed)?|failed)?$/);
  }
  if (!sock.destroyed) return;
  // The connection failed: exec() now throws the error that failed it (synchronously).
  let error: unknown;
  try {
    client.exec({ argv: ['x'], env: [], cwd: '/' }, { started() {}, stdout() {}, stderr() {}, exited() {}, failed() {} });
  } catch (err) {
    error = err;
  }
  expect(error).toBeInstanceOf(CorralError);
  expect(['E_PROTOCOL', 'E_AGENT']).toContain((error as CorralError).code);
  for (const [, log] of calls) expect(log.at(-1)).toMatch(/exited|failed/);
  expect(client.sessionCount).toBe(0);
}

describe('fuzzing the frame decoder', () => {
  it('never throws anything but E_PROTOCOL and never buffers more than one frame plus one chunk', () => {
    fc.assert(fc.property(hostileStream, (chunks) => void drive(chunks)), budget(2500));
  }, timeoutFor(2500));

  it('the same with output handed on in parts (the AgentClient decoder)', () => {
    fc.assert(fc.property(hostileStream, (chunks) => void drive(chunks, OUTPUT_TYPES)), budget(1500));
  }, timeoutFor(1500));

  it('returns the bytes of every frame, output in parts, however the stream is cut', () => {
    const frames = fc.array(fc.record({ type: fc.constantFrom(...GUEST_FRAME_TYPES), session: fc.nat({ max: 3 }), payload: fc.uint8Array({ maxLength: 2048 }) }), { maxLength: 20 });
    fc.assert(
      fc.property(frames, fc.array(fc.nat(), { maxLength: 50 }), (fs, cuts) => {
        const d = new FrameDecoder({ stream: OUTPUT_TYPES });
        const got = split(Buffer.concat(fs.map((f) => encodeFrame(f.type, f.session, f.payload))), cuts).flatMap((c) => d.push(c));
        // Parts of one output frame are consecutive frames of its type and session: joined
        // back per run of them, the bytes are the sent ones. (Two sent output frames of the
        // same type and session in a row join too: a stream has no frame boundaries.)
        const runs = (list: Array<{ type: number; session: number; payload: Uint8Array }>) => {
          const out: Array<{ type: number; session: number; hex: string }> = [];
          for (const f of list) {
            const last = out.at(-1);
            if (last && OUTPUT_TYPES.has(f.type) && last.type === f.type && last.session === f.session) last.hex += Buffer.from(f.payload).toString('hex');
            else out.push({ type: f.type, session: f.session, hex: Buffer.from(f.payload).toString('hex') });
          }
          return out.filter((r) => !OUTPUT_TYPES.has(r.type) || r.hex.length > 0);
        };
        expect(runs(got)).toEqual(runs(fs));
        expect(d.buffered).toBe(0);
      }),
      budget(1500),
    );
  }, timeoutFor(1500));

  it('returns exactly the frames that were sent, however the stream is cut', () => {
    const frames = fc.array(fc.record({ type: fc.constantFrom(...GUEST_FRAME_TYPES), session: fc.nat(), payload: fc.uint8Array({ maxLength: 2048 }) }), { maxLength: 20 });
    fc.assert(
      fc.property(frames, fc.array(fc.nat(), { maxLength: 50 }), (fs, cuts) => {
        const d = new FrameDecoder();
        const got = split(Buffer.concat(fs.map((f) => encodeFrame(f.type, f.session, f.payload))), cuts).flatMap((c) => d.push(c));
        expect(got.map((f) => ({ type: f.type, session: f.session, payload: Buffer.from(f.payload).toString('hex') }))).toEqual(
          fs.map((f) => ({ type: f.type, session: f.session, payload: Buffer.from(f.payload).toString('hex') })),
        );
        expect(d.buffered).toBe(0);
      }),
      budget(1500),
    );
  }, timeoutFor(1500));

  it('replays the seed corpus whole, and cut at every byte', () => {
    const seeds = corpus('frames');
    expect(seeds.length).toBeGreaterThan(0);
    for (const [name, text] of seeds) {
      const bytes = Buffer.from(text.replace(/#.*$/gm, '').replace(/\s+/g, ''), 'hex');
      const whole = drive([bytes]);
      const bytewise = drive([...bytes].map((b) => Buffer.from([b])));
      // Frames completed in the chunk that also held a bad one are dropped with the
      // connection, so only the outcome is compared.
      expect({ name, error: bytewise.error?.code }).toEqual({ name, error: whole.error?.code });
      converse([bytes]);
    }
  });
});

describe('fuzzing the agent client', () => {
  it('turns any guest stream into callbacks in protocol order, or one clean failure of every session', () => {
    fc.assert(fc.property(conversation, converse), budget(2500));
  }, timeoutFor(2500));
});

/** FS_REPLY bodies a guest could send: plausible records, errors, lies, noise. */
const u32 = (v: number) => new PayloadWriter().u32(v).finish();
const statRecord = fc
  .tuple(fc.integer({ min: 0, max: 6 }), fc.oneof(fc.nat({ max: 0o7777 }), fc.nat()), fc.nat(), fc.nat({ max: 2 ** 22 }), fc.integer(), fc.integer(), fc.nat(), fc.nat())
  .map(([kind, mode, lo, hi, mlo, mhi, uid, gid]) => Buffer.concat([u32(kind), u32(mode), u32(lo), u32(hi), u32(mlo), u32(mhi), u32(uid), u32(gid)]));
const fsBody = fc.oneof(
  { weight: 3, arbitrary: statRecord.map((r) => Buffer.concat([u32(0), r])) },
  { weight: 2, arbitrary: fc.tuple(fc.integer({ min: -3, max: 140 }), fc.string({ maxLength: 30 })).map(([e, m]) => new PayloadWriter().i32(e).str(m.replace(/\0/g, '')).finish()) },
  {
    weight: 2,
    arbitrary: fc
      .tuple(fc.nat({ max: 2 }), fc.array(fc.tuple(fc.constantFrom('a', 'b', '.', '..', 'x/y', '', 'é'), statRecord), { maxLength: 4 }), fc.nat({ max: 6 }))
      .map(([more, entries, count]) => Buffer.concat([u32(0), u32(more), u32(count), ...entries.flatMap(([n, r]) => [new PayloadWriter().str(n).finish(), r])])),
  },
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 64 }).map((b) => Buffer.concat([u32(0), new PayloadWriter().bytes(b).finish()])) },
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 40 }).map((b) => Buffer.from(b)) },
);
const fsConversation = fc
  .tuple(fc.array(fc.tuple(fc.integer({ min: 0, max: 6 }), fsBody), { maxLength: 12 }), fc.array(fc.nat(), { maxLength: 20 }))
  .map(([replies, cuts]) => split(Buffer.concat(replies.map(([s, b]) => encodeFrame(FrameType.FS_REPLY, s, b))), cuts));

describe('fuzzing the file client', () => {
  it('settles every file request with a checked value, E_FS, or the connection failure, never a throw', async () => {
    await fc.assert(
      fc.asyncProperty(fsConversation, async (chunks) => {
        const sock = new FakeSocket();
        const client = new AgentClient(sock as never);
        sock.emit('data', hello(3));
        const fs = new GuestFs(client);
        // Sessions 1..5: stat, list, readlink, open for reading, mkdir.
        const requests: Array<Promise<unknown>> = [fs.stat('/a'), fs.list('/d'), fs.readlink('/l'), fs.openRead('/f'), fs.mkdir('/m')];
        const outcomes: Array<{ ok: boolean; value?: unknown; error?: unknown } | undefined> = requests.map(() => undefined);
        requests.forEach((p, i) => p.then((value) => (outcomes[i] = { ok: true, value }), (error: unknown) => (outcomes[i] = { ok: false, error })));
        for (const c of chunks) sock.emit('data', c); // a throw here fails the property
        await new Promise((r) => setImmediate(r));
        for (const o of outcomes) {
          if (!o) continue;
          if (!o.ok) {
            expect(o.error).toBeInstanceOf(CorralError);
            expect(['E_FS', 'E_PROTOCOL']).toContain((o.error as CorralError).code);
          }
        }
        const [stat, list, link] = outcomes;
        if (stat?.ok) expect(['file', 'directory', 'symlink', 'other']).toContain((stat.value as { type: string }).type);
        if (list?.ok) for (const e of list.value as Array<{ name: string }>) expect(e.name).toMatch(/^[^/]+$/);
        if (link?.ok) expect(typeof link.value).toBe('string');
        // A broken connection leaves no request hanging.
        if (sock.destroyed) expect(outcomes.every((o) => o !== undefined)).toBe(true);
      }),
      budget(1500),
    );
  }, timeoutFor(1500));
});


/** What a guest says to one stdin exec (session 1) under flow control: acknowledgements true, false and absurd. */
const ackAct = fc.oneof(
  { weight: 6, arbitrary: fc.oneof(fc.integer({ min: 1, max: 64 * 1024 }), fc.constantFrom(0, STDIN_WINDOW, STDIN_WINDOW + 1, 0xffffffff)).map((n) => encodeFrame(FrameType.STDIN_ACK, 1, u32(n))) },
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 8 }).map((b) => encodeFrame(FrameType.STDIN_ACK, 1, b)) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: 3 }).map((s) => encodeFrame(FrameType.STDIN_ACK, s, u32(1))) },
  { weight: 1, arbitrary: fc.constant(encodeFrame(FrameType.EXIT, 1, new PayloadWriter().i32(0).i32(0).u32(0).finish())) },
);

describe('fuzzing stdin flow control', () => {
  it('never has more than the window in flight, and settles every write when the session or connection ends', async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 1, max: 3 * STDIN_WINDOW }), fc.array(ackAct, { maxLength: 40 }), fc.array(fc.nat(), { maxLength: 20 }), async (size, acts, cuts) => {
        const sock = new FakeSocket();
        const client = new AgentClient(sock as never);
        sock.emit('data', hello(4));
        let ended = false;
        const s = client.exec({ argv: ['cat'], env: [], cwd: '/', stdin: true }, { started() {}, stdout() {}, stderr() {}, exited: () => (ended = true), failed: () => (ended = true) });
        let written = false;
        void s.write(new Uint8Array(size)).then(() => (written = true));
        sock.emit('data', encodeFrame(FrameType.STARTED, 1, i32(7)));
        for (const c of split(Buffer.concat(acts), cuts)) {
          sock.emit('data', c); // a throw here fails the property
          expect(s.stdinInFlight).toBeGreaterThanOrEqual(0);
          expect(s.stdinInFlight).toBeLessThanOrEqual(STDIN_WINDOW);
        }
        await new Promise((r) => setImmediate(r));
        expect(s.stdinInFlightPeak).toBeLessThanOrEqual(STDIN_WINDOW);
        // Only what the window allowed (plus what was acknowledged) was sent.
        const stdinBytes = new FrameDecoder({ accept: new Set([FrameType.EXEC, FrameType.STDIN]) }).push(Buffer.concat(sock.written)).filter((f) => f.type === FrameType.STDIN).reduce((n, f) => n + f.payload.length, 0);
        expect(stdinBytes - s.stdinInFlight).toBeGreaterThanOrEqual(0);
        if (ended || sock.destroyed) expect(written).toBe(true);
        if (sock.destroyed) expect(['E_PROTOCOL', 'E_AGENT']).toContain(((await client.failed) as CorralError).code);
      }),
      budget(800),
    );
  }, timeoutFor(800));
});

/** One watch record as a guest might write it: kinds, flags and paths plausible or not. */
const watchRecord = fc
  .tuple(fc.integer({ min: 0, max: 6 }), fc.integer({ min: 0, max: 2 }), fc.constantFrom('', 'a', 'a/b', '/abs', 'x\0y', 'ü'), fc.constantFrom('', 'c', '/abs'))
  .map(([kind, flags, path, to]) => new PayloadWriter().u32(kind).u32(flags).str(path.replace(/\0/g, '')).str(to).finish());
/** What a guest says to a client with watches 1 and 2 open. */
const watchAct = fc.oneof(
  { weight: 2, arbitrary: fc.integer({ min: 0, max: 3 }).map((s) => encodeFrame(FrameType.WATCH_EVENTS, s, u32(0))) },
  {
    weight: 4,
    arbitrary: fc
      .tuple(fc.integer({ min: 0, max: 3 }), fc.array(watchRecord, { maxLength: 5 }), fc.integer({ min: -1, max: 1 }))
      .map(([s, rs, skew]) => encodeFrame(FrameType.WATCH_EVENTS, s, Buffer.concat([u32(Math.max(0, rs.length + skew)), ...rs]))),
  },
  {
    weight: 1,
    arbitrary: fc
      .tuple(fc.integer({ min: 0, max: 3 }), fc.integer({ min: -1, max: 40 }), fc.integer({ min: 0, max: 4 }))
      .map(([s, errno, reason]) => encodeFrame(FrameType.WATCH_END, s, new PayloadWriter().i32(errno).u32(reason).str('why').finish())),
  },
  {
    weight: 1,
    arbitrary: fc
      .tuple(fc.integer({ min: 1, max: 2 }), fc.constantFrom(FrameType.WATCH_EVENTS, FrameType.WATCH_END), fc.uint8Array({ maxLength: 24 }))
      .map(([s, t, b]) => encodeFrame(t, s, b)),
  },
);

describe('fuzzing the watch client', () => {
  it('hands on only checked records, in order, ends each watch once, and settles every start', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(watchAct, { maxLength: 30 }), fc.array(fc.nat(), { maxLength: 20 }), async (acts, cuts) => {
        const sock = new FakeSocket();
        const client = new AgentClient(sock as never);
        sock.emit('data', hello(6));
        const state = [1, 2].map(() => ({ ended: 0, started: undefined as boolean | undefined, changesAfterEnd: false }));
        const sessions = state.map((st) =>
          client.watch('/w', { recursive: true }, {
            changes: (records) => {
              if (st.ended) st.changesAfterEnd = true;
              for (const r of records) {
                expect(['create', 'write', 'remove', 'rename', 'overflow']).toContain(r.kind);
                expect(r.path.startsWith('/')).toBe(false);
                expect(r.kind === 'rename').toBe(r.to !== undefined);
              }
            },
            ended: () => void st.ended++,
          }),
        );
        sessions.forEach((s, i) => s.started.then(() => (state[i]!.started = true), (err: unknown) => ((state[i]!.started = false), expect(err).toBeInstanceOf(CorralError))));
        for (const c of split(Buffer.concat(acts), cuts)) sock.emit('data', c); // a throw here fails the property
        await new Promise((r) => setImmediate(r));
        for (const st of state) {
          expect(st.ended).toBeLessThanOrEqual(1);
          expect(st.changesAfterEnd).toBe(false);
          if (st.started === false) expect(st.ended).toBe(0);
        }
        // A broken connection leaves no watch hanging: each ended, or its start rejected.
        if (sock.destroyed) for (const st of state) expect(st.ended === 1 || st.started === false).toBe(true);
      }),
      budget(1500),
    );
  }, timeoutFor(1500));
});
