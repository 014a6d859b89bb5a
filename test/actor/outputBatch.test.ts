// OutputBatcher with an injected clock: which chunks go at once, which are joined, in what order.
import { describe, expect, it } from 'vitest';
import { BATCH_BYTES, BATCH_MS, OutputBatcher, type BatchClock, type OutputType } from '../../src/actor/outputBatch.ts';

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
  const batch = new OutputBatcher((type, execId, data) => posted.push([type, execId, Buffer.from(data).toString()]), clock);
  const advance = (ms: number) => {
    now += ms;
    for (const t of timers) if (t.live && t.at <= now) (t.live = false), t.fn();
  };
  const live = () => timers.filter((t) => t.live).length;
  return { batch, posted, advance, live };
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
});
