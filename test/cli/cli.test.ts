// The `corral` CLI with --json, as a script would use it: each command a fresh process
// (bin/corral.mjs), sandboxes detached so they outlive each invocation. Real VMs.
import { afterAll, describe, expect, it } from 'vitest';
import { corral, corralLines } from '../helpers/cli.ts';
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
    expect(logs.json.map((e: { stream: string; text: string }) => [e.stream, e.text])).toEqual([
      ['stdout', 'hi\n'],
      ['stderr', 'oops\n'],
    ]);
    // logs -f printed the same entries, each once, and ended by itself when the sandbox stopped.
    const followed = await follower;
    expect(followed.code).toBe(0);
    expect(followed.lines.map((e) => [e.stream, e.text])).toEqual([
      ['stdout', 'hi\n'],
      ['stderr', 'oops\n'],
    ]);

    expect(await corral('rm', name)).toMatchObject({ code: 0, json: { removed: name } });
    expect(await corral('inspect', name)).toMatchObject({ code: 3, json: { error: { code: 'E_SANDBOX_NOT_FOUND' } } });
  });

  it('runs a throwaway sandbox for one command and exits with its code', async () => {
    const r = await corral('run', '--', 'sh', '-c', 'echo ran; exit 7');
    expect(r).toMatchObject({ code: 7, json: { code: 7, stdout: 'ran\n' } });
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
