// A sandbox's idle and lifetime limits from the CLI: `create --idle-timeout --idle-action
// pause`, `create --max-duration` and `set-max-duration`, each step a fresh `corral` process.
// Each test creates its own detached sandbox (a real VM); what the host enforces is read
// back with `inspect`, waited for as a condition.
import { describe, expect, it, vi } from 'vitest';
import { corral } from '../helpers/cli.ts';
import { freePort } from '../helpers/net.ts';
import { uniqueName } from '../helpers/sandbox.ts';

/** Polls `inspect` until it matches (the host acts on its own clock; no test timing). */
async function inspectUntil(name: string, want: Record<string, unknown>): Promise<void> {
  await vi.waitFor(async () => expect((await corral('inspect', name)).json).toMatchObject(want), { timeout: 90_000, interval: 500 });
}

describe('idle and lifetime limits from the CLI', () => {
  it('--idle-timeout with --idle-action pause: inspect and ls show it paused, and the next exec wakes it', async () => {
    const name = uniqueName('cli-idle');
    try {
      expect(await corral('create', name, '--memory', '128', '--idle-timeout', '1', '--idle-action', 'pause')).toMatchObject({ code: 0, json: { status: 'running' } });
      await inspectUntil(name, { status: 'paused' });
      expect((await corral('ls')).json).toContainEqual(expect.objectContaining({ name, status: 'paused' }));
      // The host resumes it for a call that needs the guest.
      expect(await corral('exec', name, '--', 'echo', 'awake')).toMatchObject({ code: 0, json: { stdout: 'awake\n' } });
    } finally {
      await corral('kill', name);
      await corral('rm', name);
    }
  });

  it('--max-duration at create, and set-max-duration sets it again from now: the sandbox stops with reason max-duration', async () => {
    const name = uniqueName('cli-life');
    try {
      expect(await corral('create', name, '--memory', '128', '--max-duration', '3600')).toMatchObject({ code: 0, json: { status: 'running' } });
      // No --port at create: no NIC, so nothing to publish on (said so, exit 4).
      expect(await corral('publish', name, `${await freePort()}:80`)).toMatchObject({ code: 4, json: { error: { code: 'E_ILLEGAL_STATE', message: expect.stringContaining('no network device') } } });
      expect(await corral('set-max-duration', name, 'soon')).toMatchObject({ code: 2, json: { error: { code: 'E_INVALID_OPTION', message: expect.stringContaining('invalid option SECONDS: a number of seconds from 0.1 to 2592000') } } });
      expect(await corral('set-max-duration', name, '1')).toMatchObject({ code: 0, json: { sandbox: name, maxDurationMs: 1000, stopsAt: expect.any(String) } });
      await inspectUntil(name, { status: 'stopped', stopReason: 'max-duration' });
      expect(await corral('set-max-duration', name, '60')).toMatchObject({ code: 4, json: { error: { code: 'E_ILLEGAL_STATE' } } });
    } finally {
      await corral('kill', name);
      await corral('rm', name);
    }
  });

  it('names the option and what it allows when a limit is wrong, with exit code 2 (nothing is created)', async () => {
    const name = uniqueName('cli-bad-limits');
    const invalid = (message: string) => ({ code: 2, json: { error: { code: 'E_INVALID_OPTION', message: expect.stringContaining(message) } } });
    const seconds = 'a number of seconds from 0.1 to 2592000';
    expect(await corral('create', name, '--idle-timeout', 'abc')).toMatchObject(invalid(`invalid option --idle-timeout: ${seconds} (got "abc")`));
    expect(await corral('create', name, '--idle-timeout', '0')).toMatchObject(invalid(`invalid option --idle-timeout: ${seconds}`));
    expect(await corral('create', name, '--max-duration', '9999999')).toMatchObject(invalid(`invalid option --max-duration: ${seconds}`));
    expect(await corral('create', name, '--idle-timeout', '5', '--idle-action', 'nap')).toMatchObject(invalid('invalid option --idle-action: one of pause, stop (got "nap")'));
    expect(await corral('create', name, '--idle-action', 'pause')).toMatchObject({ code: 2, json: { error: { code: 'E_USAGE', message: expect.stringContaining('--idle-timeout') } } });
    expect(await corral('set-max-duration', name)).toMatchObject({ code: 2, json: { error: { code: 'E_USAGE', message: expect.stringContaining('corral set-max-duration NAME SECONDS') } } });
    expect(await corral('inspect', name)).toMatchObject({ code: 3, json: { error: { code: 'E_SANDBOX_NOT_FOUND' } } });
  });
});
