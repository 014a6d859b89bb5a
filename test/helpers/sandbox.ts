import { fileURLToPath } from 'node:url';
/** Shared fixtures for tests that boot real sandboxes. */
import { Sandbox } from '../../src/sdk/Sandbox.ts';
import { Supervisor, processAlive } from '../../src/supervisor/Supervisor.ts';

let n = 0;
/** A sandbox name unique in this test run. */
export function uniqueName(prefix: string): string {
  return `${prefix}-${process.pid}-${++n}`;
}

/** A supervisor on the run's state dir (set by globalSetup). */
export function testSupervisor(): Supervisor {
  return new Supervisor({ stateDir: process.env.CORRAL_STATE_DIR! });
}

/** Whether a process is alive. A zombie (dead, waiting for its reaper) is not. */
export const alive = processAlive;

/** Polls until `pred` holds or `ms` pass. For conditions no event announces (a pid gone). */
export async function until(pred: () => boolean, ms = 10_000, what = 'condition'): Promise<void> {
  const t0 = Date.now();
  while (!pred()) {
    if (Date.now() - t0 > ms) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const FAKE_QEMU = fileURLToPath(new URL('./fake-qemu.mjs', import.meta.url));

/**
 * Runs `fn` (a create) with the fake qemu of test/helpers/fake-qemu.mjs in place of qemu,
 * in the given mode. The worker copies the environment when it starts, so this is scoped.
 * The fake is a Node script of this repository, which a VM jail (src/vm/jail.ts) does not
 * hold: it runs unjailed (`CORRAL_JAIL=off`), as its sandbox's `info().jail` then says.
 */
export async function withFakeQemu<T>(mode: string, fn: () => Promise<T>): Promise<T> {
  process.env.CORRAL_QEMU = FAKE_QEMU;
  process.env.CORRAL_FAKE_GUEST = mode;
  process.env.CORRAL_JAIL = 'off';
  try {
    return await fn();
  } finally {
    delete process.env.CORRAL_QEMU;
    delete process.env.CORRAL_FAKE_GUEST;
    delete process.env.CORRAL_JAIL;
  }
}

/** A sandbox whose "guest" is the fake qemu in `mode` (cold boot: a fake cannot be a template). */
export function hostileSandbox(sup: Supervisor, mode: string): Promise<Sandbox> {
  return withFakeQemu(mode, () => Sandbox.builder(uniqueName(`evil-${mode}`)).template(false).supervisor(sup).create());
}
