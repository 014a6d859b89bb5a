// Exec output is recorded per sandbox and readable after the sandbox stopped. Real VM.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { lastValueFrom, toArray } from 'rxjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox } from '../../src/index.ts';
import { EventRecorder } from '../../src/events/EventRecorder.ts';
import { replayLimits } from '../../src/events/ReplayLog.ts';
import { ExecLog, execLogLimits, type LogEntry } from '../../src/logs/ExecLog.ts';
import { Store } from '../../src/store/Store.ts';
import type { Supervisor } from '../../src/supervisor/Supervisor.ts';
import { testSupervisor, uniqueName } from '../helpers/sandbox.ts';

const text = (es: LogEntry[], stream?: string) => es.filter((e) => !stream || e.stream === stream).map((e) => Buffer.from(e.data).toString()).join('');

describe('exec logs', () => {
  let sup: Supervisor;
  const name = uniqueName('logs');

  beforeAll(() => {
    sup = testSupervisor();
  });
  afterAll(async () => {
    await Sandbox.remove(name, { supervisor: sup }).catch(() => {});
    await sup?.close();
  });

  it('keeps every exec output after the sandbox stopped, with tail and since', async () => {
    const sb = await Sandbox.builder(name).supervisor(sup).create();
    await sb.shell('echo one; echo err >&2');
    // A follower from here on sees the last entry, then each new one once, and ends with the stop.
    const followed = lastValueFrom(sb.logs$({ tail: 1, intervalMs: 50 }).pipe(toArray()));
    // `since` cuts on the host's receive time: the cut is just after the last entry so far, and
    // the next exec starts once the clock has passed it (a condition, not a pause).
    const mid = Math.max(...(await sb.logs()).map((e) => e.ts)) + 1;
    while (Date.now() <= mid) await new Promise((r) => setImmediate(r));
    await sb.shell('echo two');
    await sb.stop();
    expect(text(await followed)).toBe('err\ntwo\n');

    const all = await Sandbox.logs(name, { supervisor: sup });
    expect(text(all, 'stdout')).toBe('one\ntwo\n');
    expect(text(all, 'stderr')).toBe('err\n');
    expect(new Set(all.map((e) => e.execId)).size).toBe(2);
    expect(text(await Sandbox.logs(name, { supervisor: sup, since: mid }))).toBe('two\n');
    expect(text(await Sandbox.logs(name, { supervisor: sup, tail: 1 }))).toBe('two\n');
    // A fresh process's view (another store on the same dir) reads the same.
    const other = Store.open(sup.stateDir);
    try {
      expect(text(new ExecLog(other).read(name), 'stdout')).toBe('one\ntwo\n');
    } finally {
      await other.close();
    }
    const handle = await Sandbox.get(name, { supervisor: sup });
    expect(text(await handle.logs({ tail: 1 }))).toBe('two\n');
  });

  it('goes with the sandbox when it is removed, and says so for an unknown one', async () => {
    // A sandbox of its own, with output of its own: nothing left by the test above.
    const name = uniqueName('logs-rm');
    const sb = await Sandbox.builder(name).supervisor(sup).create();
    await sb.shell('echo bye');
    await sb.stop();
    expect(text(await Sandbox.logs(name, { supervisor: sup }))).toBe('bye\n');
    await Sandbox.remove(name, { supervisor: sup });
    await expect(Sandbox.logs(name, { supervisor: sup })).rejects.toMatchObject({ code: 'E_SANDBOX_NOT_FOUND' });
  });

  it('rotates: the oldest output goes first when a sandbox passes its byte budget', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'corral-logs-'));
    const store = Store.open(dir);
    try {
      // Written as a sandbox's worker writes it; read before and after the commit.
      const rec = new EventRecorder(store, 'r', { replay: replayLimits(), logs: execLogLimits({ maxBytes: 1000 }) });
      const log = new ExecLog(store, { maxBytes: 1000 }, () => rec);
      for (let i = 0; i < 30; i++) rec.record({ type: 'exec.stdout', name: 'r', seq: i + 1, ts: i, execId: 1, data: new TextEncoder().encode(`${String(i).padStart(99, '.')}\n`) });
      expect(text(log.read('r'))).toBe(text(await rec.flushed().then(() => new ExecLog(store, { maxBytes: 1000 }).read('r'))));
      const kept = log.read('r');
      expect(kept.length).toBe(10);
      expect(text(kept).split('\n')[0]).toMatch(/\.20$/);
    } finally {
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
