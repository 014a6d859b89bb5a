// Hostile guests that stay within the frame format: a flood of output, a guest that never
// answers, one that answers on another exec's id, thousands of sessions, one that never
// answers a snapshot's unmount. The guest is the
// fake qemu of test/helpers/fake-qemu.mjs (the real agent cannot be made to misbehave on
// demand); the neighbour is a real VM that must not notice any of it.
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox } from '../../src/index.ts';
import { snapshotsDir } from '../../src/snapshot/snapshots.ts';
import type { Supervisor } from '../../src/supervisor/Supervisor.ts';
import { consumeFlood } from '../helpers/flood.ts';
import { alive, hostileSandbox, testSupervisor, uniqueName, until, withFakeQemu } from '../helpers/sandbox.ts';

const MiB = 1024 * 1024;

describe('a hostile guest within the frame format', () => {
  let sup: Supervisor;
  let good: Sandbox;
  beforeAll(async () => {
    sup = testSupervisor();
    good = await Sandbox.builder(uniqueName('good')).supervisor(sup).create();
  });
  afterAll(async () => {
    await good?.stop();
    await sup?.close();
  });

  const neighbourFine = async () => expect((await good.exec('echo', ['still here'])).stdout).toBe('still here\n');

  // How much host memory the flood costs is a figure (`npm run soak` prints the peak RSS for
  // 256 MiB and 1 GiB floods); here, the condition: every byte, once, in order, and the
  // neighbour unaffected.
  it('floods 256 MiB of stdout at a slow consumer: every byte arrives once and in order, the neighbour is unaffected', async () => {
    const floodMib = Number(process.env.CORRAL_TEST_FLOOD_MIB ?? 256);
    process.env.CORRAL_FAKE_FLOOD_MIB = String(floodMib);
    const evil = await hostileSandbox(sup, 'flood').finally(() => delete process.env.CORRAL_FAKE_FLOOD_MIB);
    try {
      const { bytes, intact } = await consumeFlood(evil, floodMib);
      expect(bytes).toBe(floodMib * MiB);
      expect(intact).toBe(true);
      await neighbourFine();
    } finally {
      await evil.kill().catch(() => {});
    }
  });

  it('that never answers an exec: timeoutMs still ends it, and the session table is bounded', async () => {
    const evil = await hostileSandbox(sup, 'mute');
    try {
      await expect(evil.exec('sleep', ['1000'], { timeoutMs: 500 })).rejects.toMatchObject({ code: 'E_TIMEOUT', message: expect.stringMatching(/did not end/) });
      const ac = new AbortController();
      const aborted = evil.exec('sleep', ['1000'], { signal: ac.signal });
      ac.abort();
      await expect(aborted).rejects.toMatchObject({ code: 'E_ABORTED' });
      // Thousands of sessions: the host refuses past its bound, it does not grow without one.
      const refused: Error[] = [];
      const streams = await Promise.all(Array.from({ length: 1100 }, () => evil.execStream('sleep', ['1000']).catch((e: Error) => (refused.push(e), undefined))));
      for (const st of streams) st?.exited.catch((e: Error) => refused.push(e));
      await until(() => refused.length >= 1100 - 1024, 30_000, 'refusals past the session bound');
      expect(refused[0]).toMatchObject({ code: 'E_EXEC_START', message: expect.stringMatching(/too many concurrent execs/) });
      expect((await evil.info()).status).toBe('running');
      await neighbourFine();
    } finally {
      await evil.kill().catch(() => {});
    }
  });

  it("that answers with another exec's id fails only its own sandbox, with E_PROTOCOL", async () => {
    const evil = await hostileSandbox(sup, 'cross-talk');
    const { pid } = await evil.info();
    const first = await evil.execStream('sleep', ['1000']);
    await expect(evil.exec('second')).rejects.toMatchObject({ code: expect.stringMatching(/E_PROTOCOL|E_VM_CRASHED/) });
    await expect(first.exited).rejects.toMatchObject({ code: expect.stringMatching(/E_PROTOCOL|E_VM_CRASHED/) });
    const info = await evil.wait();
    expect(info).toMatchObject({ status: 'stopped', stopReason: 'crashed' });
    expect(info.error).toMatchObject({ code: 'E_PROTOCOL', message: expect.stringMatching(/STARTED twice/) });
    expect(alive(pid!)).toBe(false);
    await neighbourFine();
  });

  it('that answers HELLO but never the boot-time setup fails the create within the boot timeout, leaving no VM', async () => {
    const name = uniqueName('evil-no-setup');
    let pid: number | undefined;
    const sub = sup.events$.subscribe((e) => {
      if (e.name === name && e.type === 'sandbox.vm.spawned') pid = e.pid;
    });
    try {
      await expect(
        withFakeQemu('no-setup', () => Sandbox.builder(name).template(false).supervisor(sup).volume('/scratch', (v) => v.tmpfs().size(8)).bootTimeoutMs(6000).create()),
        // The budget covers the fake qemu's own start (a Node process): 1500 ms was not
        // enough on a loaded machine, where the failure was then the HELLO's, not the setup's.
      ).rejects.toMatchObject({ code: 'E_BOOT_FAILED', message: expect.stringMatching(/did not answer the setup of .* within 6000 ms/) });
    } finally {
      sub.unsubscribe();
    }
    expect(pid).toBeGreaterThan(0);
    await until(() => !alive(pid!), 10_000, 'the fake VM to be gone');
    expect(await (await Sandbox.get(name, { supervisor: sup })).info()).toMatchObject({ status: 'stopped' });
    await neighbourFine();
  });

  it("that never answers a snapshot's unmount fails the snapshot with E_TIMEOUT and stops its sandbox", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'corral-test-noumount-'));
    const evil = await withFakeQemu('no-umount', () =>
      Sandbox.builder(uniqueName('evil-no-umount')).template(false).supervisor(sup).volume('/data', (v) => v.bind(dir)).stopTimeoutMs(1000).create(),
    );
    try {
      const { pid } = await evil.info();
      // a guest that answers everything else: the volume was mounted, an exec runs
      expect((await evil.exec('true')).code).toBe(0);
      const snap = uniqueName('snap-no-umount');
      // the unmount waits the sandbox's stopTimeoutMs
      await expect(evil.snapshot(snap)).rejects.toMatchObject({
        code: 'E_TIMEOUT',
        message: expect.stringMatching(/volume \/data was not unmounted for the save: the guest agent did not answer the setup of unmount of volume \/data within 1000 ms/),
      });
      const info = await evil.wait();
      expect(info).toMatchObject({ status: 'stopped', stopReason: 'crashed' });
      expect(info.error).toMatchObject({ code: 'E_TIMEOUT', message: expect.stringMatching(/unmount of volume \/data/) });
      expect(alive(pid!)).toBe(false);
      // nothing half-written: no snapshot, no temp dir of it
      const snaps = snapshotsDir(sup.stateDir);
      expect(existsSync(snaps) ? readdirSync(snaps).filter((n) => n.startsWith(snap)) : []).toEqual([]);
      await neighbourFine();
    } finally {
      await evil.kill().catch(() => {});
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
