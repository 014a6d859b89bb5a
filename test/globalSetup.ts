import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Every test run gets a state dir of its own, removed at the end. */
export default function setup(): () => void {
  const dir = mkdtempSync(join(tmpdir(), 'corral-test-state-'));
  process.env.CORRAL_STATE_DIR = dir;
  // A detached create leaves a spare host behind (src/link/spareHost.ts), which outlives
  // the test file that made it by design; each file must end with no process of its own left
  // (test/leakCheck.ts). test/settle/settle.test.ts runs them, on, in a script of its own.
  process.env.CORRAL_SPARE_HOST ??= '0';
  return () => rmSync(dir, { recursive: true, force: true });
}
