import { describe, expect, it } from 'vitest';
import { FrameDecoder, FrameType, HEADER_SIZE, MAX_PAYLOAD, PayloadReader, PayloadWriter, encodeFrame } from '../../src/agent/frame.ts';
import { CorralError } from '../../src/errors.ts';

function header(length: number, session: number, type: number, flags = 0): Buffer {
  const b = Buffer.alloc(HEADER_SIZE);
  b.writeUInt32LE(length, 0);
  b.writeUInt32LE(session, 4);
  b.writeUInt16LE(type, 8);
  b.writeUInt16LE(flags, 10);
  return b;
}

describe('frame decoding', () => {
  it('reassembles frames split at every byte boundary', () => {
    const a = encodeFrame(FrameType.STDOUT, 7, Buffer.from('hello'));
    const b = encodeFrame(FrameType.EXIT, 7, new PayloadWriter().i32(3).i32(0).finish());
    const all = Buffer.concat([a, b]);
    for (let cut = 0; cut <= all.length; cut++) {
      const d = new FrameDecoder();
      const frames = [...d.push(all.subarray(0, cut)), ...d.push(all.subarray(cut))];
      expect(frames.map((f) => [f.type, f.session, Buffer.from(f.payload).toString('hex')])).toEqual([
        [FrameType.STDOUT, 7, Buffer.from('hello').toString('hex')],
        [FrameType.EXIT, 7, new PayloadWriter().i32(3).i32(0).finish().toString('hex')],
      ]);
      expect(d.buffered).toBe(0);
    }
  });

  it('hands a stream type on in parts as views into the chunks, split at every byte boundary', () => {
    const out = Buffer.from('0123456789abcdef');
    const a = encodeFrame(FrameType.STDOUT, 7, out);
    const b = encodeFrame(FrameType.EXIT, 7, new PayloadWriter().i32(3).i32(0).finish());
    const c = encodeFrame(FrameType.STDERR, 7, Buffer.from('e'));
    const all = Buffer.concat([a, b, c]);
    for (let cut = 0; cut <= all.length; cut++) {
      for (let cut2 = cut; cut2 <= all.length; cut2 += 5) {
        const d = new FrameDecoder({ stream: new Set([FrameType.STDOUT, FrameType.STDERR]) });
        const chunks = [all.subarray(0, cut), all.subarray(cut, cut2), all.subarray(cut2)];
        const frames = chunks.flatMap((ch) => d.push(ch));
        const stdout = frames.filter((f) => f.type === FrameType.STDOUT);
        // The parts, in order, are the payload; each is a view into one of the chunks fed.
        expect(Buffer.concat(stdout.map((f) => f.payload)).toString()).toBe(out.toString());
        for (const f of stdout) expect(chunks.some((ch) => f.payload.buffer === ch.buffer)).toBe(true);
        expect(stdout.every((f) => f.session === 7 && f.payload.byteLength > 0)).toBe(true);
        // What is not a stream type comes whole, after the output, in order.
        expect(frames.slice(stdout.length).map((f) => [f.type, Buffer.from(f.payload).toString('hex')])).toEqual([
          [FrameType.EXIT, new PayloadWriter().i32(3).i32(0).finish().toString('hex')],
          [FrameType.STDERR, Buffer.from('e').toString('hex')],
        ]);
        expect(d.buffered).toBe(0);
      }
    }
  });

  it('rejects an oversized frame from its header alone, before buffering the payload', () => {
    const d = new FrameDecoder();
    expect(() => d.push(header(MAX_PAYLOAD + 1, 1, FrameType.STDOUT))).toThrowError(/max 1048576/);
  });

  it('rejects unknown types, host-only types and non-zero flags', () => {
    expect(() => new FrameDecoder().push(header(0, 0, 999))).toThrowError(/unknown type 999/);
    expect(() => new FrameDecoder().push(header(0, 1, FrameType.EXEC))).toThrowError(/unknown type 2/);
    expect(() => new FrameDecoder().push(header(0, 1, FrameType.STDOUT, 1))).toThrowError(/flags/);
    try {
      new FrameDecoder().push(header(0, 0, 999));
    } catch (err) {
      expect(err).toBeInstanceOf(CorralError);
      expect((err as CorralError).code).toBe('E_PROTOCOL');
    }
  });

  it('bounds-checks control payloads', () => {
    const r = new PayloadReader(new PayloadWriter().u32(1000).finish(), 'TEST');
    expect(() => r.str()).toThrowError(/truncated TEST payload/);
    const r2 = new PayloadReader(new PayloadWriter().str('x'.repeat(100)).finish(), 'TEST');
    expect(() => r2.str(10)).toThrowError(/max 10/);
    const r3 = new PayloadReader(new PayloadWriter().i32(1).i32(2).finish(), 'TEST');
    r3.i32();
    expect(() => r3.end()).toThrowError(/trailing/);
  });

  it('refuses to encode NUL inside strings and payloads over the limit', () => {
    expect(() => new PayloadWriter().str('a\0b')).toThrow(TypeError);
    expect(() => encodeFrame(FrameType.STDIN, 1, new Uint8Array(MAX_PAYLOAD + 1))).toThrow(RangeError);
  });
});
