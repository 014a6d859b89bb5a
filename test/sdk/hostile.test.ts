// A malformed frame from the guest fails that sandbox, never the supervisor or its other
// sandboxes. The hostile guest is a fake (test/helpers/fake-qemu.mjs, swapped in through
// CORRAL_QEMU) because the real agent never sends malformed frames; the neighbour is a real VM.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox, type SandboxEvent } from '../../src/index.ts';
import type { Supervisor } from '../../src/supervisor/Supervisor.ts';
import { alive, hostileSandbox, testSupervisor, uniqueName } from '../helpers/sandbox.ts';


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
});
