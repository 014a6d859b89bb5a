/**
 * Every call settles, in plain Node processes (under vitest the runner keeps the event loop
 * alive and hides a promise that never settles; a plain script then ends with exit code 13).
 * Each scenario is a script of test/settle/scripts run with `node --import tsx`; the test
 * checks its exit code and output.
 */
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { ONE_LINER } from './scripts/oneLiner.ts';

const REPO = fileURLToPath(new URL('../..', import.meta.url));

function run(args: string[], cwd = REPO, env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { cwd, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stdout, stderr }));
  });
}

async function script(file: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return run(['--import', 'tsx', fileURLToPath(new URL(`./scripts/${file}`, import.meta.url))]);
}

describe('every call settles in a plain Node process', () => {
  it('replaces a live attached sandbox, a detached one and a stopped record', async () => {
    const r = await script('replace.ts');
    expect(r.stderr + r.stdout).not.toContain('Error');
    expect({ code: r.code, stdout: r.stdout }).toEqual({
      code: 0,
      stdout: 'replaced a live attached sandbox\nreplaced a detached sandbox\nreplaced a stopped record\nreplace ok\n',
    });
  });

  it('resolves stop, kill and drain at the stopped record, so remove right after works', async () => {
    const r = await script('endState.ts');
    expect(r.stderr).not.toContain('E_ILLEGAL_STATE');
    expect(r.code).toBe(0);
    for (const kind of ['attached', 'detached']) for (const verb of ['stop', 'kill', 'drain']) expect(r.stdout).toContain(`${kind} ${verb} then remove\n`);
    expect(r.stdout).toContain('Sandbox.get stop then remove\nend state ok\n');
  });

  it('rejects a call pending on an ended worker or a killed host with a code', async () => {
    const r = await script('diedPending.ts');
    expect({ code: r.code, stdout: r.stdout, stderr: r.stderr.includes('Error') ? r.stderr : '' }).toEqual({
      code: 0,
      stdout: 'worker ended: pending call rejected E_CLOSED\nhost killed: pending call rejected E_CLOSED\ndied ok\n',
      stderr: '',
    });
  });

  it('hosts a detached create in a spare host started after the one before, and ends unused spares', async () => {
    // Spares on, as users have them, in a state dir of this test's own (the spares are its).
    const stateDir = mkdtempSync(join(tmpdir(), 'corral-spare-'));
    try {
      const r = await run(['--import', 'tsx', fileURLToPath(new URL('./scripts/spareHost.ts', import.meta.url))], REPO, { CORRAL_STATE_DIR: stateDir, CORRAL_SPARE_HOST: '1' });
      expect({ code: r.code, stdout: r.stdout, stderr: r.stderr.includes('Error') ? r.stderr : '' }).toEqual({
        code: 0,
        stdout:
          'the first create left a spare\nthe spare hosted the next create, and a new spare followed\na spare ended with its socket\nan idle spare ended by itself\nspare ok\n',
        stderr: '',
      });
    } finally {
      rmSync(stateDir, { recursive: true, force: true });
    }
  });

  it('creates an attached sandbox from a node -e one-liner importing corral', async () => {
    // A user's project: corral (this repo) and tsx installed in its node_modules.
    const dir = mkdtempSync(join(tmpdir(), 'corral-settle-e-'));
    try {
      mkdirSync(join(dir, 'node_modules'));
      symlinkSync(REPO, join(dir, 'node_modules', 'corral'));
      symlinkSync(join(REPO, 'node_modules', 'tsx'), join(dir, 'node_modules', 'tsx'));
      const r = await run(['--import', 'tsx', '--input-type=module', '-e', ONE_LINER], dir);
      expect({ code: r.code, stdout: r.stdout, stderr: r.stderr.includes('Error') ? r.stderr : '' }).toEqual({ code: 0, stdout: 'from -e ok\n', stderr: '' });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
