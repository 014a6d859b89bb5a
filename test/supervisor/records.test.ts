// Where a sandbox's events and output are recorded: by the worker hosting it, not by the
// supervisor's thread; each chunk of output once; readable by a fresh process once the
// sandbox stopped. Real VM, real LMDB.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { lastValueFrom, toArray } from 'rxjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SandboxEvent } from '../../src/bus/events.ts';
import type { StoredEvent } from '../../src/events/EventRecorder.ts';
import { Sandbox } from '../../src/index.ts';
import type { Supervisor } from '../../src/supervisor/Supervisor.ts';
import { testSupervisor, uniqueName } from '../helpers/sandbox.ts';

const READER = fileURLToPath(new URL('../helpers/readRecords.ts', import.meta.url));
const WRITES = ['put', 'remove', 'putSync', 'removeSync'] as const;

/** Runs the reader in a process of its own and parses its line. */
function readInAnotherProcess(stateDir: string, name: string): Promise<{ replay: Array<[number, string, number | null]>; missed: number | null; logs: { stdout: number; stderr: number } }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', READER, stateDir, name], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.once('error', reject);
    child.once('exit', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`reader exited ${code}`))));
  });
}

describe("a sandbox's records", () => {
  let sup: Supervisor;
  const name = uniqueName('records');

  beforeAll(() => {
    sup = testSupervisor();
  });
  afterAll(async () => {
    await Sandbox.remove(name, { supervisor: sup }).catch(() => {});
    await sup?.close();
  });

  it("are written by its worker, none by the supervisor's thread, each chunk once, and read by another process", async () => {
    // Every LMDB database of this thread shares one prototype: count what this thread
    // writes to the replay buffer and the exec log (passing each call through).
    const proto = Object.getPrototypeOf(sup.store.database('events')) as Record<string, (...a: unknown[]) => unknown>;
    const writes: string[] = [];
    const originals = WRITES.map((m) => [m, proto[m]!] as const);
    for (const [m, original] of originals) {
      proto[m] = function (this: { name?: string }, ...args: unknown[]) {
        if (this.name === 'events' || this.name === 'logs') writes.push(`${this.name}.${m}`);
        return original.apply(this, args);
      };
    }
    let sb: Sandbox | undefined;
    try {
      sb = await Sandbox.builder(name).supervisor(sup).create();
      for (let i = 0; i < 3; i++) await sb.exec('true');
      const r = await sb.shell('head -c 300000 /dev/zero; echo err >&2');
      expect(r.stdoutBytes.length).toBe(300_000);
      // Readable here at once: held by the supervisor until the worker's write commits.
      expect((await sb.logs()).reduce((n, e) => n + (e.stream === 'stdout' ? e.data.byteLength : 0), 0)).toBe(300_000);
      await sb.stop();
    } finally {
      for (const [m, original] of originals) proto[m] = original;
    }
    expect(writes).toEqual([]);

    const replayed: SandboxEvent[] = await lastValueFrom(sup.events({ name, since: 0 }).pipe(toArray()));
    const outBytes = (es: readonly SandboxEvent[], type: string) => es.reduce((n, e) => n + (e.type === type && 'data' in e ? e.data.byteLength : 0), 0);
    expect(outBytes(replayed, 'exec.stdout')).toBe(300_000);
    expect(outBytes(replayed, 'exec.stderr')).toBe(4);
    expect(replayed.map((e) => e.seq)).toEqual(replayed.map((_, i) => i + 1));
    expect(replayed.at(-1)?.type).toBe('sandbox.stopped');

    // The replay buffer's output records hold no bytes: they refer to the exec log's entries.
    const stored = [...sup.store.database<StoredEvent, [string, number]>('events').getRange({ start: [name, 0], end: [name, Number.MAX_SAFE_INTEGER] })].map((x) => x.value);
    const output = stored.filter((e) => e.type === 'exec.stdout' || e.type === 'exec.stderr');
    expect(output.length).toBeGreaterThan(0);
    for (const e of output) expect(e).not.toHaveProperty('data');
    expect(output.every((e) => 'log' in e)).toBe(true);

    const other = await readInAnotherProcess(sup.stateDir, name);
    expect(other.missed).toBeNull();
    expect(other.replay.map(([seq, type, bytes]) => [seq, type, bytes])).toEqual(replayed.map((e) => [e.seq, e.type, 'data' in e && e.data instanceof Uint8Array ? e.data.byteLength : null]));
    expect(other.logs).toEqual({ stdout: 300_000, stderr: 4 });
  });
});
