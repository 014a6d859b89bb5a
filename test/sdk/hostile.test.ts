// A malformed frame from the guest fails that sandbox, never the supervisor or its other
// sandboxes. The hostile guest is a fake (test/helpers/fake-qemu.mjs, swapped in through
// CORRAL_QEMU) because the real agent never sends malformed frames; the neighbour is a real VM.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox, type SandboxEvent } from '../../src/index.ts';
import type { Supervisor } from '../../src/supervisor/Supervisor.ts';
import { PROTOCOL_VERSION } from '../../src/agent/frame.ts';
import { alive, hostileSandbox, testSupervisor, uniqueName, until, withFakeQemu } from '../helpers/sandbox.ts';


describe('a hostile guest', () => {
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

  for (const mode of ['oversized', 'garbage', 'wrong-session']) {
    it(`that sends ${mode} frames fails only its own sandbox, with E_PROTOCOL`, async () => {
      const evil = await hostileSandbox(sup, mode);
      const events: SandboxEvent[] = [];
      evil.events$.subscribe((e) => events.push(e));
      const { pid } = await evil.info();
      await expect(evil.exec('anything')).rejects.toMatchObject({ code: expect.stringMatching(/E_PROTOCOL|E_VM_CRASHED/) });
      const info = await evil.wait();
      expect(info).toMatchObject({ status: 'stopped', stopReason: 'crashed' });
      expect(info.error?.code).toBe('E_PROTOCOL');
      expect(events.find((e) => e.type === 'sandbox.failed')).toBeTruthy();
      expect(alive(pid!)).toBe(false);
      // The neighbour never noticed.
      expect((await good.exec('echo', ['still here'])).stdout).toBe('still here\n');
    });
  }

  it('that announces a protocol newer than the host is refused at create with E_PROTOCOL naming both versions, leaving no VM', async () => {
    const name = uniqueName('evil-protocol');
    let pid: number | undefined;
    const sub = sup.events$.subscribe((e) => {
      if (e.name === name && e.type === 'sandbox.vm.spawned') pid = e.pid;
    });
    process.env.CORRAL_FAKE_PROTOCOL = String(PROTOCOL_VERSION + 1);
    try {
      await expect(withFakeQemu('mute', () => Sandbox.builder(name).template(false).supervisor(sup).create())).rejects.toMatchObject({
        code: 'E_PROTOCOL',
        message: expect.stringContaining(`guest agent speaks protocol ${PROTOCOL_VERSION + 1}, host speaks 1–${PROTOCOL_VERSION}`),
      });
    } finally {
      delete process.env.CORRAL_FAKE_PROTOCOL;
      sub.unsubscribe();
    }
    expect(pid).toBeGreaterThan(0);
    await until(() => !alive(pid!), 10_000, 'the fake VM to be gone');
    expect((await good.exec('echo', ['still here'])).stdout).toBe('still here\n');
  });
});
