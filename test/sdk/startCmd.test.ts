// Templates with a start command (E2B's setStartCmd + readyCmd), on real VMs: the command
// runs in the template, so a sandbox restored from it finds it running at once — the same
// process, cloned, not started again; a cold boot runs it too; a ready command that never
// succeeds fails the create, naming it, with nothing left running.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NetworkPolicy, Sandbox, type SandboxEvent } from '../../src/index.ts';
import { listen, portOf } from '../helpers/net.ts';
import type { Supervisor } from '../../src/supervisor/Supervisor.ts';
import { testSupervisor, uniqueName } from '../helpers/sandbox.ts';

const SERVER = `sh -c 'echo $$ > /tmp/server.pid; echo "$GREETING" > /tmp/greeting; while :; do echo beat >> /tmp/heartbeat; sleep 0.2; done'`;

describe('a start command', () => {
  let sup: Supervisor;
  const events: SandboxEvent[] = [];
  beforeAll(() => {
    sup = testSupervisor();
    sup.events$.subscribe((e) => events.push(e));
  });
  afterAll(async () => {
    await sup?.close();
  });

  const builder = (name: string) => Sandbox.builder(name).memory(128).env('GREETING', `hi-${process.pid}`).startCmd(SERVER).readyCmd('test -s /tmp/heartbeat').supervisor(sup);
  const pidOf = async (sb: Sandbox) => Number((await sb.exec('cat', ['/tmp/server.pid'])).stdout);

  it('is running in a sandbox restored from its template: the same process, not started again', async () => {
    const a = await builder(uniqueName('start-a')).create();
    const b = await builder(uniqueName('start-b')).create();
    try {
      const pid = await pidOf(a);
      expect(pid).toBeGreaterThan(1);
      expect((await a.exec('kill', ['-0', String(pid)])).code).toBe(0);
      expect((await a.exec('cat', ['/tmp/greeting'])).stdout).toBe(`hi-${process.pid}\n`);
      // B was restored from the same template: its server is the template's process.
      expect(await pidOf(b)).toBe(pid);
      expect((await b.exec('kill', ['-0', String(pid)])).code).toBe(0);
      const restored = events.filter((e) => e.type === 'sandbox.restored' && (e.name === a.name || e.name === b.name)).map((e) => (e as { template: string }).template);
      expect(restored).toHaveLength(2);
      expect(restored[0]).toBe(restored[1]);
      expect(events.filter((e) => e.type === 'template.built' && (e as { key: string }).key === restored[0])).toHaveLength(1);
    } finally {
      await Promise.all([a.stop(), b.stop()]);
    }
  });

  it('runs after a cold boot too', async () => {
    const c = await builder(uniqueName('start-c')).template(false).create();
    try {
      const pid = await pidOf(c);
      expect((await c.exec('kill', ['-0', String(pid)])).code).toBe(0);
    } finally {
      await c.stop();
    }
  });

  it('fails the create when the ready command never succeeds, naming it, and leaves no VM', async () => {
    const name = uniqueName('start-never');
    const err = await Sandbox.builder(name).memory(128).startCmd('echo starting; sleep 1000').readyCmd('false').bootTimeoutMs(8000).supervisor(sup).create().catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'E_BOOT_FAILED', message: expect.stringContaining('ready command did not succeed') });
    expect((err as Error).message).toContain('starting');
    expect((await Sandbox.get(name, { supervisor: sup })).name).toBe(name);
    expect((await Sandbox.list({ supervisor: sup })).find((s) => s.name === name)).toMatchObject({ status: 'stopped', stopReason: 'boot-failed' });
    await Sandbox.remove(name, { supervisor: sup });
  });

  it("runs under the sandbox's network policy, and no other: its template VM has the sandbox's NIC, configured, behind the same policy", async () => {
    // The template VM has a policy of its own, the sandbox's: a start command can fetch what
    // the sandbox could (allowAll reaches the host server), and no more (publicOnly refuses
    // host loopback, which the guest reaches as 10.0.2.2). The NIC is set up before it runs.
    const server = await listen('host-secret');
    const probe = [
      `if timeout 5 wget -q -O- http://10.0.2.2:${portOf(server)}/ > /tmp/got 2>&1; then echo REACHED; else echo BLOCKED; fi > /tmp/start-net`,
      'sleep 1000',
    ].join('; ');
    const open = await Sandbox.builder(uniqueName('start-net')).memory(128).network((n) => n.policy(NetworkPolicy.allowAll())).startCmd(`sh -c '${probe}'`).readyCmd('test -s /tmp/start-net').supervisor(sup).create();
    const closed = await Sandbox.builder(uniqueName('start-nonet')).memory(128).network((n) => n.policy(NetworkPolicy.publicOnly())).startCmd(`sh -c '${probe}'`).readyCmd('test -s /tmp/start-net').supervisor(sup).create();
    try {
      expect((await open.exec('cat', ['/tmp/start-net'])).stdout).toBe('REACHED\n');
      expect((await open.exec('cat', ['/tmp/got'])).stdout).toBe('host-secret');
      expect((await closed.exec('cat', ['/tmp/start-net'])).stdout).toBe('BLOCKED\n');
      expect((await closed.exec('cat', ['/tmp/got'])).stdout).not.toContain('host-secret');
      // The sandboxes themselves have their policies' network too.
      expect((await open.shell(`timeout 10 wget -q -O- http://10.0.2.2:${portOf(server)}/`)).stdout).toBe('host-secret');
      expect((await closed.exec('sh', ['-c', `timeout 5 wget -q -O- http://10.0.2.2:${portOf(server)}/`])).code).not.toBe(0);
    } finally {
      await Promise.all([open.stop(), closed.stop()]);
      await new Promise((r) => server.close(r));
    }
  });

  it('names a ready command without a start command', () => {
    expect(() => Sandbox.builder('x').readyCmd('true').build()).toThrowError(/readyCmd/);
  });
});
