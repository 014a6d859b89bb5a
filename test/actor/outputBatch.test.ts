// OutputBatcher with an injected clock: which chunks go at once, which are joined, in what order.
import { describe, expect, it } from 'vitest';
import { BATCH_BYTES, BATCH_MS, FLOOD_BYTES, MAX_BATCH_MS, OutputBatcher, type BatchClock, type OutputType } from '../../src/actor/outputBatch.ts';

function setup() {
  let now = 1000;
  const timers: Array<{ at: number; fn: () => void; live: boolean }> = [];
  const clock: BatchClock = {
    now: () => now,
    setTimeout: (fn, ms) => {
      const t = { at: now + ms, fn, live: true };
      timers.push(t);
      return t;
    },
    clearTimeout: (h) => void ((h as { live: boolean }).live = false),
  };
  const posted: Array<[OutputType, number, string]> = [];
  const buffers: Uint8Array[] = [];
  const batch = new OutputBatcher((type, execId, data) => {
    buffers.push(data);
    posted.push([type, execId, Buffer.from(data).toString()]);
  }, clock);
  const advance = (ms: number) => {
    now += ms;
    for (const t of timers) if (t.live && t.at <= now) (t.live = false), t.fn();
  };
  const live = () => timers.filter((t) => t.live).length;
  return { batch, posted, buffers, advance, live };
}

describe('OutputBatcher', () => {
  it('posts the first chunk after a quiet spell at once and joins the ones that follow', () => {
    const { batch, posted, advance, live } = setup();
    batch.add('exec.stdout', 1, Buffer.from('a'));
    expect(posted).toEqual([['exec.stdout', 1, 'a']]);
    batch.add('exec.stdout', 1, Buffer.from('b'));
    batch.add('exec.stdout', 1, Buffer.from('c'));
    expect(posted).toHaveLength(1);
    expect(live()).toBe(1);
    advance(BATCH_MS);
    expect(posted).toEqual([['exec.stdout', 1, 'a'], ['exec.stdout', 1, 'bc']]);
    expect(live()).toBe(0);
    // A quiet spell again: the next chunk goes at once.
    advance(BATCH_MS);
    batch.add('exec.stdout', 1, Buffer.from('d'));
    expect(posted.at(-1)).toEqual(['exec.stdout', 1, 'd']);
  });

  it('keeps the order across execs and streams, and flush() posts what it holds', () => {
    const { batch, posted, live } = setup();
    batch.add('exec.stdout', 1, Buffer.from('1'));
    batch.add('exec.stdout', 1, Buffer.from('2'));
    batch.add('exec.stderr', 1, Buffer.from('e'));
    batch.add('exec.stdout', 2, Buffer.from('x'));
    batch.add('exec.stdout', 2, Buffer.from('y'));
    batch.flush();
    expect(posted).toEqual([['exec.stdout', 1, '1'], ['exec.stdout', 1, '2'], ['exec.stderr', 1, 'e'], ['exec.stdout', 2, 'xy']]);
    expect(live()).toBe(0);
    batch.flush();
    expect(posted).toHaveLength(4);
  });

  it('posts a batch at once when it reaches BATCH_BYTES', () => {
    const { batch, posted, live } = setup();
    batch.add('exec.stdout', 1, Buffer.from('a'));
    const half = Buffer.alloc(BATCH_BYTES / 2, 'z');
    batch.add('exec.stdout', 1, half);
    batch.add('exec.stdout', 1, half);
    expect(posted).toHaveLength(2);
    expect(posted[1]![2].length).toBe(BATCH_BYTES);
    expect(live()).toBe(0);
  });

  it('widens the window while a flood fills its batches, up to MAX_BATCH_MS, and narrows it after', () => {
    const { batch, posted, advance } = setup();
    const piece = Buffer.alloc(FLOOD_BYTES, 'f');
    batch.add('exec.stdout', 1, piece); // after a quiet spell: at once
    const windows: number[] = [];
    // A flood: a full piece every millisecond; each window's batch holds FLOOD_BYTES or more.
    for (let ms = 0; ms < 200; ms++) {
      advance(1);
      batch.add('exec.stdout', 1, piece);
      windows.push(batch.windowMs);
    }
    expect(windows[0]).toBe(BATCH_MS);
    expect(Math.max(...windows)).toBe(MAX_BATCH_MS);
    expect(windows.at(-1)).toBe(MAX_BATCH_MS);
    // Fewer, larger events than one per BATCH_MS, and every byte in order.
    expect(posted.length).toBeLessThan(200 / BATCH_MS);
    batch.flush();
    expect(posted.reduce((n, p) => n + p[2].length, 0)).toBe(201 * FLOOD_BYTES);
    // A batch that does not fill narrows the window again.
    advance(1);
    batch.add('exec.stdout', 1, Buffer.from('x'));
    advance(MAX_BATCH_MS);
    expect(batch.windowMs).toBe(BATCH_MS);
    // So does a quiet spell: the next chunk goes at once.
    advance(MAX_BATCH_MS);
    batch.add('exec.stdout', 1, Buffer.from('y'));
    expect(posted.at(-1)).toEqual(['exec.stdout', 1, 'y']);
    expect(batch.windowMs).toBe(BATCH_MS);
  });

  it('keeps the short window for a command that writes a little often', () => {
    const { batch, posted, advance } = setup();
    for (let i = 0; i < 50; i++) {
      batch.add('exec.stdout', 1, Buffer.from(`line ${i}\n`));
      advance(1);
      expect(batch.windowMs).toBe(BATCH_MS);
    }
    batch.flush();
    expect(posted.map((p) => p[2]).join('')).toBe(Array.from({ length: 50 }, (_, i) => `line ${i}\n`).join(''));
  });

  it('posts buffers of their own, never views into the reads they came from', () => {
    const { batch, buffers, advance } = setup();
    const read = Buffer.from('0123456789');
    batch.add('exec.stdout', 1, read.subarray(2, 4)); // at once
    batch.add('exec.stdout', 1, read.subarray(4, 6)); // alone in its batch
    advance(BATCH_MS);
    batch.add('exec.stdout', 1, read.subarray(6, 8));
    batch.add('exec.stdout', 1, read.subarray(8, 10)); // a joined batch
    batch.flush();
    expect(buffers.map((b) => Buffer.from(b).toString())).toEqual(['23', '45', '6789']);
    for (const b of buffers) {
      expect(b.byteOffset).toBe(0);
      expect(b.byteLength).toBe(b.buffer.byteLength);
      expect(b.buffer).not.toBe(read.buffer);
    }
  });
});
