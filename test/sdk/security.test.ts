// Security defaults: the state dir and every socket are private to their user, and a
// registry password never shows in a process's argv, the runtime's log, an event or a file
// of the state dir. Real registry (htpasswd Basic auth), real VM; the detached host's socket
// is checked with the fake qemu of test/helpers/fake-qemu.mjs (it is the host process that
// matters there, not the guest).
import { chmodSync, chownSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { spawn } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox } from '../../src/index.ts';
import { Supervisor } from '../../src/supervisor/Supervisor.ts';
import { startRegistry, testImages, type TestRegistry } from '../image/helpers/registry.ts';
import { until, uniqueName, withFakeQemu } from '../helpers/sandbox.ts';

const CHILD = fileURLToPath(new URL('../helpers/child-sandbox.ts', import.meta.url));

const mode = (p: string) => statSync(p).mode & 0o777;
const dirs: string[] = [];
function freshDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'corral-test-sec-'));
  dirs.push(d);
  return d;
}

/** Every file under `dir` whose name matches, recursively. */
function filesUnder(dir: string, match: (name: string) => boolean): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...filesUnder(p, match));
    else if (e.isFile() && match(e.name)) out.push(p);
  }
  return out;
}

/** Command lines of every process that contain `needle`. */
function argvContaining(needle: string): string[] {
  const hits: string[] = [];
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const argv = readFileSync(`/proc/${p}/cmdline`, 'utf8');
      if (argv.includes(needle)) hits.push(`${p}: ${argv.replaceAll('\0', ' ').slice(0, 200)}`);
    } catch {
      /* gone meanwhile */
    }
  }
  return hits;
}

afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe('the state dir', () => {
  it('is created 0700, and an existing looser one (and its subdirectories) is tightened', async () => {
    const fresh = join(freshDir(), 'state');
    await new Supervisor({ stateDir: fresh }).close();
    expect(mode(fresh)).toBe(0o700);

    const loose = freshDir();
    mkdirSync(join(loose, 'run'), { mode: 0o777 });
    mkdirSync(join(loose, 'sandboxes'), { mode: 0o755 });
    // mkdir's mode goes through the umask: set them exactly.
    for (const p of [loose, join(loose, 'run'), join(loose, 'sandboxes')]) chmodSync(p, 0o755);
    await new Supervisor({ stateDir: loose }).close();
    expect([mode(loose), mode(join(loose, 'run')), mode(join(loose, 'sandboxes'))]).toEqual([0o700, 0o700, 0o700]);
  });

  it("is refused, naming both users, when it belongs to another user", (ctx) => {
    if (process.getuid?.() !== 0) return ctx.skip('chown to another user needs root');
    const theirs = freshDir();
    chownSync(theirs, 65534, 65534);
    expect(() => new Supervisor({ stateDir: theirs })).toThrow(expect.objectContaining({ code: 'E_STORE', message: expect.stringMatching(/belongs to uid 65534, not to this user \(uid 0\)/) }));
  });
});

describe('secrets and sockets of a running sandbox', () => {
  let reg: TestRegistry;
  let stateDir: string;
  let sup: Supervisor;
  beforeAll(async () => {
    reg = await startRegistry('basic');
    await reg.push(join(testImages().dir, 'busybox'), 'test/busybox', 'v1');
    stateDir = freshDir();
    sup = new Supervisor({ stateDir });
  });
  afterAll(async () => {
    await sup?.close();
    await reg?.close();
  });

  it("never shows the registry password in argv, logs, events or the state dir; the VM's sockets do not outlive its boot", async () => {
    const password = reg.password;
    // A process of its own, so that its whole stderr (the runtime log of its sandbox
    // worker, at trace level) is ours to read; the password reaches it in its environment.
    const child = spawn(process.execPath, ['--import', 'tsx', CHILD, 'registry', `${reg.host}/test/busybox:v1`, reg.user], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...process.env, CORRAL_STATE_DIR: stateDir, CORRAL_TEST_SECRET: password },
    });
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d) => (stdout += d));
    child.stderr!.on('data', (d) => (stderr += d));
    const exited = new Promise<number | null>((r) => child.once('exit', r));
    try {
      await Promise.race([until(() => stdout.includes('"vmPid"'), 120_000, 'the child sandbox'), exited.then((c) => Promise.reject(new Error(`child exited (${c}): ${stderr}`)))]);
      const ready = JSON.parse(stdout.split('\n').find((l) => l.includes('"vmPid"'))!) as { vmPid: number; out: string };
      expect(ready.out).toBe('hello\n');
      // qemu, the child, every process here: nobody has the password in argv.
      expect(readFileSync(`/proc/${ready.vmPid}/cmdline`, 'utf8')).toContain('qemu-system');
      // qemu runs under its seccomp filter (-sandbox): mode 2 is "filter".
      expect(readFileSync(`/proc/${ready.vmPid}/status`, 'utf8')).toMatch(/^Seccomp:\s+2$/m);
      expect(argvContaining(password)).toEqual([]);
      // The VM's agent and QMP sockets are gone once qemu connected (their 0600 / 0700 modes
      // are checked below, through the fake qemu, before it connects). Their dir stays while
      // the VM runs, empty: a snapshot's socket is made there (qemu's jail holds that dir).
      const runDirs = readdirSync(tmpdir()).filter((f) => f.startsWith(`corral-run-${child.pid}-`));
      expect(runDirs.flatMap((d) => readdirSync(join(tmpdir(), d)))).toEqual([]);
    } finally {
      child.stdin!.end();
      await exited;
    }
    expect(stderr).toMatch(/corral\[child-\d+\] (debug|trace):/); // the log did run at trace level
    expect(stderr).not.toContain(password);
    const events = stdout.split('\n').filter((l) => l.startsWith('{"event"'));
    expect(events.some((l) => l.includes('image.pull.done'))).toBe(true);
    expect(events.join('\n')).not.toContain(password);
    // Records, replay buffer, exec logs (LMDB), image index, snapshot and template metadata.
    const files = filesUnder(stateDir, (n) => n.endsWith('.json') || n.startsWith('store.lmdb'));
    expect(files.some((f) => f.endsWith('store.lmdb'))).toBe(true);
    for (const f of files) expect([f, readFileSync(f).includes(password)]).toEqual([f, false]);
    expect(mode(stateDir)).toBe(0o700);
    for (const e of readdirSync(stateDir, { withFileTypes: true })) if (e.isDirectory()) expect([e.name, mode(join(stateDir, e.name))]).toEqual([e.name, 0o700]);
  });

  it("sockets are 0600 in 0700 dirs: the VM's agent and QMP sockets, a detached host's control socket", async () => {
    const name = uniqueName('sec-det');
    const report = join(stateDir, 'fake-qemu-report.json');
    // The detached host process starts the fake qemu, which reports the modes it finds.
    const sb = await withFakeQemu(`report:${report}`, () => Sandbox.builder(name).supervisor(sup).template(false).createDetached());
    try {
      expect(JSON.parse(readFileSync(report, 'utf8'))).toEqual({ agent: 0o600, agentDir: 0o700, qmp: 0o600, qmpDir: 0o700 });
      const run = join(stateDir, 'run');
      expect(mode(run)).toBe(0o700);
      expect(mode(join(run, `${name}.sock`))).toBe(0o600);
    } finally {
      await sb.kill().catch(() => {});
    }
  });
});
