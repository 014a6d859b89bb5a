import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CONFIG = fileURLToPath(new URL('./fixtures/reporter/vitest.config.ts', import.meta.url));

/** Runs vitest, in a child process of its own, on one fixture file; returns its exit code and closing lines. */
function runFixture(file: string): { status: number | null; tail: string[] } {
  // The child must not believe it runs inside this vitest worker.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('VITEST') && k !== 'TEST' && k !== 'NODE_ENV'));
  const r = spawnSync(process.execPath, [fileURLToPath(new URL('../node_modules/vitest/vitest.mjs', import.meta.url)), 'run', '--config', CONFIG], {
    cwd: ROOT,
    env: { ...env, CORRAL_REPORTER_FIXTURE: file, NO_COLOR: '1' },
    encoding: 'utf8',
  });
  if (r.error) throw r.error;
  const lines = r.stdout.trimEnd().split('\n');
  return { status: r.status, tail: lines.filter((l) => l.startsWith('failed outside a test:') || /^\d+ passed, \d+ failed, \d+ skipped$/.test(l)) };
}

describe('the closing line of a run', () => {
  it('counts a file whose beforeAll threw as failed, and names the hook error', () => {
    const { status, tail } = runFixture('beforeAllThrows.fixture.ts');
    expect(status).toBe(1);
    expect(tail).toEqual([
      'failed outside a test: beforeAllThrows.fixture.ts: the fixture beforeAll fails on purpose',
      '0 passed, 1 failed, 2 skipped',
    ]);
  });

  it('counts a failed beforeAll of a nested describe as failed', () => {
    const { status, tail } = runFixture('nestedBeforeAllThrows.fixture.ts');
    expect(status).toBe(1);
    expect(tail).toEqual([
      'failed outside a test: nestedBeforeAllThrows.fixture.ts > a suite whose beforeAll fails: the nested beforeAll fails on purpose',
      '1 passed, 1 failed, 1 skipped',
    ]);
  });

  it('counts a failed afterAll as failed even though every test passed', () => {
    const { status, tail } = runFixture('afterAllThrows.fixture.ts');
    expect(status).toBe(1);
    expect(tail).toEqual(['failed outside a test: afterAllThrows.fixture.ts: the fixture afterAll fails on purpose', '1 passed, 1 failed, 0 skipped']);
  });

  it('counts an unhandled rejection as failed', () => {
    const { status, tail } = runFixture('unhandled.fixture.ts');
    expect(status).toBe(1);
    expect(tail).toEqual(['failed outside a test: unhandled error: the fixture rejection nobody handles', '1 passed, 1 failed, 0 skipped']);
  });

  it('counts passed and skipped tests of a clean file, with no failure', () => {
    const { status, tail } = runFixture('passes.fixture.ts');
    expect(status).toBe(0);
    expect(tail).toEqual(['1 passed, 0 failed, 1 skipped']);
  });
});
