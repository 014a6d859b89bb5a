// Scripts and patches: applied by the agent before user code runs, in the sandbox's own
// writable layer. Two real sandboxes of the same image: one patched, one not.
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox, normalizeConfig } from '../../src/index.ts';
import type { Supervisor } from '../../src/supervisor/Supervisor.ts';
import { testSupervisor, uniqueName } from '../helpers/sandbox.ts';

describe('scripts and patches', () => {
  let sup: Supervisor;
  let patched: Sandbox;
  let plain: Sandbox;
  let assets: string;

  beforeAll(async () => {
    sup = testSupervisor();
    assets = mkdtempSync(join(tmpdir(), 'corral-assets-'));
    mkdirSync(join(assets, 'css'));
    writeFileSync(join(assets, 'index.html'), '<h1>hi</h1>\n');
    writeFileSync(join(assets, 'css', 'site.css'), 'body{}\n');
    writeFileSync(join(assets, 'run.sh'), '#!/bin/sh\necho run\n', { mode: 0o750 });
    symlinkSync('index.html', join(assets, 'home.html'));
    [patched, plain] = await Promise.all([
      Sandbox.builder(uniqueName('patched'))
        .script('setup', '#!/bin/sh\necho "setup ran with $1"\n')
        .script('greet', '#!/bin/sh\necho "hello from $(hostname)"\n')
        .patch((p) =>
          p
            .text('/etc/app.conf', 'debug=1\n', { mode: 0o600 })
            .mkdir('/srv/x')
            .copyDir(assets, '/srv/assets')
            .symlink('/etc/app.conf', '/srv/app.conf')
            .append('/etc/hosts', '10.1.2.3\tdb\n')
            .remove('/etc/profile'),
        )
        .supervisor(sup)
        .create(),
      Sandbox.builder(uniqueName('plain')).supervisor(sup).create(),
    ]);
  });
  afterAll(async () => {
    try {
      await Promise.all([patched?.stop(), plain?.stop()]);
      await sup?.close();
    } finally {
      // Even when a stop fails, the host-side assets dir must not outlive the test.
      rmSync(assets, { recursive: true, force: true });
    }
  });

  it('puts scripts under /.msb/scripts, executable and callable by name from exec and shell', async () => {
    expect((await patched.exec('setup', ['now'])).stdout).toBe('setup ran with now\n');
    expect((await patched.shell('greet; ls -l /.msb/scripts | cut -c1-10 | sort -u | grep -v total')).stdout).toMatch(/^hello from patched-.*\n-rwxr-xr-x\n$/);
    expect((await patched.shell('echo $PATH')).stdout.trim().endsWith(':/.msb/scripts')).toBe(true);
  });

  it('applies text, mkdir, copyDir, symlink, append and remove before user code runs', async () => {
    const r = await patched.shell(
      'cat /etc/app.conf; stat -c %a /etc/app.conf; test -d /srv/x && echo dir; ' +
        'cat /srv/assets/index.html /srv/assets/css/site.css; stat -c %a /srv/assets/run.sh; readlink /srv/assets/home.html; ' +
        'readlink /srv/app.conf; tail -1 /etc/hosts; head -1 /etc/hosts; test -e /etc/profile || echo removed',
    );
    expect(r.stdout).toBe(
      'debug=1\n600\ndir\n<h1>hi</h1>\nbody{}\n750\nindex.html\n/etc/app.conf\n10.1.2.3\tdb\n127.0.0.1\tlocalhost\nremoved\n',
    );
  });

  it('keeps patches in that sandbox: another sandbox of the same image does not see them', async () => {
    const r = await plain.shell('test -e /etc/app.conf || echo no-conf; test -e /srv/x || echo no-srv; grep -c db /etc/hosts; test -e /etc/profile && echo profile; test -e /.msb || echo no-scripts');
    expect(r.stdout).toBe('no-conf\nno-srv\n0\nprofile\nno-scripts\n');
  });

  it('rejects paths that escape or leave the root, naming the patch', () => {
    const b = () => Sandbox.builder('x');
    expect(() => b().patch((p) => p.text('../etc/passwd', 'x'))).toThrow(/invalid option patch\.text\.path: an absolute guest path/);
    expect(() => b().patch((p) => p.text('/etc/../../root/x', 'x'))).toThrow(/patch\.text\.path/);
    expect(() => b().patch((p) => p.mkdir('/srv/./x'))).toThrow(/patch\.mkdir\.path/);
    expect(() => b().patch((p) => p.append('/proc/sys/kernel/hostname', 'x'))).toThrow(/not inside \/proc/);
    expect(() => b().patch((p) => p.remove('/'))).toThrow(/patch\.remove\.path/);
    expect(() => b().patch((p) => p.copyDir('/nonexistent/corral', '/srv'))).toThrow(/patch\.copyDir\.from: an existing host directory/);
    expect(() => b().patch((p) => p.text('/etc/x', 'x', { mode: 0o10000 }))).toThrow(/patch\.text\.mode/);
    expect(() => b().script('../evil', '#!/bin/sh\n')).toThrow(/invalid option script name/);
    // A config edited by hand goes through the same checks.
    expect(() => normalizeConfig({ name: 'y', patches: [{ op: 'text', path: '/a/../b', content: '' }] })).toThrow(/patches\[0\]\.path/);
  });
});
