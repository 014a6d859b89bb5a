// `corral fs watch` as a user runs it: its own process against a detached sandbox, one line
// per change, ended by Ctrl-C (SIGINT) or by the sandbox's stop, exit code 0 either way.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { corral, watcher } from '../helpers/cli.ts';
import { uniqueName } from '../helpers/sandbox.ts';

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
