// Detached sandboxes outlive the process that made them; any process finds them by name.
// Records left behind by processes that died are repaired on the next read.
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox } from '../../src/index.ts';
import { sandboxDir } from '../../src/runtime/rootfs.ts';
import type { Supervisor } from '../../src/supervisor/Supervisor.ts';
import { startChild } from '../helpers/child.ts';
import { alive, testSupervisor, uniqueName, until } from '../helpers/sandbox.ts';

describe('detached sandboxes and the store', () => {
  let sup: Supervisor;
  beforeAll(() => {
    sup = testSupervisor();
  });
  afterAll(async () => {
    await sup?.close();
  });

  it('survive their creator: another process gets one by name, execs, stops and removes it', async () => {
    const name = uniqueName('det');
    const { child, first } = await startChild('detached', name);
    await new Promise((r) => child.once('exit', r));
    expect(first).toMatchObject({ name, status: 'running' });
    const vmPid = first.pid as number;
    expect(alive(vmPid)).toBe(true);

    const sb = await Sandbox.get(name, { supervisor: sup });
    expect(sb.detached).toBe(true);
    expect((await sb.info()).status).toBe('running');
    expect((await sb.exec('echo', ['from another process'])).stdout).toBe('from another process\n');
    // file access (chunked, bytes as base64 on the control socket) and terminals go through it too
    const blob = randomBytes(1536 * 1024);
    await sb.fs().write('/tmp/blob', blob);
    expect(Buffer.compare(Buffer.from(await sb.fs().read('/tmp/blob')), blob)).toBe(0);
    expect((await sb.shell('stty size', { tty: { cols: 90, rows: 30 } })).stdout).toBe('30 90\r\n');
    const listed = await Sandbox.list({ supervisor: sup, labels: { 'made-by': 'child' } });
    expect(listed.map((r) => [r.name, r.status, r.detached])).toContainEqual([name, 'running', true]);

    await expect(Sandbox.remove(name, { supervisor: sup })).rejects.toMatchObject({ code: 'E_ILLEGAL_STATE' });
    const info = await sb.stop();
    expect(info).toMatchObject({ status: 'stopped', stopReason: 'requested' });
    await until(() => !alive(vmPid), 10_000, 'the VM to end');
    const rec = sup.store.getSandbox(name)!;
    await until(() => !alive(rec.ownerPid!), 10_000, 'the host process to exit');
    expect(existsSync(rec.controlSocket!)).toBe(false);

    await Sandbox.remove(name, { supervisor: sup });
    expect(sup.store.getSandbox(name)).toBeUndefined();
    expect(existsSync(sandboxDir(sup.stateDir, name))).toBe(false);
    await expect(Sandbox.get(name, { supervisor: sup })).rejects.toMatchObject({ code: 'E_SANDBOX_NOT_FOUND' });
  });

  it('are what the builder makes with .detached(): the sandbox outlives the plain script that created it', async () => {
    const name = uniqueName('bdet');
    const { child, first } = await startChild('builder-detached', name);
    const code = await new Promise((r) => child.once('exit', r));
    expect(code).toBe(0);
    expect(first).toMatchObject({ name, status: 'running', detached: true });
    const rec = sup.store.getSandbox(name)!;
    // owned by a host process of its own, neither the script (gone) nor this one
    expect(rec.ownerPid).not.toBe(first.creatorPid);
    expect(rec.ownerPid).not.toBe(process.pid);
    expect(alive(rec.ownerPid!)).toBe(true);
    expect(alive(first.pid as number)).toBe(true);
    const sb = await Sandbox.get(name, { supervisor: sup });
    try {
      expect(sb.detached).toBe(true);
      expect((await sb.exec('echo', ['still here'])).stdout).toBe('still here\n');
    } finally {
      await sb.stop();
    }
    await until(() => !alive(first.pid as number), 10_000, 'the VM to end');
    await until(() => !alive(rec.ownerPid!), 10_000, 'the host process to exit');
    await Sandbox.remove(name, { supervisor: sup });
  });

  it('restart from the persisted config and upper disk: files written before the stop are there', async () => {
    const name = uniqueName('restart');
    const sb = await Sandbox.builder(name).env('KEEP', 'me').supervisor(sup).create();
    await sb.shell('echo persisted > /root/note');
    await sb.stop();
    const stopped = await Sandbox.get(name, { supervisor: sup });
    expect((await stopped.info()).status).toBe('stopped');
    await expect(stopped.exec('true')).rejects.toMatchObject({ code: 'E_ILLEGAL_STATE' });
    const again = await stopped.start();
    expect((await again.shell('cat /root/note; echo $KEEP')).stdout).toBe('persisted\nme\n');
    await expect(Sandbox.start(name, { supervisor: sup })).rejects.toMatchObject({ code: 'E_ILLEGAL_STATE' });
    await again.stop();
    await Sandbox.remove(name, { supervisor: sup });
  });

  it('lists with label filters and pages', async () => {
    const names = [uniqueName('list'), uniqueName('list')];
    const sbs = await Promise.all(names.map((n, i) => Sandbox.builder(n).label('group', 'g1').label('i', String(i)).supervisor(sup).create()));
    try {
      const g1 = await Sandbox.list({ supervisor: sup, labels: { group: 'g1' } });
      expect(g1.map((r) => r.name).sort()).toEqual([...names].sort());
      expect(g1.every((r) => r.status === 'running' && r.createdAt <= r.updatedAt)).toBe(true);
      expect((await Sandbox.list({ supervisor: sup, labels: { group: 'g1', i: '1' } })).map((r) => r.name)).toEqual([names[1]]);
      const page = await Sandbox.list({ supervisor: sup, labels: { group: 'g1' }, limit: 1, offset: 1 });
      expect(page).toHaveLength(1);
    } finally {
      await Promise.all(sbs.map((s) => s.stop()));
    }
  });

  it('repairs a record whose owner was SIGKILLed in the middle of create, and leaves no qemu', async () => {
    const { child, first } = await startChild('midcreate');
    const vmPid = first.vmPid as number;
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    await until(() => !alive(vmPid), 10_000, 'the VM to die with its owner');
    const name = `child-${child.pid}`;
    expect(sup.store.getSandbox(name)?.status).not.toBe('stopped'); // what the dead owner left
    expect(sup.reconcile(name)).toMatchObject({ status: 'stopped', stopReason: 'crashed' });
    // Its half-booted VM's socket dir is swept by the next supervisor that starts.
    await testSupervisor().close();
    expect(readdirSync(tmpdir()).filter((d) => d.startsWith(`corral-run-${child.pid}-`))).toEqual([]);
    await Sandbox.remove(name, { supervisor: sup });
  });

  it('a detached host that is SIGKILLed takes its VM with it; the record reads crashed', async () => {
    const name = uniqueName('dethost');
    const sb = await Sandbox.builder(name).supervisor(sup).createDetached();
    const { pid: vmPid } = await sb.info();
    const hostPid = sup.store.getSandbox(name)!.ownerPid!;
    process.kill(hostPid, 'SIGKILL');
    await until(() => !alive(vmPid!), 10_000, 'the VM to die with its host');
    // The VM dies as soon as the host's worker thread does, which can be before the host
    // process has finished exiting: only a gone owner makes the record read crashed.
    await until(() => !alive(hostPid), 10_000, 'the host process to be gone');
    await sb.detach();
    expect(sup.reconcile(name)).toMatchObject({ status: 'stopped', stopReason: 'crashed' });
    await Sandbox.remove(name, { supervisor: sup });
  });
});
