/**
 * Checks, from a process of its own, that a state dir's store is whole after a worker was
 * ended while it wrote a sandbox's records: every record of `name` reads, the replay
 * buffer's seqs have no hole, each output record's exec log entry is there, and a write
 * transaction commits. Prints one JSON line; exits non-zero if the store cannot be read or
 * written.
 *
 *   node --import tsx test/helpers/checkStore.ts <stateDir> <name>
 */
import type { StoredEvent } from '../../src/events/EventRecorder.ts';
import type { LogEntry } from '../../src/logs/ExecLog.ts';
import { Store } from '../../src/store/Store.ts';

type Key = [string, number];
const [stateDir, name] = process.argv.slice(2);
const store = Store.open(stateDir!);
try {
  const range = { start: [name!, 0] as Key, end: [name!, Number.MAX_SAFE_INTEGER] as Key };
  const events = [...store.database<StoredEvent, Key>('events').getRange(range)];
  const logs = store.database<LogEntry, Key>('logs');
  const seqs = events.map((e) => e.key[1]);
  const holes = seqs.filter((s, i) => i > 0 && s !== seqs[i - 1]! + 1).length;
  const outputs = events.filter((e) => 'log' in e.value);
  const dangling = outputs.filter((e) => !logs.get([name!, (e.value as { log: number }).log])).length;
  const logEntries = logs.getKeysCount(range);
  // A write of its own: a store broken by a thread ended mid-transaction fails here
  // (MDB_BAD_TXN, "mdb_page_touch no parent").
  const scratch = store.database<number, string>('check-store');
  await scratch.put(`${name}-${process.pid}`, Date.now());
  await scratch.remove(`${name}-${process.pid}`);
  process.stdout.write(`${JSON.stringify({ events: events.length, outputs: outputs.length, holes, dangling, logEntries, types: [...new Set(events.map((e) => e.value.type))] })}\n`);
} finally {
  await store.close();
}
