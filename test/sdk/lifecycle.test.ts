// stop, kill and the errors of commands illegal in a state, on real VMs.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox, type SandboxEvent } from '../../src/index.ts';
import type { Supervisor } from '../../src/supervisor/Supervisor.ts';
import { alive, testSupervisor, uniqueName, until } from '../helpers/sandbox.ts';

describe('sandbox lifecycle', () => {
  let sup: Supervisor;
  beforeAll(() => {
    sup = testSupervisor();
  });
  afterAll(async () => {
    await sup?.close();
  });

  it('stops gracefully: the guest powers off, the VM process exits 0, the store says stopped', async () => {
    const name = uniqueName('stop');
    const events: SandboxEvent[] = [];
    const sb = await Sandbox.builder(name).supervisor(sup).create();
    sb.events$.subscribe((e) => events.push(e));
    const { pid } = await sb.info();
    await sb.shell('echo data > /root/file');
    const info = await sb.stop();
    expect(info).toMatchObject({ status: 'stopped', stopReason: 'requested', exitCode: 0 });
    expect(alive(pid!)).toBe(false);
    expect(events.map((e) => e.type)).toEqual(expect.arrayContaining(['sandbox.stopping', 'sandbox.stopped']));
    expect(events.at(-1)).toMatchObject({ type: 'sandbox.stopped', reason: 'requested' });
    await until(() => sup.store.getSandbox(name)?.status === 'stopped', 5000, 'store record');
    // Commands on a stopped sandbox fail with the state in the message.
    await expect(sb.exec('true')).rejects.toMatchObject({ code: 'E_ILLEGAL_STATE' });
    // stop is idempotent
    await expect(sb.stop()).resolves.toMatchObject({ status: 'stopped' });
  });

  it('kills: SIGKILL to the VM, reason killed, and running execs fail with a clear error', async () => {
    const sb = await Sandbox.builder(uniqueName('kill')).supervisor(sup).create();
    const { pid } = await sb.info();
    const stream = await sb.execStream('sleep', ['300']);
    const failure = stream.exited.then(() => undefined, (e: Error) => e);
    const info = await sb.kill();
    expect(info).toMatchObject({ status: 'stopped', stopReason: 'killed', exitSignal: 'SIGKILL' });
    expect(await failure).toMatchObject({ code: 'E_VM_CRASHED', message: expect.stringMatching(/was killed|stopped/) });
    expect(alive(pid!)).toBe(false);
  });

  it('refuses exec while paused, naming the state, and runs again after resume', async () => {
    const sb = await Sandbox.builder(uniqueName('pause')).supervisor(sup).create();
    try {
      await sb.pause();
      expect((await sb.info()).status).toBe('paused');
      await expect(sb.exec('true')).rejects.toThrowError(/cannot exec sandbox ".*": it is paused/);
      await expect(sb.pause()).rejects.toMatchObject({ code: 'E_ILLEGAL_STATE' });
      await sb.resume();
      expect((await sb.exec('echo', ['back'])).stdout).toBe('back\n');
    } finally {
      await sb.stop();
    }
  });

  it('refuses a second sandbox with a live name, and replaces it on request', async () => {
    const name = uniqueName('dup');
    const a = await Sandbox.builder(name).supervisor(sup).create();
    await expect(Sandbox.builder(name).supervisor(sup).create()).rejects.toMatchObject({ code: 'E_SANDBOX_EXISTS' });
    const { pid } = await a.info();
    const b = await Sandbox.builder(name).supervisor(sup).replace().create();
    expect(alive(pid!)).toBe(false);
    expect((await b.exec('echo', ['new'])).stdout).toBe('new\n');
    await b.stop();
  });

  it('fails create with a clear error for an image it cannot get, and leaves nothing running', async () => {
    const name = uniqueName('noimg');
    // Any reference may be pulled now; "never" keeps this test off the network.
    await expect(Sandbox.builder(name).image('nope/nothing').pullPolicy('never').supervisor(sup).create()).rejects.toMatchObject({
      code: 'E_IMAGE_NOT_CACHED',
      message: expect.stringMatching(/image docker\.io\/nope\/nothing:latest is not in the local cache/),
    });
    expect(sup.get(name)).toBeUndefined();
    expect(sup.store.getSandbox(name)?.status).toBe('stopped');
  });
});
