// LMDB under real concurrency: writer processes, each with worker threads, write records,
// replay and exec logs into one state dir through the runtime's own classes (Store,
// ReplayLog, ExecLog, ImageIndex, the templates index) while some are SIGKILLed at seeded
// points and taken over by a successor; then a fresh process opens the store and checks every
// record, every replay log (seq gapless) and every exec log. CORRAL_STORE_SOAK=N runs N seeds
// with more writers (npm run soak does).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { runChaos } from './helpers/storeChaos.ts';

const soak = Number(process.env.CORRAL_STORE_SOAK ?? 0);
const seeds = soak > 0 ? Array.from({ length: soak }, (_, i) => 1000 + i) : [Number(process.env.CORRAL_STORE_SEED ?? 7)];

describe('the LMDB store under concurrent writers that get killed', () => {
  for (const seed of seeds) {
    it(`stays valid and gapless (seed ${seed})`, async () => {
      const stateDir = mkdtempSync(join(tmpdir(), 'corral-store-'));
      try {
        const r = await runChaos({ stateDir, seed, writers: soak ? 4 : 3, threads: 2, names: 3, events: soak ? 1500 : 400, kills: soak ? 3 : 2 });
        expect(r.stderr).not.toMatch(/MDB_|lmdb|Error/i);
        expect(r.killed).toBeGreaterThan(0);
        expect(r.finished).toBe(soak ? 4 : 3);
        // 3 names per writer per thread (main + 2 workers), each slot's successor reusing them.
        expect(r.records).toBe((soak ? 4 : 3) * 3 * 3);
        expect(r.events).toBeGreaterThan(0);
        expect(r.logEntries).toBeGreaterThan(0);
      } finally {
        rmSync(stateDir, { recursive: true, force: true });
      }
    }, 600_000);
  }
});
