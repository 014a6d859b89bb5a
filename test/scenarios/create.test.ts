// The seed page's create examples as standalone user processes (see runScenario.ts): every
// builder option, build() -> JSON -> create, replace, pull policy never.
import { afterAll, describe, expect, it } from 'vitest';
import { EXPECTED, ScenarioFixtures } from './fixtures.ts';
import { runScenario } from './runScenario.ts';

const fixtures = new ScenarioFixtures();
afterAll(() => fixtures.close());

describe('create scenarios, each a plain node process', () => {
  it.each(['create-options', 'config-json', 'replace', 'pull-never'])('%s exits 0 with its expected lines and leaves nothing behind', async (name) => {
    const r = await runScenario(name, { stateDir: process.env.CORRAL_STATE_DIR!, env: await fixtures.envFor(name), hardCapMs: 240_000 });
    expect({ code: r.code, stdout: r.stdout.split('\n').filter(Boolean), stderr: r.code === 0 ? '' : r.stderr }).toEqual({ code: 0, stdout: EXPECTED[name], stderr: '' });
    expect(r.leftovers).toEqual([]);
  }, 280_000);
});
