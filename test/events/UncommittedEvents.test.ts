// What the supervisor's reads see of a sandbox's events while its worker writes them: the
// events it published and the worker has not committed (held here), the committed ones (read
// from the store), and none it has not published yet. The worker's side is an EventRecorder
// in this thread, committing into the shared counter as a worker does. Real LMDB, no VM.
import { describe, expect, it } from 'vitest';
import type { SandboxEvent } from '../../src/bus/events.ts';
import { EventRecorder, type RecordLimits } from '../../src/events/EventRecorder.ts';
import { ReplayLog } from '../../src/events/ReplayLog.ts';
import { UncommittedEvents } from '../../src/events/UncommittedEvents.ts';
import { ExecLog } from '../../src/logs/ExecLog.ts';
import type { Store } from '../../src/store/Store.ts';
import { withTempStore } from '../helpers/tempStore.ts';

const limits: RecordLimits = { replay: { maxEvents: 100, maxBytes: 1 << 20 }, logs: { maxEntries: 100, maxBytes: 1 << 20 } };
const out = (seq: number): SandboxEvent => ({ type: 'exec.stdout', name: 'w', seq, ts: seq, execId: 1, data: new TextEncoder().encode(`${seq}\n`) });

describe("the supervisor's hold on events its worker has not committed", () => {
  let dir: string;
  let store: Store;
  withTempStore('held', (d, s) => {
    dir = d;
    store = s;
  });

  it('shows what it published, committed or not, and nothing it has not published yet', async () => {
    const written = new BigInt64Array(new SharedArrayBuffer(8));
    const held = new UncommittedEvents(written);
    const worker = new EventRecorder(store, 'w', limits, (seq) => Atomics.store(written, 0, BigInt(seq)));
    const replay = new ReplayLog(store, () => held);
    const logs = new ExecLog(store, limits.logs, () => held);
    try {
      // The worker records 1…5 and posts them; the supervisor has handled 1…3 so far.
      const numbers = [1, 2, 3, 4, 5].map((seq) => worker.record(out(seq)));
      for (const seq of [1, 2, 3]) held.add(out(seq), numbers[seq - 1], worker.replayFrom);
      expect(replay.read('w', 0).events.map((e) => e.seq)).toEqual([1, 2, 3]);
      expect(logs.read('w').map((e) => e.ts)).toEqual([1, 2, 3]);
      // Committed: the held ones go, the store has them, and 4 and 5 are still not shown.
      await worker.flushed();
      expect(held.committed).toBe(5);
      expect(held.uncommitted()).toEqual([]);
      expect(replay.read('w', 0).events.map((e) => e.seq)).toEqual([1, 2, 3]);
      for (const seq of [4, 5]) held.add(out(seq), numbers[seq - 1], worker.replayFrom);
      expect(replay.read('w', 3).events.map((e) => e.seq)).toEqual([4, 5]);
      expect(await held.settled(10_000)).toBe(true);
    } finally {
      held.close();
    }
  });
});
