// Per-exec users in one real sandbox: resolved by the agent from the guest's own /etc/passwd
// and /etc/group (supplementary groups, HOME), credentials dropped before exec.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox } from '../../src/index.ts';
import type { Supervisor } from '../../src/supervisor/Supervisor.ts';
import { testSupervisor, uniqueName } from '../helpers/sandbox.ts';

describe('exec as a user', () => {
  let sup: Supervisor;
  let sb: Sandbox;

  beforeAll(async () => {
    sup = testSupervisor();
    sb = await Sandbox.builder(uniqueName('user')).image('corral/base').memory(256).cpus(1).supervisor(sup).create();
    // a user of the image's kind, added in the writable layer
    await sb.fs().write('/etc/passwd', 'app:x:1000:1000:app:/home/app:/bin/sh\n', { append: true });
    await sb.fs().write('/etc/group', 'app:x:1000:\ntools:x:2000:root,app\n', { append: true });
    await sb.fs().mkdir('/home/app');
  });
  afterAll(async () => {
    await sb?.stop();
    await sup?.close();
  });

  it('runs as root by default', async () => {
    expect((await sb.shell('id -u; echo $HOME')).stdout).toBe('0\n/root\n');
  });

  it('runs as a named user with its group, supplementary groups and HOME', async () => {
    const r = await sb.shell('id -u; id -g; id -gn; id -G; echo $HOME', { user: 'app' });
    expect(r.stdout).toBe('1000\n1000\napp\n1000 2000\n/home/app\n');
  });

  it('takes uid, uid:gid and name:group forms', async () => {
    expect((await sb.shell('id -u; id -g', { user: '65534' })).stdout).toBe('65534\n65534\n');
    expect((await sb.shell('id -u; id -g', { user: '1234:4321' })).stdout).toBe('1234\n4321\n');
    expect((await sb.shell('id -u; id -gn', { user: 'app:tools' })).stdout).toBe('1000\ntools\n');
    // the user really lost root's rights
    const denied = await sb.shell('touch /root/x', { user: 'nobody' });
    expect(denied.code).not.toBe(0);
    expect(denied.stderr).toMatch(/Permission denied/);
  });

  it('fails with a clear error for a user or group the guest does not know', async () => {
    await expect(sb.exec('id', [], { user: 'ghost' })).rejects.toMatchObject({ code: 'E_EXEC_START', message: expect.stringMatching(/unknown user "ghost"/) });
    await expect(sb.exec('id', [], { user: 'app:ghosts' })).rejects.toMatchObject({ code: 'E_EXEC_START', message: expect.stringMatching(/unknown group "ghosts"/) });
    await expect(sb.exec('id', [], { user: 'bad user' })).rejects.toMatchObject({ code: 'E_INVALID_OPTION' });
  });
});
