// The replay buffer and the replay-then-live join, on a real LMDB store in a temp dir (no VM:
// the events are made here, so bounds and gaps can be hit exactly). They are written as a
// sandbox's worker writes them (EventRecorder), in this thread; reads before the commit see
// them through the recorder, as the supervisor's reads see what its workers sent.
import { Subject } from 'rxjs';
import { describe, expect, it } from 'vitest';
import type { SandboxEvent } from '../../src/bus/events.ts';
import { EventRecorder, type RecordLimits } from '../../src/events/EventRecorder.ts';
import { ReplayLog, replayLimits, type ReplayLimits } from '../../src/events/ReplayLog.ts';
import { execLogLimits } from '../../src/logs/ExecLog.ts';
import { resumeStream } from '../../src/events/resumeStream.ts';
import { Store } from '../../src/store/Store.ts';
import { withTempStore } from '../helpers/tempStore.ts';

function out(name: string, seq: number, text = `line ${seq}\n`): SandboxEvent {
  return { type: 'exec.stdout', name, seq, ts: 1000 + seq, execId: 7, data: new TextEncoder().encode(text) };
}

const limits = (replay: ReplayLimits = {}): RecordLimits => ({ replay: replayLimits(replay), logs: execLogLimits() });

describe('the replay buffer', () => {
  let dir: string;
  let store: Store;
  withTempStore('replay', (d, s) => {
    dir = d;
    store = s;
  });

  it('gives back every event after since, also from a second store on the same dir once written', async () => {
    const recorders = new Map(['a', 'b'].map((n) => [n, new EventRecorder(store, n, limits())]));
    const log = new ReplayLog(store, (n) => recorders.get(n));
    for (let i = 1; i <= 20; i++) recorders.get('a')!.record(out('a', i));
    recorders.get('b')!.record(out('b', 1));
    // Read before the commit: this process still sees them.
    expect(log.read('a', 15).events.map((e) => e.seq)).toEqual([16, 17, 18, 19, 20]);
    expect(log.read('a', 0).missed).toBeUndefined();
    // flushed() resolves once the writes are committed: the condition for another store to see them.
    await Promise.all([...recorders.values()].map((r) => r.flushed()));
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
    const c = new EventRecorder(store, 'c', limits({ maxEvents: 10 }));
    const byCount = new ReplayLog(store, () => c);
    for (let i = 1; i <= 25; i++) c.record(out('c', i));
    const r = byCount.read('c', 3);
    expect(r.events.map((e) => e.seq)).toEqual([16, 17, 18, 19, 20, 21, 22, 23, 24, 25]);
    expect(r.missed).toBe(15);
    expect(byCount.read('c', 15).missed).toBeUndefined();

    const d = new EventRecorder(store, 'd', limits({ maxBytes: 4096 }));
    const byBytes = new ReplayLog(store, () => d);
    for (let i = 1; i <= 10; i++) d.record(out('d', i, 'x'.repeat(1000)));
    const kept = byBytes.read('d', 0);
    expect(kept.events.length).toBeLessThanOrEqual(4);
    expect(kept.missed).toBe(kept.events[0]!.seq - 1);
  });

  it('joins replay and live without gap or duplicate, and leads with stream.gap when events are lost', () => {
    const rec = new EventRecorder(store, 'e', limits({ maxEvents: 5 }));
    const log = new ReplayLog(store, () => rec);
    const live = new Subject<SandboxEvent>();
    const publish = (e: SandboxEvent) => {
      rec.record(e);
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

  it('starts a new buffer when the sandbox starts a new life (seq 1 again)', async () => {
    const first = new EventRecorder(store, 'f', limits());
    for (let i = 1; i <= 5; i++) first.record(out('f', i));
    await first.flushed();
    // A new life is a new actor, with a recorder of its own.
    const second = new EventRecorder(store, 'f', limits());
    second.record({ type: 'sandbox.creating', name: 'f', seq: 1, ts: 5000, image: 'x', memoryMib: 128, cpus: 1 });
    expect(new ReplayLog(store, () => second).read('f', 0).events.map((e) => e.type)).toEqual(['sandbox.creating']);
    await second.flushed();
    expect(new ReplayLog(store).read('f', 0).events.map((e) => e.type)).toEqual(['sandbox.creating']);
  });
});
