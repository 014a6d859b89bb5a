// Background commands on a real VM (E2B's commands.run({ background }), list, connect): the
// handle holds nothing, a command nobody reads is never held back, the output is kept and
// read later by id from where a reader left off, and a command is killed through a handle
// attached later. Across processes: test/scenarios/scripts/background.mjs.
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { ExecStream, Sandbox as SandboxT } from '../../src/index.ts';
import { Sandbox } from '../../src/index.ts';
import type { Supervisor } from '../../src/supervisor/Supervisor.ts';
import { testSupervisor, uniqueName } from '../helpers/sandbox.ts';

/** stdout of a stream until it exits, and the exit code. */
async function drain(s: ExecStream): Promise<{ out: string; code: number | null }> {
  let out = '';
  let code: number | null = null;
  for await (const item of s) {
    if (item.type === 'stdout') out += Buffer.from(item.data).toString();
    if (item.type === 'exited') code = item.code;
  }
  return { out, code };
}

describe('background commands', () => {
  let sup: Supervisor;
  let sb: SandboxT;
  beforeAll(async () => {
    sup = testSupervisor();
    sb = await Sandbox.builder(uniqueName('bg')).memory(128).supervisor(sup).create();
  });
  afterAll(async () => {
    await sb?.stop();
    await sup?.close();
  });

  it('lists a background command, and reads it by id from where a reader left off', async () => {
    const job = await sb.execStream('sh', ['-c', 'echo one; read a; echo two; read b; echo three'], { background: true, stdin: 'pipe' });
    expect(job.id).toBeGreaterThan(0);
    await vi.waitFor(async () => expect((await sb.execs()).find((c) => c.id === job.id)).toMatchObject({ background: true, stdin: true, argv: ['sh', '-c', expect.any(String)], pid: expect.any(Number) }));
    // A first reader takes "one", then stops reading.
    const first = await sb.attach(job.id);
    const it = first[Symbol.asyncIterator]();
    let seen = '';
    while (!seen.includes('one\n')) {
      const { value } = await it.next();
      if (value?.type === 'stdout') seen += Buffer.from(value.data).toString();
    }
    // Breaking out lets go of the command without ending it.
    await it.return?.();
    await expect(first.exited).rejects.toMatchObject({ code: 'E_CLOSED' });
    const cursor = first.lastSeq;
    expect(cursor).toBeGreaterThan(0);
    await job.write('a\n');
    // A later reader, from that cursor: what came after, nothing twice.
    const later = await sb.attach(job.id, { since: cursor });
    await later.write('b\n');
    expect(await drain(later)).toEqual({ out: 'two\nthree\n', code: 0 });
    expect((await sb.execs()).some((c) => c.id === job.id)).toBe(false);
  });

  it('never holds back a command nobody reads, and kills one through a handle attached later', async () => {
    const flood = await sb.execStream('head', ['-c', String(8 * 1024 * 1024), '/dev/zero'], { background: true });
    // Nobody reads: the command still runs to its end (its output waits in the replay buffer, bounded).
    await vi.waitFor(async () => expect((await sb.execs()).some((c) => c.id === flood.id)).toBe(false), { timeout: 60_000, interval: 100 });
    expect((await flood.exited).code).toBe(0);

    const forever = await sb.execStream('sleep', ['600'], { background: true });
    const handle = await sb.attach(forever.id);
    await handle.kill(9);
    expect(await handle.exited).toMatchObject({ signal: 9 });
  });

  it('names what is wrong', async () => {
    await expect(sb.attach(123456)).rejects.toMatchObject({ code: 'E_EXEC_NOT_FOUND', message: expect.stringContaining('sb.execs()') });
    await expect(sb.execStream('sleep', ['1'], { background: true, timeoutMs: 100 })).rejects.toMatchObject({ code: 'E_INVALID_OPTION', message: expect.stringContaining('timeoutMs') });
    await expect(sb.attach(-1)).rejects.toMatchObject({ code: 'E_INVALID_OPTION', message: expect.stringContaining('id') });
  });
});
