// A worker of the pool that dies fails only its own sandboxes: they are stopped as crashed
// with E_WORKER_CRASHED (record, sandbox.failed + sandbox.stopped, pending calls reject),
// their qemu processes are gone, the other worker's sandbox runs on and the pool starts a
// replacement worker. Real VMs; the crash itself is a test-only hook that makes the worker
// throw at top level, as a bug in its code would.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SandboxEvent } from '../../src/bus/events.ts';
import { Sandbox } from '../../src/sdk/Sandbox.ts';
import { Supervisor } from '../../src/supervisor/Supervisor.ts';
import { alive, uniqueName, until } from '../helpers/sandbox.ts';

describe('a crashed pool worker', () => {
  let sup: Supervisor;
  beforeAll(() => {
    sup = new Supervisor({ stateDir: process.env.CORRAL_STATE_DIR!, workers: 2 });
  });
  afterAll(async () => {
    for (const r of sup.list()) if (r.name.startsWith('crash-')) await Sandbox.remove(r.name, { supervisor: sup }).catch((e: Error) => console.warn(e.message));
    await sup.close();
  });

  it('stops its own sandboxes as crashed, kills their VMs, and leaves the other worker\'s running', async () => {
    const [a, b, c] = ['crash-a', 'crash-b', 'crash-c'].map(uniqueName) as [string, string, string];
    const sa = await Sandbox.builder(a).supervisor(sup).create();
    const sb = await Sandbox.builder(b).supervisor(sup).create();
    const sc = await Sandbox.builder(c).supervisor(sup).create();
    const [ca, cb, cc] = [a, b, c].map((n) => sup.get(n)!);
    // The least-loaded worker takes each create: a and c share one worker, b has the other.
    expect(ca!.threadId).toBe(cc!.threadId);
    expect(cb!.threadId).not.toBe(ca!.threadId);
    expect(sup.pool.loads.sort()).toEqual([1, 2]);

    const pids = await Promise.all([sa, sc].map(async (s) => (await s.info()).pid!));
    const seen: SandboxEvent[] = [];
    const sub = sup.events$.subscribe((e) => {
      if (e.name === a || e.name === c) seen.push(e);
    });
    const running = await sa.execStream('sh', ['-c', 'while :; do sleep 0.1; done']);
    const execFailed = running.exited.then(() => undefined, (e: Error) => e);
    // A call in flight on the worker when it dies (stopped() answers only once a stops).
    const pending = ca!.api.stopped().then(() => undefined, (e: Error) => e);

    await ca!.crashWorkerForTest();

    expect(await pending).toMatchObject({ code: 'E_WORKER_CRASHED' });
    expect(await execFailed).toMatchObject({ code: 'E_VM_CRASHED' });
    await until(() => seen.filter((e) => e.type === 'sandbox.stopped').length === 2, 10_000, 'sandbox.stopped of a and c');
    sub.unsubscribe();
    for (const n of [a, c]) {
      const failed = seen.find((e) => e.name === n && e.type === 'sandbox.failed');
      expect(failed).toMatchObject({ error: { code: 'E_WORKER_CRASHED' } });
      expect(seen.find((e) => e.name === n && e.type === 'sandbox.stopped')).toMatchObject({ reason: 'crashed', error: { code: 'E_WORKER_CRASHED' } });
      expect(sup.store.getSandbox(n)).toMatchObject({ status: 'stopped', stopReason: 'crashed' });
      expect(sup.get(n)).toBeUndefined();
    }
    // Their qemu processes went with the worker's thread (setpriv --pdeathsig KILL).
    await until(() => pids.every((p) => !alive(p)), 10_000, 'the crashed worker\'s qemu processes to end');
    // A later call on a lost sandbox rejects at once with the same code.
    await expect(ca!.api.info()).rejects.toMatchObject({ code: 'E_WORKER_CRASHED' });
    expect(await sc.wait()).toMatchObject({ status: 'stopped', stopReason: 'crashed' });

    // The other worker's sandbox carries on.
    expect((await sb.exec('echo', ['still here'])).stdout).toBe('still here\n');
    // The pool replaces the worker, and a new sandbox runs.
    await until(() => sup.pool.workerCount === 2, 30_000, 'a replacement worker');
    const d = uniqueName('crash-d');
    const sd = await Sandbox.builder(d).supervisor(sup).create();
    expect((await sd.exec('echo', ['new'])).stdout).toBe('new\n');
    // And a crashed sandbox starts again, from its record.
    const again = await Sandbox.start(a, { supervisor: sup });
    expect((await again.exec('echo', ['back'])).stdout).toBe('back\n');
    await Promise.all([sb.stop(), sd.stop(), again.stop()]);
  });
});
