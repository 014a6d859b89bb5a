// Kept apart from runScenario.ts, which scripts/stress.ts also imports outside vitest.
import { afterAll, describe, expect, it } from 'vitest';
import { EXPECTED, ScenarioFixtures } from './fixtures.ts';
import { runScenario } from './runScenario.ts';

/**
 * One vitest case per scenario: each runs as its own plain Node process, exits 0, prints
 * exactly its expected lines (test/scenarios/fixtures.ts) and leaves no process behind.
 */
export function scenarioCases(title: string, names: readonly string[]): void {
  const fixtures = new ScenarioFixtures();
  afterAll(() => fixtures.close());
  describe(title, () => {
    it.each(names)('%s exits 0 with its expected lines and leaves nothing behind', async (name) => {
      const r = await runScenario(name, { stateDir: process.env.CORRAL_STATE_DIR!, env: await fixtures.envFor(name), hardCapMs: 240_000 });
      expect({ code: r.code, stdout: r.stdout.split('\n').filter(Boolean), stderr: r.code === 0 ? '' : r.stderr }).toEqual({ code: 0, stdout: EXPECTED[name], stderr: '' });
      expect(r.leftovers).toEqual([]);
    }, 280_000);
  });
}
