import { readFileSync } from 'node:fs';
/** Shared fixtures for tests that boot real sandboxes. */
import { Supervisor } from '../../src/supervisor/Supervisor.ts';

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
export function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

/** Polls until `pred` holds or `ms` pass. For conditions no event announces (a pid gone). */
export async function until(pred: () => boolean, ms = 10_000, what = 'condition'): Promise<void> {
  const t0 = Date.now();
  while (!pred()) {
    if (Date.now() - t0 > ms) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
