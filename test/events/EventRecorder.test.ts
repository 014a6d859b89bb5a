// How a sandbox's worker records its events: each output chunk once, read back by both the
// replay buffer and the exec log, each within its own window. Real LMDB in a temp dir, no VM
// (the events are made here, so the windows can be hit exactly).
import { describe, expect, it } from 'vitest';
import type { SandboxEvent } from '../../src/bus/events.ts';
import { EventRecorder, type RecordLimits, type StoredEvent } from '../../src/events/EventRecorder.ts';
import { ReplayLog } from '../../src/events/ReplayLog.ts';
import { ExecLog, type LogEntry } from '../../src/logs/ExecLog.ts';
import type { Store } from '../../src/store/Store.ts';
import { withTempStore } from '../helpers/tempStore.ts';

const enc = new TextEncoder();
const text = (data: Uint8Array) => new TextDecoder().decode(data);
const out = (name: string, seq: number, body: string): SandboxEvent => ({ type: 'exec.stdout', name, seq, ts: 1000 + seq, execId: 3, data: enc.encode(body) });
const exited = (name: string, seq: number): SandboxEvent => ({ type: 'exec.exited', name, seq, ts: 1000 + seq, execId: 3, code: 0, signal: null, durationMs: 1 });

describe('the event recorder', () => {
  let dir: string;
  let store: Store;
  withTempStore('recorder', (d, s) => {
    dir = d;
    store = s;
  });

  const keys = (db: string, name: string) => [...store.database<unknown, [string, number]>(db).getKeys({ start: [name, 0], end: [name, Number.MAX_SAFE_INTEGER] })].map((k) => (k as [string, number])[1]);

  it('stores an output chunk once, in the exec log, and the replay record refers to it', async () => {
    const rec = new EventRecorder(store, 'one', { replay: { maxEvents: 100, maxBytes: 1 << 20 }, logs: { maxEntries: 100, maxBytes: 1 << 20 } });
    const data = enc.encode('hello\n');
    const n = rec.record({ type: 'exec.stdout', name: 'one', seq: 1, ts: 5, execId: 3, data });
    rec.record(exited('one', 2));
    // The bytes may be transferred away once recorded (the worker does so next).
    structuredClone(data, { transfer: [data.buffer] });
    await rec.flushed();

    const stored = store.database<StoredEvent, [string, number]>('events').get(['one', 1])!;
    expect(stored).toEqual({ type: 'exec.stdout', name: 'one', seq: 1, ts: 5, execId: 3, log: n, bytes: 6 });
    expect(text(store.database<LogEntry, [string, number]>('logs').get(['one', n!])!.data)).toBe('hello\n');
    const replayed = new ReplayLog(store).read('one', 0).events;
    expect(replayed.map((e) => e.type)).toEqual(['exec.stdout', 'exec.exited']);
    expect(text((replayed[0] as { data: Uint8Array }).data)).toBe('hello\n');
    expect(new ExecLog(store).read('one').map((e) => text(e.data))).toEqual(['hello\n']);
  });

  it('keeps a chunk while either window holds it, shows each window its own, and deletes it once out of both', async () => {
    // The exec log keeps 2 chunks, the replay buffer 6 events: the log entries the replay
    // still refers to stay in the store, out of the log's view.
    const limits: RecordLimits = { replay: { maxEvents: 6, maxBytes: 1 << 20 }, logs: { maxEntries: 2, maxBytes: 1 << 20 } };
    const rec = new EventRecorder(store, 'two', limits);
    for (let seq = 1; seq <= 10; seq++) rec.record(out('two', seq, `chunk ${seq}\n`));
    await rec.flushed();

    expect(new ExecLog(store, limits.logs).read('two').map((e) => text(e.data))).toEqual(['chunk 9\n', 'chunk 10\n']);
    const replay = new ReplayLog(store).read('two', 0);
    expect(replay.events.map((e) => text((e as { data: Uint8Array }).data))).toEqual([5, 6, 7, 8, 9, 10].map((s) => `chunk ${s}\n`));
    expect(replay.missed).toBe(4);
    expect(keys('logs', 'two')).toEqual([5, 6, 7, 8, 9, 10]);

    // Events without output push the old output out of the replay window too: then only the
    // exec log's window is left in the store.
    for (let seq = 11; seq <= 16; seq++) rec.record(exited('two', seq));
    await rec.flushed();
    expect(keys('logs', 'two')).toEqual([9, 10]);
    expect(keys('events', 'two')).toEqual([11, 12, 13, 14, 15, 16]);
  });

  it('numbers the exec log on across lives, and a new life drops only the replay buffer', async () => {
    const limits: RecordLimits = { replay: { maxEvents: 100, maxBytes: 1 << 20 }, logs: { maxEntries: 100, maxBytes: 1 << 20 } };
    const first = new EventRecorder(store, 'three', limits);
    first.record(out('three', 1, 'before\n'));
    await first.flushed();
    const second = new EventRecorder(store, 'three', limits);
    expect(second.record(out('three', 1, 'after\n'))).toBe(2);
    await second.flushed();
    expect(new ExecLog(store).read('three').map((e) => text(e.data))).toEqual(['before\n', 'after\n']);
    expect(new ReplayLog(store).read('three', 0).events.map((e) => text((e as { data: Uint8Array }).data))).toEqual(['after\n']);
  });

  it('goes on with a life another thread began, keeping what its replay records refer to', async () => {
    // A supervisor writing what a dead worker did not commit: same life, the worker's numbers.
    const limits: RecordLimits = { replay: { maxEvents: 100, maxBytes: 1 << 20 }, logs: { maxEntries: 1, maxBytes: 1 << 20 } };
    const worker = new EventRecorder(store, 'four', limits);
    for (let seq = 1; seq <= 3; seq++) worker.record(out('four', seq, `w${seq}\n`));
    await worker.flushed();
    const here = new EventRecorder(store, 'four', limits);
    here.record(out('four', 4, 'h4\n'), 4);
    here.record(exited('four', 5));
    await here.flushed();
    expect(new ReplayLog(store).read('four', 0).events.map((e) => e.seq)).toEqual([1, 2, 3, 4, 5]);
    expect(keys('logs', 'four')).toEqual([1, 2, 3, 4]);
    expect(new ExecLog(store, limits.logs).read('four').map((e) => text(e.data))).toEqual(['h4\n']);
  });
});
