/**
 * The driver of the LMDB concurrency test: several writer processes (test/store/helpers/
 * storeWriter.ts, each with worker threads) on one state dir, some SIGKILLed at seeded
 * points (counted in the writers' progress ticks, not in time) and replaced by a writer that
 * takes their sandboxes over, as a restart after a crash does; then a fresh process opens the
 * store and validates all of it (storeChecks.ts).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { prng } from '../../helpers/prng.ts';

const WRITER = fileURLToPath(new URL('./storeWriter.ts', import.meta.url));
const CHECKER = fileURLToPath(new URL('./storeChecks.ts', import.meta.url));

export interface ChaosOptions {
  readonly stateDir: string;
  readonly seed: number;
  /** Writer processes running at once. */
  readonly writers: number;
  /** Worker threads per writer process (each a writer of its own names). */
  readonly threads: number;
  /** Sandbox names per writer (process or thread). */
  readonly names: number;
  /** Events per writer. */
  readonly events: number;
  /** Most times one writer slot is killed and taken over. */
  readonly kills: number;
}

export interface ChaosResult {
  readonly killed: number;
  readonly finished: number;
  /** What the checker process counted in the store. */
  readonly records: number;
  readonly events: number;
  readonly logEntries: number;
  /** Everything the writers and the checker wrote on stderr. */
  readonly stderr: string;
}

interface Exit {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

function start(args: string[], onTick?: (child: ChildProcess, ticks: number) => void): { child: ChildProcess; exited: Promise<Exit> } {
  const child = spawn(process.execPath, ['--import', 'tsx', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  let ticks = 0;
  child.stdout!.setEncoding('utf8').on('data', (d: string) => {
    stdout += d;
    const n = d.split('tick\n').length - 1;
    for (let i = 0; i < n; i++) onTick?.(child, ++ticks);
  });
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const exited = new Promise<Exit>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
  return { child, exited };
}

/** Runs the writers to their end (or their kill), then the checker; throws if a writer or the check failed. */
export async function runChaos(o: ChaosOptions): Promise<ChaosResult> {
  const rand = prng(o.seed);
  const ticksPerLife = Math.floor(o.events / 25) * (1 + o.threads);
  let killed = 0;
  let finished = 0;
  let stderr = '';
  const failures: string[] = [];
  const children = new Set<ChildProcess>();
  const slot = async (i: number): Promise<void> => {
    for (let life = 0; ; life++) {
      // Seeded: whether this life is killed, and after how many of its ticks.
      const killAt = life < o.kills && rand() < 0.7 ? 1 + Math.floor(rand() * (ticksPerLife - 1)) : 0;
      const args = [WRITER, o.stateDir, `w${i}`, String(o.seed * 1000 + i * 10 + life), String(o.names), String(o.events), String(o.threads), String(life)];
      const w = start(args, (child, ticks) => {
        if (ticks === killAt) child.kill('SIGKILL');
      });
      children.add(w.child);
      const exit = await w.exited;
      children.delete(w.child);
      stderr += exit.stderr;
      if (exit.signal === 'SIGKILL' && killAt) {
        killed++;
        continue;
      }
      if (exit.code !== 0 || !exit.stdout.includes('done\n')) failures.push(`writer w${i} life ${life} exited ${exit.code ?? exit.signal}: ${exit.stderr.trim()}`);
      else finished++;
      return;
    }
  };
  try {
    await Promise.all(Array.from({ length: o.writers }, (_, i) => slot(i)));
  } finally {
    for (const c of children) c.kill('SIGKILL');
  }
  if (failures.length) throw new Error(`seed ${o.seed}: ${failures.join('\n')}`);
  const check = await start([CHECKER, o.stateDir]).exited;
  stderr += check.stderr;
  if (check.code !== 0) throw new Error(`seed ${o.seed}: the store does not check out: ${check.stderr.trim()}`);
  const counts = JSON.parse(check.stdout) as Pick<ChaosResult, 'records' | 'events' | 'logEntries'>;
  return { killed, finished, ...counts, stderr };
}
