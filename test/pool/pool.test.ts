// The sandbox pool, from a user's script: sandboxes share a few worker threads (or get one
// each in strict isolation), each answers on its own, and an idle supervisor does not keep
// the process alive (the script exits 0 without closing it; an unsettled call would make
// Node exit with 13). Real VMs, each scenario a standalone Node process.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { Sandbox } from '../../src/sdk/Sandbox.ts';
import { Supervisor } from '../../src/supervisor/Supervisor.ts';
import { uniqueName, withFakeQemu } from '../helpers/sandbox.ts';

const SCRIPT = fileURLToPath(new URL('./pool-script.ts', import.meta.url));

function runScript(...args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', SCRIPT, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: process.env });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  return new Promise((resolve) => child.once('exit', (code) => resolve({ code, stdout, stderr })));
}

describe('the sandbox pool', () => {
  it('hosts three sandboxes on two shared workers, and the script ends on its own', async () => {
    const r = await runScript('shared', '2');
    expect(r.stderr).not.toMatch(/Error/);
    expect(r.code).toBe(0);
    const facts = JSON.parse(r.stdout.split('\n')[0]!) as { outs: string[]; threads: number; workers: number; loads: number[] };
    expect(facts.outs.map((o) => o.split('\n')[0])).toEqual(['0', '1', '2']);
    expect(facts.outs.map((o) => o.split('\n')[1])).toEqual([0, 1, 2].map((i) => expect.stringMatching(new RegExp(`^pool-shared-\\d+-${i}$`))));
    expect(facts.threads).toBe(2);
    expect(facts.workers).toBe(2);
    expect([...facts.loads].sort()).toEqual([1, 2]);
  });

  it("gives each sandbox a worker of its own in isolation 'worker'", async () => {
    const r = await runScript('worker', '1');
    expect(r.stderr).not.toMatch(/Error/);
    expect(r.code).toBe(0);
    const facts = JSON.parse(r.stdout.split('\n')[0]!) as { outs: string[]; threads: number };
    expect(facts.outs.map((o) => o.split('\n')[0])).toEqual(['0', '1', '2']);
    expect(facts.threads).toBe(3);
  });

  it("keeps each actor's runtime variables its own when two share a worker", async () => {
    // One worker: the fake-qemu sandbox and the real one are actors of the same thread.
    const sup = new Supervisor({ stateDir: process.env.CORRAL_STATE_DIR!, workers: 1 });
    const names = [uniqueName('pool-fake'), uniqueName('pool-real')];
    try {
      const fake = await withFakeQemu('mute', () => Sandbox.builder(names[0]!).template(false).supervisor(sup).create());
      const real = await Sandbox.builder(names[1]!).supervisor(sup).create();
      expect(sup.get(names[0]!)!.threadId).toBe(sup.get(names[1]!)!.threadId);
      const cmdline = async (s: Sandbox) => readFileSync(`/proc/${(await s.info()).pid}/cmdline`, 'utf8');
      expect(await cmdline(fake)).toContain('fake-qemu.mjs');
      expect(await cmdline(real)).toContain('qemu-system');
      expect((await real.exec('echo', ['real'])).stdout).toBe('real\n');
      await Promise.all([fake.kill(), real.stop()]);
    } finally {
      for (const n of names) await Sandbox.remove(n, { supervisor: sup }).catch((e: Error) => console.warn(e.message));
      await sup.close();
    }
  });

  it('refuses a pool size or isolation it does not know, naming the option', () => {
    const stateDir = process.env.CORRAL_STATE_DIR!;
    for (const workers of [0, -1, 1.5, Number.NaN]) {
      expect(() => new Supervisor({ stateDir, workers })).toThrow(expect.objectContaining({ code: 'E_INVALID_OPTION', option: 'workers', message: expect.stringContaining('a positive integer') }));
    }
    expect(() => new Supervisor({ stateDir, isolation: 'thread' as never })).toThrow(
      expect.objectContaining({ code: 'E_INVALID_OPTION', option: 'isolation', message: expect.stringContaining('"shared", "worker"') }),
    );
  });
});
