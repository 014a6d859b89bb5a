// `corral fs watch` as a user runs it: its own process against a detached sandbox, one line
// per change, ended by Ctrl-C (SIGINT) or by the sandbox's stop, exit code 0 either way.
import { spawn, type ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BIN, corral } from '../helpers/cli.ts';
import { uniqueName } from '../helpers/sandbox.ts';

/** A running `corral fs watch`, its stdout lines and stderr collected, with waits on them. */
function watcher(...args: string[]) {
  const child: ChildProcess = spawn(process.execPath, [BIN, ...args], { env: process.env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  const changed: Array<() => void> = [];
  child.stdout!.on('data', (d: Buffer) => ((out += d), changed.splice(0).forEach((f) => f())));
  child.stderr!.on('data', (d: Buffer) => ((err += d), changed.splice(0).forEach((f) => f())));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  return {
    child,
    exited,
    get out() {
      return out;
    },
    get err() {
      return err;
    },
    /** Resolves once `pred` holds (the test timeout bounds it); rejects if the process exits first. */
    async until(pred: () => boolean): Promise<void> {
      while (!pred()) {
        if (child.exitCode !== null) throw new Error(`corral fs watch exited ${child.exitCode}: ${err}`);
        await Promise.race([new Promise<void>((r) => changed.push(r)), exited]);
      }
    },
  };
}

describe('corral fs watch', () => {
  const name = uniqueName('cli-watch');
  beforeAll(async () => {
    expect((await corral('create', name)).code).toBe(0);
  });
  afterAll(async () => {
    await corral('kill', name);
    await corral('rm', name);
  });

  it('refuses a missing path with exit code 1 and the guest errno', async () => {
    expect(await corral('fs', 'watch', name, '/no/such/dir')).toMatchObject({ code: 1, json: { error: { code: 'E_FS', message: expect.stringContaining('ENOENT') } } });
    expect(await corral('fs', 'list', name, '/')).toMatchObject({ code: 2, json: { error: { code: 'E_USAGE' } } });
  });

  it('prints one line per change until Ctrl-C, then until the sandbox stops', async () => {
    const text = watcher('fs', 'watch', name, '/tmp', '--recursive');
    const json = watcher('--json', 'fs', 'watch', name, '/tmp');
    await text.until(() => text.err.includes('watching /tmp'));
    await json.until(() => json.err.includes('watching /tmp'));
    expect((await corral('exec', name, '--', 'sh', '-c', 'mkdir /tmp/d && echo x > /tmp/d/f && mv /tmp/d/f /tmp/g')).code).toBe(0);
    await text.until(() => text.out.includes('rename /tmp/d/f -> /tmp/g\n'));
    expect(text.out.split('\n')).toEqual(expect.arrayContaining(['create /tmp/d/', 'create /tmp/d/f', 'write /tmp/d/f']));
    // Not recursive: /tmp/d is not watched, so a move out of it is a create in /tmp.
    await json.until(() => json.out.includes('"/tmp/g"'));
    const lines = json.out.split('\n').filter(Boolean).map((l) => JSON.parse(l));
    expect(lines).toEqual([
      { type: 'create', path: '/tmp/d', name: 'd', isDir: true },
      { type: 'create', path: '/tmp/g', name: 'g', isDir: false },
    ]);

    text.child.kill('SIGINT');
    expect(await text.exited).toBe(0);
    expect(text.err).toContain('watch ended: stopped');

    expect((await corral('stop', name)).code).toBe(0);
    expect(await json.exited).toBe(0);
    expect(json.err).toContain('watch ended: sandbox-stopped');
  });
});
