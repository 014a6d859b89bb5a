// The pool's placement and crash bookkeeping, with real worker threads hosting real (not
// started) sandbox actors: no VM is needed to see which worker takes which actor, or who is
// told when a worker dies. The VM side of a crash is in crash.test.ts.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MessageChannel } from 'node:worker_threads';
import { afterAll, describe, expect, it } from 'vitest';
import { normalizeConfig } from '../../src/config.ts';
import type { CorralError } from '../../src/errors.ts';
import { SandboxPool, type HostedActor } from '../../src/pool/SandboxPool.ts';

const stateDir = mkdtempSync(join(tmpdir(), 'corral-pool-test-'));
afterAll(() => rmSync(stateDir, { recursive: true, force: true }));

function hostOne(pool: SandboxPool, name: string, lost: CorralError[]): { actor: HostedActor; close(): void } {
  const control = new MessageChannel();
  const data = { config: normalizeConfig({ name }), stateDir, control: control.port2 };
  const actor = pool.host(data, [control.port2], (e) => lost.push(e));
  return { actor, close: () => control.port1.close() };
}

describe('SandboxPool', () => {
  it('puts each actor on the least-loaded worker and starts no more workers than its size', async () => {
    const pool = new SandboxPool({ workers: 2 });
    const lost: CorralError[] = [];
    try {
      const hosted = ['p-a', 'p-b', 'p-c', 'p-d', 'p-e'].map((n) => hostOne(pool, n, lost));
      expect(pool.workerCount).toBe(2);
      expect([...pool.loads].sort()).toEqual([2, 3]);
      expect(new Set(hosted.map((h) => h.actor.threadId)).size).toBe(2);
      // A released actor frees its place: the next one goes to the worker it left.
      const left = hosted[0]!.actor.threadId;
      await hosted[0]!.actor.release();
      await hosted[2]!.actor.release();
      expect(hostOne(pool, 'p-f', lost).actor.threadId).toBe(left);
      for (const h of hosted) h.close();
      expect(lost).toEqual([]);
    } finally {
      await pool.close();
    }
  });

  it('tells the owners of a dead worker\'s actors, only them, and replaces the worker', async () => {
    const pool = new SandboxPool({ workers: 2, warmDelayMs: 0 });
    const lostA: CorralError[] = [];
    const lostB: CorralError[] = [];
    try {
      const a1 = hostOne(pool, 'q-a1', lostA);
      const b = hostOne(pool, 'q-b', lostB);
      const a2 = hostOne(pool, 'q-a2', lostA);
      expect(a1.actor.threadId).toBe(a2.actor.threadId);
      await a1.actor.crashWorker();
      expect(lostA.map((e) => e.code)).toEqual(['E_WORKER_CRASHED', 'E_WORKER_CRASHED']);
      expect(lostA[0]!.message).toContain('test-only crash');
      expect(lostB).toEqual([]);
      await new Promise<void>((resolve) => {
        const check = () => (pool.workerCount === 2 ? resolve() : setImmediate(check));
        check();
      });
      expect([...pool.loads].sort()).toEqual([0, 1]);
      // A release after the crash is harmless; the next actor goes to the fresh worker.
      await a1.actor.release();
      expect(hostOne(pool, 'q-c', lostA).actor.threadId).not.toBe(b.actor.threadId);
      for (const h of [a1, a2, b]) h.close();
    } finally {
      await pool.close();
    }
    expect(() => hostOne(pool, 'q-late', lostA)).toThrow(expect.objectContaining({ code: 'E_CLOSED' }));
  });

  it("in isolation 'worker' gives every actor a thread of its own and ends it on release", async () => {
    // No spare started meanwhile: each worker now ends once it has loaded, which can take longer than the default warm delay.
    const pool = new SandboxPool({ isolation: 'worker', workers: 1, warmDelayMs: 600_000 });
    const lost: CorralError[] = [];
    try {
      const hosted = ['r-a', 'r-b', 'r-c'].map((n) => hostOne(pool, n, lost));
      expect(new Set(hosted.map((h) => h.actor.threadId)).size).toBe(3);
      await Promise.all(hosted.map((h) => h.actor.release()));
      expect(pool.workerCount).toBe(0);
      for (const h of hosted) h.close();
      expect(lost).toEqual([]);
    } finally {
      await pool.close();
    }
  });
});
