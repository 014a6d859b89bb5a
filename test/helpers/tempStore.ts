/**
 * A store of its own for each test of the calling `describe` block: a fresh state dir opened
 * before the test, closed and removed after it. `use` receives both for the test to read.
 *
 * @example
 * let store: Store;
 * withTempStore('replay', (_dir, s) => (store = s));
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach } from 'vitest';
import { Store } from '../../src/store/Store.ts';

export function withTempStore(prefix: string, use: (dir: string, store: Store) => void): void {
  let current: { dir: string; store: Store } | undefined;
  beforeEach(() => {
    const dir = mkdtempSync(join(tmpdir(), `corral-${prefix}-`));
    current = { dir, store: Store.open(dir) };
    use(dir, current.store);
  });
  afterEach(async () => {
    if (!current) return;
    await current.store.close();
    rmSync(current.dir, { recursive: true, force: true });
    current = undefined;
  });
}
