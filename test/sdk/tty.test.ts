// tty execs in one real sandbox, shared by the tests of this file: the agent runs the command
// on a pseudo-terminal (openpty, setsid, TIOCSCTTY) and applies resizes with TIOCSWINSZ.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox } from '../../src/index.ts';
import type { Supervisor } from '../../src/supervisor/Supervisor.ts';
import { testSupervisor, uniqueName } from '../helpers/sandbox.ts';

describe('exec on a terminal', () => {
  let sup: Supervisor;
  let sb: Sandbox;

  beforeAll(async () => {
    sup = testSupervisor();
    sb = await Sandbox.builder(uniqueName('tty')).image('corral/base').memory(256).cpus(1).supervisor(sup).create();
  });
  afterAll(async () => {
    await sb?.stop();
    await sup?.close();
  });

  it('runs the command on a /dev/pts terminal of the asked size, stderr and all on stdout', async () => {
    const r = await sb.shell('tty; stty size; echo to-stderr >&2; echo $TERM', { tty: { cols: 132, rows: 43 } });
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^\/dev\/pts\/\d+\r\n43 132\r\nto-stderr\r\nxterm-256color\r\n$/);
    expect(r.stderr).toBe('');
    // without tty the same command has no terminal
    expect((await sb.shell('tty; true')).stdout).toBe('not a tty\n');
    expect((await sb.shell('stty size', { tty: true })).stdout).toBe('24 80\r\n');
  });

  it('resizes the terminal of a running exec, and the process gets SIGWINCH', async () => {
    // the loop ends when the test says so (or after ~30 s): a trap interrupts `sleep`, not the loop
    const script = 'trap "echo winch; stty size" WINCH; stty size; echo ready; i=0; while [ $i -lt 600 ] && [ ! -e /tmp/tty-done ]; do sleep 0.05; i=$((i+1)); done; echo bye';
    const stream = await sb.execStream('sh', ['-c', script], { tty: { cols: 80, rows: 24 } });
    let out = '';
    let resized = false;
    let told = false;
    let code: number | null | undefined;
    for await (const item of stream) {
      if (item.type === 'stdout') out += Buffer.from(item.data).toString();
      if (item.type === 'exited') code = item.code;
      if (!resized && out.includes('ready')) {
        resized = true;
        await stream.resize(100, 50);
      }
      if (!told && out.includes('50 100')) {
        told = true;
        await sb.fs().write('/tmp/tty-done', '');
      }
    }
    expect(code).toBe(0);
    expect(out).toBe('24 80\r\nready\r\nwinch\r\n50 100\r\nbye\r\n');
  });

  it('sends EOF as ^D on a terminal', async () => {
    const r = await sb.exec('cat', [], { tty: true, stdin: 'abc\n' });
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('abc');
  });

  it('rejects a bad tty option and a resize of an exec without one', async () => {
    await expect(sb.exec('true', [], { tty: { cols: 0, rows: 10 } })).rejects.toMatchObject({ code: 'E_INVALID_OPTION', message: expect.stringContaining('tty') });
    const s = await sb.execStream('sleep', ['5']);
    await expect(s.resize(80, 24)).rejects.toMatchObject({ code: 'E_ILLEGAL_STATE' });
    await s.kill();
    await s.exited;
  });
});
