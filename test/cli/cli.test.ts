// The `corral` CLI with --json, as a script would use it: each command a fresh process
// (bin/corral.mjs), sandboxes detached so they outlive each invocation. Real VMs.
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { BIN, corral, corralLines, corralWith, plainCorral } from '../helpers/cli.ts';
import { uniqueName } from '../helpers/sandbox.ts';
import { startRegistry, testImages } from '../image/helpers/registry.ts';

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
    // The terminal echoes the typed-ahead line as soon as it arrives, which may be before or
    // after any line of output (CI saw it before `id -u`'s): take the echo out, then compare.
    const lines = String(tty.json.stdout).split('\r\n');
    expect(lines).toContain('hello');
    lines.splice(lines.indexOf('hello'), 1);
    expect(lines).toEqual(['on-a-tty', '65534', 'got hello', '']);
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

  it('saves a running sandbox as a snapshot, starts another from it, and moves it between state dirs with export and import', async () => {
    const name = uniqueName('clisnap');
    const copy = uniqueName('clisnap-copy');
    const dir = mkdtempSync(join(tmpdir(), 'corral-cli-snap-'));
    try {
      expect(await corral('create', name, '--memory', '128')).toMatchObject({ code: 0 });
      expect(await corral('exec', name, '--', 'sh', '-c', 'echo before-save > /root/mark')).toMatchObject({ code: 0 });
      expect(await corral('snapshot', 'save', name, `${name}-s`)).toMatchObject({ code: 0, json: { name: `${name}-s`, source: name } });
      expect(await corral('snapshot', 'save', name, `${name}-s`)).toMatchObject({ code: 5, json: { error: { code: 'E_SNAPSHOT_EXISTS' } } });
      expect(await corral('snapshot', 'save', uniqueName('nosuch'), 'x')).toMatchObject({ code: 3, json: { error: { code: 'E_SANDBOX_NOT_FOUND' } } });
      expect(await corral('snapshot', 'save', name)).toMatchObject({ code: 2, json: { error: { code: 'E_USAGE', message: expect.stringContaining('save SANDBOX SNAPSHOT') } } });
      // The saved sandbox ran on; a new one starts where it was.
      expect(await corral('exec', name, '--', 'true')).toMatchObject({ code: 0 });
      expect(await corral('create', copy, '--from-snapshot', `${name}-s`)).toMatchObject({ code: 0, json: { name: copy, status: 'running' } });
      expect(await corral('exec', copy, '--', 'cat', '/root/mark')).toMatchObject({ code: 0, json: { stdout: 'before-save\n' } });
      expect(await corral('create', uniqueName('clisnap-none'), '--from-snapshot', 'no-such-snapshot')).toMatchObject({ code: 3, json: { error: { code: 'E_SNAPSHOT_NOT_FOUND' } } });

      const file = join(dir, 's.corral');
      expect((await corral('snapshot', 'ls')).json).toContainEqual(expect.objectContaining({ name: `${name}-s`, source: name }));
      expect(await corral('snapshot', 'export', `${name}-s`, file)).toMatchObject({ code: 0, json: { file, bytes: expect.any(Number) } });
      expect(await corral('--state-dir', join(dir, 'other'), 'snapshot', 'import', file, '--name', 'there')).toMatchObject({ code: 0, json: { name: 'there', source: name } });
      expect(await corral('--state-dir', join(dir, 'other'), 'snapshot', 'import', join(dir, 'missing.corral'))).toMatchObject({ code: 2, json: { error: { code: 'E_INVALID_OPTION' } } });
      expect(await corral('snapshot', 'rm', `${name}-s`)).toMatchObject({ code: 0, json: { removed: `${name}-s` } });
      expect(await corral('snapshot', 'export', name)).toMatchObject({ code: 2, json: { error: { code: 'E_USAGE' } } });
    } finally {
      for (const n of [name, copy]) {
        await corral('kill', n);
        await corral('rm', n);
      }
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('starts a stopped sandbox again, and kills it', async () => {
    const own = uniqueName('cli-start');
    expect(await corral('create', own)).toMatchObject({ code: 0, json: { status: 'running' } });
    try {
      expect(await corral('start', own)).toMatchObject({ code: 4, json: { error: { code: 'E_ILLEGAL_STATE' } } });
      expect(await corral('exec', own, '--', 'sh', '-c', 'echo kept > /root/mark')).toMatchObject({ code: 0 });
      expect(await corral('stop', own)).toMatchObject({ code: 0, json: { status: 'stopped', stopReason: 'requested' } });
      // a new process boots it, detached again: a third one finds it running
      expect(await corral('start', own)).toMatchObject({ code: 0, json: { name: own, status: 'running' } });
      expect((await corral('ls')).json).toContainEqual(expect.objectContaining({ name: own, status: 'running', detached: true }));
      // what the guest wrote before a graceful stop of a detached sandbox is on its disk again
      expect(await corral('exec', own, '--', 'cat', '/root/mark')).toMatchObject({ code: 0, json: { stdout: 'kept\n' } });
      expect(await corral('kill', own)).toMatchObject({ code: 0, json: { status: 'stopped', stopReason: 'killed' } });
      expect(await corral('kill', own)).toMatchObject({ code: 0, json: { status: 'stopped', stopReason: 'killed' } }); // idempotent
    } finally {
      await corral('kill', own);
      expect(await corral('rm', own)).toMatchObject({ code: 0 });
    }
    expect(await corral('start', own)).toMatchObject({ code: 3, json: { error: { code: 'E_SANDBOX_NOT_FOUND' } } });
    expect(await corral('start')).toMatchObject({ code: 2, json: { error: { code: 'E_USAGE' } } });
  });

  it('pulls an image from a registry with progress, lists it in images, and names what is missing', async () => {
    const reg = await startRegistry('none');
    const sd = mkdtempSync(join(tmpdir(), 'corral-cli-images-'));
    try {
      const digest = await reg.push(join(testImages().dir, 'busybox'), 'test/cli-pull', 'v1');
      const ref = `${reg.host}/test/cli-pull:v1`;
      expect(await corral('--state-dir', sd, 'images')).toMatchObject({ code: 0, json: [] });
      expect(await corral('--state-dir', sd, 'pull', ref)).toMatchObject({ code: 0, json: { ref, digest, layers: 1, pulled: true } });
      const images = await corral('--state-dir', sd, 'images');
      expect(images.code).toBe(0);
      expect(images.json).toEqual([expect.objectContaining({ digest, tags: [ref] })]);
      // without --json: the progress goes to stderr, the pinned reference to stdout
      const plain = await plainCorral('--state-dir', sd, 'pull', ref);
      expect(plain).toMatchObject({ code: 0, stdout: `${ref}@${digest}\n` });
      expect(plain.stderr).toContain(`pulling ${ref}`);
      const table = await plainCorral('--state-dir', sd, 'images');
      expect(table.stdout.split('\n')[0]).toMatch(/^REFERENCE\s+DIGEST\s+SIZE$/);
      expect(table.stdout).toContain(ref);
      expect(await corral('--state-dir', sd, 'pull', `${reg.host}/test/no-such:v1`)).toMatchObject({ code: 3, json: { error: { code: 'E_IMAGE_NOT_FOUND' } } });
      expect(await corral('--state-dir', sd, 'pull')).toMatchObject({ code: 2, json: { error: { code: 'E_USAGE' } } });
    } finally {
      await reg.close();
      rmSync(sd, { recursive: true, force: true });
    }
  });

  it('serves the HTTP API until SIGTERM, asking for the token it was given', async () => {
    const token = 'cli-serve-token-0123456789';
    const server = await serving('serve', '--port', '0', '--token', token);
    try {
      expect(server.first.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
      const list = await fetch(`${server.first.url}/v1/sandboxes`, { headers: { authorization: `Bearer ${token}` } });
      expect(list.status).toBe(200);
      expect(Array.isArray(await list.json())).toBe(true);
      const refused = await fetch(`${server.first.url}/v1/sandboxes`);
      await refused.body?.cancel();
      expect(refused.status).toBe(401);
    } finally {
      server.child.kill('SIGTERM');
    }
    expect(await server.exited).toEqual({ code: 0, signal: null });
    expect(await corral('serve', '--port', 'abc')).toMatchObject({ code: 2, json: { error: { code: 'E_INVALID_OPTION', message: 'invalid option --port: an integer from 0 to 65535 (got "abc")' } } });
    expect(await corral('serve', '--host', '0.0.0.0', '--port', '0')).toMatchObject({ code: 2, json: { error: { code: 'E_INVALID_OPTION', message: expect.stringContaining('needs a token') } } });
  });

  it('serves the inspector page on loopback until Ctrl-C', async () => {
    const ui = await serving('ui');
    try {
      expect(ui.first.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/ui$/);
      const page = await fetch(ui.first.url);
      expect(page.status).toBe(200);
      expect(page.headers.get('content-type')).toContain('text/html');
      expect(await page.text()).toContain('<title>corral inspector</title>');
      const app = await fetch(new URL('/ui/app.js', ui.first.url));
      expect(app.status).toBe(200);
      await app.body?.cancel();
    } finally {
      ui.child.kill('SIGINT');
    }
    expect(await ui.exited).toEqual({ code: 0, signal: null });
  });

  it('says what is wrong with a command line, with exit code 2', async () => {
    expect(await corral('frobnicate')).toMatchObject({ code: 2, json: { error: { code: 'E_USAGE' } } });
    // No command after --: a bad command line, exit 2 for exec too (125 is for corral failing once the command line was understood).
    expect(await corral('exec', name)).toMatchObject({ code: 2, json: { error: { code: 'E_USAGE' } } });
    expect(await corral('stop', '--bogus', name)).toMatchObject({ code: 2, json: { error: { code: 'E_USAGE' } } });
  });
});

/** `corral --json <args>` left running (serve, ui): the line it printed first, and its exit. */
async function serving(...args: string[]) {
  const child = spawn(process.execPath, [BIN, '--json', ...args], { env: process.env, stdio: ['ignore', 'pipe', 'inherit'] });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const first = await new Promise<{ url: string }>((resolve, reject) => {
    let buf = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      buf += d;
      if (buf.includes('\n')) resolve(JSON.parse(buf.split('\n')[0]!) as { url: string });
    });
    void exited.then((e) => reject(new Error(`corral ${args[0]} exited before printing its url (${JSON.stringify(e)})`)));
  });
  return { child, first, exited };
}
