// The `corral` CLI with --json, as a script would use it: each command a fresh process
// (bin/corral.mjs), sandboxes detached so they outlive each invocation. Real VMs.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { BIN, corral, corralLines, corralWith } from '../helpers/cli.ts';
import { uniqueName } from '../helpers/sandbox.ts';

describe('the corral CLI', () => {
  const name = uniqueName('cli');
  afterAll(async () => {
    await corral('kill', name);
    await corral('rm', name);
  });

  it('drives a detached sandbox through its life with --json and stable exit codes', async () => {
    const created = await corral('create', name, '--label', 'made-by=cli', '--env', 'GREETING=hi');
    expect(created.code).toBe(0);
    expect(created.json).toMatchObject({ name, status: 'running' });
    expect(await corral('create', name)).toMatchObject({ code: 5, json: { error: { code: 'E_SANDBOX_EXISTS' } } });
    const follower = corralLines('logs', '-f', name); // another process, reading the output as the host process records it

    const ex = await corral('exec', name, '--', 'sh', '-c', 'echo $GREETING; echo oops >&2; exit 3');
    expect(ex.code).toBe(3);
    expect(ex.json).toMatchObject({ code: 3, stdout: 'hi\n', stderr: 'oops\n', reason: 'exited' });
    // --tty: the command sees a terminal, and this process's stdin (a pipe here) reaches it.
    const tty = await corralWith('hello\n', 'exec', name, '--tty', '--user', '65534', '--', 'sh', '-c', 'test -t 0 && echo on-a-tty; id -u; read x; echo "got $x"; exit 4');
    expect(tty.code).toBe(4);
    expect(tty.json.stdout).toMatch(/on-a-tty\r\n65534\r\n[^]*got hello\r\n/);
    await copiesBothWays(name);
    await ttyOnATerminal(name);

    const ls = await corral('ls', '--label', 'made-by=cli');
    expect(ls.code).toBe(0);
    expect(ls.json).toEqual([expect.objectContaining({ name, status: 'running', detached: true })]);

    expect(await corral('pause', name)).toMatchObject({ code: 0, json: { status: 'paused' } });
    expect(await corral('exec', name, '--', 'true')).toMatchObject({ code: 125, json: { error: { code: 'E_ILLEGAL_STATE' } } });
    expect(await corral('resume', name)).toMatchObject({ code: 0, json: { status: 'running' } });
    expect(await corral('inspect', name)).toMatchObject({ code: 0, json: { name, status: 'running', accel: expect.any(String) } });

    expect(await corral('stop', name)).toMatchObject({ code: 0, json: { status: 'stopped', stopReason: 'requested' } });
    expect(await corral('pause', name)).toMatchObject({ code: 4, json: { error: { code: 'E_ILLEGAL_STATE' } } });
    const logs = await corral('logs', name);
    const entries = logs.json.map((e: { stream: string; text: string }) => [e.stream, e.text]);
    expect(entries.slice(0, 2)).toEqual([
      ['stdout', 'hi\n'],
      ['stderr', 'oops\n'],
    ]);
    // logs -f printed the same entries, each once, and ended by itself when the sandbox stopped.
    const followed = await follower;
    expect(followed.code).toBe(0);
    expect(followed.lines.map((e) => [e.stream, e.text])).toEqual(entries);

    expect(await corral('rm', name)).toMatchObject({ code: 0, json: { removed: name } });
    expect(await corral('inspect', name)).toMatchObject({ code: 3, json: { error: { code: 'E_SANDBOX_NOT_FOUND' } } });
  });

  /**
   * `corral exec --tty` on a real local terminal: a pty from Python's pty module (Node has no
   * pty of its own). The guest sees the terminal's size and then its new size after SIGWINCH;
   * typed input reaches it unechoed by the local terminal (raw mode), so it shows once.
   */
  async function ttyOnATerminal(sandbox: string): Promise<void> {
    const py = String.raw`
import os, pty, sys, fcntl, termios, struct, signal, select
def size(fd, rows, cols): fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack('HHHH', rows, cols, 0, 0))
pid, fd = pty.fork()
if pid == 0:
    size(0, 30, 100)
    os.execv(sys.argv[1], sys.argv[1:])
out = b''
def until(s):
    global out
    while s not in out:
        select.select([fd], [], [])
        try: out += os.read(fd, 4096)
        except OSError: return
until(b'30 100')
size(fd, 40, 120); os.kill(pid, signal.SIGWINCH)
until(b'40 120')
os.write(fd, b'hi\r')
until(b'x=hi')
until(b'never: read to the end')
_, st = os.waitpid(pid, 0)
sys.stdout.write(out.decode('utf8', 'replace') + '\nEXIT %d' % os.waitstatus_to_exitcode(st))
`;
    const guest = 'stty size; while [ "$(stty size)" = "30 100" ]; do sleep 0.1; done; stty size; read x; echo "x=$x"; exit 3';
    const out = await new Promise<string>((resolve, reject) =>
      execFile('python3', ['-c', py, process.execPath, BIN, 'exec', sandbox, '--tty', '--', 'sh', '-c', guest], { env: process.env, timeout: 120_000 }, (err, stdout) =>
        err ? reject(err) : resolve(stdout),
      ),
    );
    expect(out).toMatch(/^30 100\r+\n40 120\r+\nhi\r+\nx=hi\r+\n\nEXIT 3$/);
  }

  /** `corral cp` of a directory tree into the sandbox and back out. */
  async function copiesBothWays(sandbox: string): Promise<void> {
    const dir = mkdtempSync(join(tmpdir(), 'corral-cp-'));
    try {
      const src = join(dir, 'tree');
      mkdirSync(join(src, 'sub'), { recursive: true });
      const blob = randomBytes(300_000);
      writeFileSync(join(src, 'blob.bin'), blob);
      writeFileSync(join(src, 'sub', 'note.txt'), 'hi\n');
      // Into an existing directory: lands under the source's own name, like docker cp.
      expect(await corral('cp', src, `${sandbox}:/tmp`)).toMatchObject({ code: 0, json: { direction: 'in', to: '/tmp/tree' } });
      const out = join(dir, 'out');
      mkdirSync(out);
      expect(await corral('cp', `${sandbox}:/tmp/tree`, out)).toMatchObject({ code: 0, json: { direction: 'out', to: join(out, basename(src)) } });
      expect(readFileSync(join(out, 'tree', 'blob.bin')).equals(blob)).toBe(true);
      expect(readFileSync(join(out, 'tree', 'sub', 'note.txt'), 'utf8')).toBe('hi\n');
      expect(await corral('cp', `${sandbox}:/no/such`, out)).toMatchObject({ code: 1, json: { error: { code: 'E_FS' } } });
      expect(await corral('cp', src, out)).toMatchObject({ code: 2, json: { error: { code: 'E_USAGE' } } });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }

  it('runs a throwaway sandbox for one command and exits with its code', async () => {
    const r = await corral('run', '--user', '65534', '--', 'sh', '-c', 'echo ran; id -u; exit 7');
    expect(r).toMatchObject({ code: 7, json: { code: 7, stdout: 'ran\n65534\n' } });
    const left = (await corral('ls')).json as Array<{ name: string }>;
    expect(left.filter((s) => s.name.startsWith('run-'))).toEqual([]);
  });

  it('manages named volumes', async () => {
    const vol = uniqueName('clivol');
    expect(await corral('volume', 'create', vol)).toMatchObject({ code: 0, json: { name: vol, usedBy: [] } });
    expect((await corral('volume', 'ls')).json).toContainEqual(expect.objectContaining({ name: vol }));
    expect(await corral('volume', 'inspect', vol)).toMatchObject({ code: 0, json: { name: vol, path: expect.stringContaining(vol) } });
    expect(await corral('volume', 'rm', vol)).toMatchObject({ code: 0, json: { removed: vol } });
    expect(await corral('volume', 'inspect', vol)).toMatchObject({ code: 3, json: { error: { code: 'E_VOLUME_NOT_FOUND' } } });
    expect(await corral('volume', 'create', 'Bad/Name')).toMatchObject({ code: 2, json: { error: { code: 'E_INVALID_OPTION' } } });
    expect(await corral('volume', 'frob')).toMatchObject({ code: 2, json: { error: { code: 'E_USAGE' } } });
  });

  it('says what is wrong with a command line, with exit code 2', async () => {
    expect(await corral('frobnicate')).toMatchObject({ code: 2, json: { error: { code: 'E_USAGE' } } });
    expect(await corral('exec', name)).toMatchObject({ code: 125 });
    expect(await corral('stop', '--bogus', name)).toMatchObject({ code: 2, json: { error: { code: 'E_USAGE' } } });
  });
});
