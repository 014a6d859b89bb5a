/**
 * Runs one user scenario (test/scenarios/scripts/<name>.mjs, or <name>.ts for a TypeScript
 * user's script, run with tsx as such a user would) the way a user runs corral: a
 * plain Node process, in a temp dir whose node_modules/corral is a symlink to this repo, with
 * tsx's loader (the package's entry is TypeScript). Used by the vitest files beside it and by
 * `npm run stress` (scripts/stress.ts).
 */
import { spawn } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const SCRIPTS = join(ROOT, 'test/scenarios/scripts');
const TSX = join(ROOT, 'node_modules/tsx/dist/esm/index.mjs');

/** The environment variable every process of a run inherits: how leftovers are found. */
export const RUN_ENV = 'CORRAL_SCENARIO_RUN';

export interface ScenarioResult {
  readonly name: string;
  /** The script's exit code; null if it was killed (by the hard cap or a signal). */
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly wallMs: number;
  /** Processes still alive after the script ended that inherited its run id (qemu, detached hosts). */
  readonly leftovers: readonly string[];
}

export interface RunScenarioOptions {
  /** The CORRAL_STATE_DIR the script runs against (shared, so templates are reused). */
  readonly stateDir: string;
  /** More environment for the script (e.g. a test registry's host). */
  readonly env?: Readonly<Record<string, string>>;
  /**
   * A cap after which the script is SIGKILLed and reported with code null: a hung script is a
   * failure to report, not a reason for the caller to hang too.
   */
  readonly hardCapMs?: number;
}

/** The scenario names: one per script in test/scenarios/scripts (check.mjs is their helper). */
export function scenarioNames(): string[] {
  return readdirSync(SCRIPTS)
    .filter((f) => /\.(mjs|ts)$/.test(f) && f !== 'check.mjs' && !f.startsWith('_'))
    .map((f) => f.replace(/\.(mjs|ts)$/, ''))
    .sort();
}

/** Pids (with their argv) of live processes whose environment has `RUN_ENV=id`. */
export function processesOfRun(id: string): string[] {
  const needle = `${RUN_ENV}=${id}`;
  const found: string[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      if (stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z')) continue; // a zombie is dead
      if (!readFileSync(`/proc/${entry}/environ`, 'latin1').split('\0').includes(needle)) continue;
      found.push(`${entry} ${readFileSync(`/proc/${entry}/cmdline`, 'latin1').split('\0').join(' ').trim()}`);
    } catch (err) {
      // Ended while we looked (ENOENT, ESRCH), or not ours to read (EACCES: another user's,
      // or the container's init): a process the script started runs as us and is readable.
      if (!['ENOENT', 'ESRCH', 'EACCES'].includes((err as NodeJS.ErrnoException).code ?? '')) throw err;
    }
  }
  return found;
}

/** Runs scenario `name` once in a fresh process and a fresh temp dir; the dir is removed after. */
export async function runScenario(name: string, options: RunScenarioOptions): Promise<ScenarioResult> {
  const id = `${name}-${process.pid}-${randomBytes(4).toString('hex')}`;
  const dir = mkdtempSync(join(tmpdir(), 'corral-scenario-'));
  try {
    mkdirSync(join(dir, 'node_modules'));
    // A user's project: ESM, so a .ts script is a module, as in a TypeScript project of theirs.
    writeFileSync(join(dir, 'package.json'), '{ "type": "module" }\n');
    symlinkSync(ROOT, join(dir, 'node_modules/corral'));
    const file = existsSync(join(SCRIPTS, `${name}.ts`)) ? `${name}.ts` : `${name}.mjs`;
    copyFileSync(join(SCRIPTS, file), join(dir, file));
    copyFileSync(join(SCRIPTS, 'check.mjs'), join(dir, 'check.mjs'));
    copyFileSync(join(SCRIPTS, 'check.d.mts'), join(dir, 'check.d.mts'));
    const t0 = performance.now();
    const child = spawn(process.execPath, ['--import', TSX, file], {
      cwd: dir,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...options.env, CORRAL_STATE_DIR: options.stateDir, [RUN_ENV]: id, SCENARIO_ID: shortId(id) },
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const cap = setTimeout(() => child.kill('SIGKILL'), options.hardCapMs ?? 600_000);
    const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve, reject) => {
      child.once('error', reject);
      child.once('close', (c, s) => resolve([c, s]));
    }).finally(() => clearTimeout(cap));
    const wallMs = performance.now() - t0;
    return { name, code, signal, stdout, stderr, wallMs, leftovers: processesOfRun(id) };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** A short, name-safe id for the script to put in its sandbox names. */
function shortId(id: string): string {
  return `s${id.slice(id.lastIndexOf('-') + 1)}`;
}
