// Ports from the CLI: `create --port` with a template start command that serves on it, then
// `publish` and `unpublish` on the running sandbox, each a fresh `corral` process; every
// check is a real TCP connection (fetch) from the host through qemu's forward to the guest's
// httpd. One detached sandbox for the file; a real VM.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { corral } from '../helpers/cli.ts';
import { freePort } from '../helpers/net.ts';
import { uniqueName } from '../helpers/sandbox.ts';

describe('ports of a running sandbox from the CLI', () => {
  const name = uniqueName('cli-ports');
  let atCreate: number;
  beforeAll(async () => {
    atCreate = await freePort();
    // The server is the template's start command: running once the create returns.
    const created = await corral(
      'create', name, '--memory', '128', '--port', `${atCreate}:8080`,
      '--start-cmd', 'mkdir -p /www && echo served > /www/index.html && exec httpd -f -p 8080 -h /www',
      '--ready-cmd', 'wget -q -O /dev/null http://127.0.0.1:8080/index.html',
    );
    expect(created).toMatchObject({ code: 0, json: { status: 'running' } });
  });
  afterAll(async () => {
    await corral('kill', name);
    await corral('rm', name);
  });

  it('serves on the port given at create, and a port published later forwards until it is unpublished', async () => {
    expect(await (await fetch(`http://127.0.0.1:${atCreate}/index.html`)).text()).toBe('served\n');
    const later = await freePort();
    expect(await corral('publish', name, `${later}:8080`)).toMatchObject({ code: 0, json: { sandbox: name, hostPort: later, guestPort: 8080 } });
    const res = await fetch(`http://127.0.0.1:${later}/index.html`);
    expect(res.status).toBe(200);
    expect(await res.text()).toBe('served\n');
    // A host port that is taken (by the create's forward) is named.
    expect(await corral('publish', name, `${atCreate}:8080`)).toMatchObject({ code: 2, json: { error: { code: 'E_INVALID_OPTION', message: expect.stringContaining(String(atCreate)) } } });
    expect(await corral('unpublish', name, String(later))).toMatchObject({ code: 0, json: { sandbox: name, hostPort: later, unpublished: true } });
    await expect(fetch(`http://127.0.0.1:${later}/index.html`)).rejects.toThrow();
    expect(await corral('unpublish', name, String(later))).toMatchObject({ code: 2, json: { error: { code: 'E_INVALID_OPTION', message: expect.stringContaining('not published') } } });
    // The create's port is untouched by all that.
    expect(await (await fetch(`http://127.0.0.1:${atCreate}/index.html`)).text()).toBe('served\n');
  });

  it('names the option and what it allows when a port is wrong, with exit code 2', async () => {
    const invalid = (message: string) => ({ code: 2, json: { error: { code: 'E_INVALID_OPTION', message: expect.stringContaining(message) } } });
    const allowed = 'two TCP ports from 1 to 65535 joined by ":"';
    expect(await corral('publish', name, '8080')).toMatchObject(invalid(`invalid option HOSTPORT:GUESTPORT: ${allowed}`));
    expect(await corral('publish', name, '0:8080')).toMatchObject(invalid(allowed));
    expect(await corral('publish', name, '18080:70000')).toMatchObject(invalid(allowed));
    expect(await corral('publish', name)).toMatchObject({ code: 2, json: { error: { code: 'E_USAGE', message: expect.stringContaining('corral publish NAME HOSTPORT:GUESTPORT') } } });
    expect(await corral('unpublish', name, 'http')).toMatchObject(invalid('invalid option HOSTPORT: a TCP port from 1 to 65535'));
    expect(await corral('create', uniqueName('cli-bad'), '--port', '80')).toMatchObject(invalid(`invalid option --port: ${allowed}`));
    expect(await corral('create', uniqueName('cli-bad'), '--ready-cmd', 'true')).toMatchObject({ code: 2, json: { error: { code: 'E_USAGE', message: expect.stringContaining('--start-cmd') } } });
    expect(await corral('create', uniqueName('cli-bad'), '--start-cmd', ' ')).toMatchObject(invalid('invalid option --start-cmd: a non-empty shell command'));
  });
});
