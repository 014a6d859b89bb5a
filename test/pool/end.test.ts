// How a sandbox worker ends: asked by its pool, it disposes its actors, commits and closes its
// LMDB, and exits by itself; terminate() only after a deadline. Real worker threads, real
// LMDB, and for the write a real VM.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { MessageChannel } from 'node:worker_threads';
import { afterAll, describe, expect, it } from 'vitest';
import { normalizeConfig } from '../../src/config.ts';
import { Sandbox, Supervisor } from '../../src/index.ts';
import { SandboxPool } from '../../src/pool/SandboxPool.ts';
import { uniqueName } from '../helpers/sandbox.ts';

const SCRIPT = fileURLToPath(new URL('./end-script.ts', import.meta.url));
const CHECK = fileURLToPath(new URL('../helpers/checkStore.ts', import.meta.url));
const stateDir = mkdtempSync(join(tmpdir(), 'corral-end-test-'));
afterAll(() => rmSync(stateDir, { recursive: true, force: true }));

function run(args: string[]): Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.once('error', reject);
    child.once('exit', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
}

describe('a sandbox worker asked to end', () => {
  it('ends by itself at any moment of its start, and the process lives on', async () => {
    const r = await run([SCRIPT, stateDir, '8']);
    expect(r.stderr).not.toContain('FATAL ERROR');
    expect(r.stderr).not.toContain('did not end within');
    expect({ code: r.code, signal: r.signal }).toEqual({ code: 0, signal: null });
    expect(JSON.parse(r.stdout)).toEqual({ pools: 8, lost: [] });
    // The store the workers had open is whole.
    const check = await run([CHECK, stateDir, 'none']);
    expect(check.code).toBe(0);
  });

  it('is not needed: a process that ends with its workers still loading exits 0', async () => {
    const r = await run([SCRIPT, stateDir, '4', 'exit']);
    expect(r.stderr).not.toContain('FATAL ERROR');
    expect({ code: r.code, signal: r.signal }).toEqual({ code: 0, signal: null });
    expect(JSON.parse(r.stdout)).toEqual({ pools: 4, lost: [] });
  });

  it('that does not answer is terminated after the deadline, which is logged', async () => {
    const pool = new SandboxPool({ workers: 1, endTimeoutMs: 200 });
    const control = new MessageChannel();
    const stderr: string[] = [];
    const write = process.stderr.write.bind(process.stderr);
    try {
      const actor = pool.host({ config: normalizeConfig({ name: 'end-stalled' }), stateDir, control: control.port2 }, [control.port2], () => {});
      // Busy for longer than any run of this test: only terminate() ends it.
      actor.stallWorker(600_000);
      process.stderr.write = ((chunk: string | Uint8Array, ...rest: unknown[]) => {
        stderr.push(String(chunk));
        return (write as (...a: unknown[]) => boolean)(chunk, ...rest);
      }) as typeof process.stderr.write;
      await pool.close();
    } finally {
      process.stderr.write = write;
      control.port1.close();
    }
    expect(pool.workerCount).toBe(0);
    expect(stderr.join('')).toMatch(/sandbox worker \d+ did not end within 200 ms of being asked to: terminated/);
  });

  it('while its sandbox writes output leaves the store whole, for another process and for this one', async () => {
    const name = uniqueName('end-write');
    const sup = new Supervisor({ stateDir: process.env.CORRAL_STATE_DIR!, isolation: 'worker' });
    let destroyed = false;
    try {
      const sb = await Sandbox.builder(name).supervisor(sup).create();
      const exec = await sb.execStream('sh', ['-c', 'while :; do head -c 65536 /dev/zero; done']);
      // Output is streaming, so its worker is recording it: end the worker now.
      const it = exec[Symbol.asyncIterator]();
      let item = await it.next();
      while (!item.done && item.value.type !== 'stdout') item = await it.next();
      expect(item.done).toBe(false);
      await sup.destroy();
      destroyed = true;
    } finally {
      if (!destroyed) await sup.destroy();
    }
    const check = await run([CHECK, process.env.CORRAL_STATE_DIR!, name]);
    expect(check.stderr).toBe('');
    expect(check.code).toBe(0);
    const found = JSON.parse(check.stdout) as { events: number; outputs: number; holes: number; dangling: number };
    expect(found.outputs).toBeGreaterThan(0);
    expect({ holes: found.holes, dangling: found.dangling }).toEqual({ holes: 0, dangling: 0 });
    // And this process writes to it again: destroy() recorded the sandbox killed, so a remove here takes it.
    const after = new Supervisor({ stateDir: process.env.CORRAL_STATE_DIR! });
    try {
      expect(after.store.getSandbox(name)).toMatchObject({ status: 'stopped', stopReason: 'killed' });
      await Sandbox.remove(name, { supervisor: after });
      expect(after.store.getSandbox(name)).toBeUndefined();
    } finally {
      await after.close();
    }
  });
});
