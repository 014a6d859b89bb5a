import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Every test run gets a state dir of its own, removed at the end. */
export default function setup(): () => void {
  const dir = mkdtempSync(join(tmpdir(), 'corral-test-state-'));
  process.env.CORRAL_STATE_DIR = dir;
  return () => rmSync(dir, { recursive: true, force: true });
}
