/**
 * Validation of everything the runtime keeps in a state dir's LMDB environment: each sandbox
 * record, each replay log (seq gapless per sandbox, no duplicates), each exec log (numbers
 * gapless, each exec's chunks in order). Throws an Error naming the first bad entry.
 */
import type { StoredEvent } from '../../../src/events/EventRecorder.ts';
import type { LogEntry } from '../../../src/logs/ExecLog.ts';
import type { SandboxRecord } from '../../../src/store/Store.ts';
import { Store } from '../../../src/store/Store.ts';

const STATUSES = new Set(['creating', 'running', 'paused', 'draining', 'stopped']);
const REASONS = new Set([null, 'requested', 'killed', 'crashed', 'drained', 'max-duration', 'idle-timeout', 'boot-failed', 'guest-poweroff']);

function fail(what: string, detail: unknown): never {
  throw new Error(`${what}: ${JSON.stringify(detail, (_, v) => (v instanceof Uint8Array ? `<${v.byteLength} bytes>` : v))}`);
}

export function validateRecord(key: unknown, rec: SandboxRecord): void {
  const ok =
    typeof rec === 'object' && rec !== null && rec.name === key && typeof rec.config === 'object' && rec.config?.name === key &&
    STATUSES.has(rec.status) && typeof rec.state === 'string' && (rec.ownerPid === null || Number.isInteger(rec.ownerPid)) &&
    (rec.vmPid === null || Number.isInteger(rec.vmPid)) && REASONS.has(rec.stopReason) &&
    Number.isFinite(rec.createdAt) && Number.isFinite(rec.updatedAt);
  if (!ok) fail(`invalid sandbox record ${String(key)}`, rec);
}

/**
 * `[seq, event]` pairs of one sandbox in key order: consecutive seqs, each event valid. An
 * output event holds its bytes, or refers to the exec log entry that does (`logged` says
 * whether that entry exists).
 */
export function validateReplay(name: string, entries: Array<[number, StoredEvent]>, logged?: (n: number) => boolean): void {
  for (let i = 0; i < entries.length; i++) {
    const [seq, e] = entries[i]!;
    if (e?.name !== name || e.seq !== seq || typeof e.type !== 'string' || !Number.isFinite(e.ts)) fail(`invalid replay entry [${name}, ${seq}]`, e);
    if (i > 0 && seq !== entries[i - 1]![0] + 1) fail(`replay log of ${name} has a gap or duplicate`, entries.map(([s]) => s));
    if ((e.type === 'exec.stdout' || e.type === 'exec.stderr') && !('log' in e ? !logged || logged(e.log) : 'data' in e && e.data instanceof Uint8Array)) fail(`replay entry [${name}, ${seq}] lost its data`, e);
  }
}

/** `[n, entry]` pairs of one sandbox: consecutive n, each exec's chunks 1, 2, 3… in order. */
export function validateExecLog(name: string, entries: Array<[number, LogEntry]>): void {
  const lastChunk = new Map<number, number>();
  for (let i = 0; i < entries.length; i++) {
    const [n, e] = entries[i]!;
    if (!Number.isFinite(e?.ts) || !Number.isInteger(e.execId) || (e.stream !== 'stdout' && e.stream !== 'stderr') || !(e.data instanceof Uint8Array)) fail(`invalid exec log entry [${name}, ${n}]`, e);
    if (i > 0 && n !== entries[i - 1]![0] + 1) fail(`exec log of ${name} has a gap or duplicate`, entries.map(([k]) => k));
    const m = /^(.+) exec (\d+) chunk (\d+)\n$/.exec(new TextDecoder().decode(e.data));
    if (!m || m[1] !== name || Number(m[2]) !== e.execId) fail(`exec log entry [${name}, ${n}] has foreign data`, new TextDecoder().decode(e.data));
    const chunk = Number(m[3]);
    const prev = lastChunk.get(e.execId);
    // A writer killed mid-exec loses its uncommitted tail; its successor starts new execs.
    if (prev !== undefined && chunk !== prev + 1) fail(`exec ${e.execId} of ${name}: chunk ${chunk} after ${prev}`, null);
    lastChunk.set(e.execId, chunk);
  }
}

/** Opens the store of `stateDir` and validates all of it; returns what it counted. */
export async function checkStateDir(stateDir: string): Promise<{ records: number; events: number; logEntries: number }> {
  const store = Store.open(stateDir);
  try {
    const records = store.database<SandboxRecord, string>('sandboxes');
    let n = 0;
    for (const { key, value } of records.getRange()) validateRecord(key, value), n++;
    const group = <V>(db: string) => {
      const by = new Map<string, Array<[number, V]>>();
      for (const { key, value } of store.database<V, [string, number]>(db).getRange()) {
        if (!Array.isArray(key) || typeof key[0] !== 'string' || !Number.isInteger(key[1])) fail(`bad key in ${db}`, key);
        let list = by.get(key[0]);
        if (!list) by.set(key[0], (list = []));
        list.push([key[1], value]);
      }
      return by;
    };
    const logs = group<LogEntry>('logs');
    let events = 0;
    for (const [name, list] of group<StoredEvent>('events')) validateReplay(name, list, (n) => logs.get(name)?.some(([k]) => k === n) ?? false), (events += list.length);
    let logEntries = 0;
    for (const [name, list] of logs) validateExecLog(name, list), (logEntries += list.length);
    return { records: n, events, logEntries };
  } finally {
    await store.close();
  }
}

if (process.argv[1] && import.meta.url.endsWith(process.argv[1].split('/').pop()!) && process.argv[2]) {
  // As a process of its own: a fresh process must be able to open what the writers left.
  try {
    process.stdout.write(`${JSON.stringify(await checkStateDir(process.argv[2]))}\n`);
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n`);
    process.exitCode = 1;
  }
}
