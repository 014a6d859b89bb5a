// The replay buffer and the replay-then-live join, on a real LMDB store in a temp dir (no VM:
// the events are made here, so bounds and gaps can be hit exactly).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Subject } from 'rxjs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { SandboxEvent } from '../../src/bus/events.ts';
import { ReplayLog } from '../../src/events/ReplayLog.ts';
import { resumeStream } from '../../src/events/resumeStream.ts';
import { Store } from '../../src/store/Store.ts';

function out(name: string, seq: number, text = `line ${seq}\n`): SandboxEvent {
  return { type: 'exec.stdout', name, seq, ts: 1000 + seq, execId: 7, data: new TextEncoder().encode(text) };
}

describe('the replay buffer', () => {
  let dir: string;
  let store: Store;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'corral-replay-'));
    store = Store.open(dir);
  });
  afterEach(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('gives back every event after since, also from a second store on the same dir once written', async () => {
    const log = new ReplayLog(store);
    const written: Array<Promise<void>> = [];
    for (let i = 1; i <= 20; i++) written.push(log.append(out('a', i)));
    written.push(log.append(out('b', 1)));
    expect(log.read('a', 15).events.map((e) => e.seq)).toEqual([16, 17, 18, 19, 20]);
    expect(log.read('a', 0).missed).toBeUndefined();
    // Committed (not a sleep: under load 50 ms was not always enough).
    await Promise.all(written);
    const other = Store.open(dir);
    try {
      const read = new ReplayLog(other).read('a', 18);
      expect(read.events.map((e) => [e.seq, new TextDecoder().decode((e as { data: Uint8Array }).data)])).toEqual([
        [19, 'line 19\n'],
        [20, 'line 20\n'],
      ]);
    } finally {
      await other.close();
    }
  });

  it('is bounded by count and by bytes, and says what is lost when it no longer reaches back', () => {
    const byCount = new ReplayLog(store, { maxEvents: 10 });
    for (let i = 1; i <= 25; i++) byCount.append(out('c', i));
    const r = byCount.read('c', 3);
    expect(r.events.map((e) => e.seq)).toEqual([16, 17, 18, 19, 20, 21, 22, 23, 24, 25]);
    expect(r.missed).toBe(15);
    expect(byCount.read('c', 15).missed).toBeUndefined();

    const byBytes = new ReplayLog(store, { maxBytes: 4096 });
    for (let i = 1; i <= 10; i++) byBytes.append(out('d', i, 'x'.repeat(1000)));
    const kept = byBytes.read('d', 0);
    expect(kept.events.length).toBeLessThanOrEqual(4);
    expect(kept.missed).toBe(kept.events[0]!.seq - 1);
  });

  it('joins replay and live without gap or duplicate, and leads with stream.gap when events are lost', () => {
    const log = new ReplayLog(store, { maxEvents: 5 });
    const live = new Subject<SandboxEvent>();
    const publish = (e: SandboxEvent) => {
      log.append(e);
      live.next(e);
    };
    for (let i = 1; i <= 8; i++) publish(out('e', i));
    const seen: SandboxEvent[] = [];
    // Live events that arrive while the replay is read are held back, then deduplicated.
    const sub = resumeStream(['e'], 1, (n, s) => log.read(n, s), live, false).subscribe((e) => seen.push(e));
    publish(out('e', 9));
    live.next(out('e', 9)); // a duplicate delivery
    publish(out('e', 10));
    sub.unsubscribe();
    expect(seen[0]).toMatchObject({ type: 'stream.gap', seq: 3, since: 1, missed: 3 });
    expect(seen.slice(1).map((e) => e.seq)).toEqual([4, 5, 6, 7, 8, 9, 10]);
  });

  it('starts a new buffer when the sandbox starts a new life (seq 1 again)', () => {
    const log = new ReplayLog(store);
    for (let i = 1; i <= 5; i++) log.append(out('f', i));
    log.append({ type: 'sandbox.creating', name: 'f', seq: 1, ts: 5000, image: 'x', memoryMib: 128, cpus: 1 });
    expect(log.read('f', 0).events.map((e) => e.type)).toEqual(['sandbox.creating']);
  });
});
