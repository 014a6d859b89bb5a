/**
 * `npm run stress`: runs every user scenario (test/scenarios/scripts) N times, each in a fresh
 * Node process, and prints per scenario the runs, the exit-code histogram, median/p95 wall
 * time and the failures with their last lines of output. Exits 1 if any run failed.
 *
 *   npm run stress -- --runs 5 --parallel 2 --only lifecycle
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { EXPECTED, ScenarioFixtures } from '../test/scenarios/fixtures.ts';
import { runScenario, scenarioNames, type ScenarioResult } from '../test/scenarios/runScenario.ts';

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '100' },
    only: { type: 'string', multiple: true },
    parallel: { type: 'string', default: '1' },
  },
});
const all = scenarioNames();
const runs = positiveInt(values.runs!, '--runs', 100_000);
const parallel = positiveInt(values.parallel!, '--parallel', 8);
const only = values.only ?? [];
for (const name of only) if (!all.includes(name)) throw new RangeError(`--only: unknown scenario "${name}" (one of ${all.join(', ')})`);
const names = only.length > 0 ? only : all;

function positiveInt(raw: string, option: string, max: number): number {
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1 || n > max) throw new RangeError(`${option} must be an integer from 1 to ${max}, got "${raw}"`);
  return n;
}

/** Why a run failed, or null: a nonzero exit, other output than expected, or a process left behind. */
function failure(r: ScenarioResult): string | null {
  if (r.code !== 0) return `exit ${r.code ?? r.signal}`;
  const lines = r.stdout.split('\n').filter(Boolean);
  if (JSON.stringify(lines) !== JSON.stringify(EXPECTED[r.name])) return 'unexpected output';
  if (r.leftovers.length > 0) return `left behind: ${r.leftovers.join('; ')}`;
  return null;
}

const stateDir = mkdtempSync(join(tmpdir(), 'corral-stress-'));
const fixtures = new ScenarioFixtures();
const results = new Map<string, ScenarioResult[]>(names.map((n) => [n, []]));
// Run i of every scenario, then run i+1: a slow scenario does not hold one name's runs back-to-back.
const queue = Array.from({ length: runs }, () => names).flat();
let done = 0;
const started = Date.now();
// Ctrl-C / SIGTERM: start no new run, print the table of the runs so far, clean up.
let interrupted = false;
const interrupt = (signal: string) => {
  interrupted = true;
  queue.length = 0;
  process.stderr.write(`${signal}: no new runs; the table covers the runs so far\n`);
};
process.once('SIGINT', interrupt).once('SIGTERM', interrupt);
try {
  await Promise.all(
    Array.from({ length: parallel }, async () => {
      for (let name = queue.shift(); name !== undefined; name = queue.shift()) {
        const r = await runScenario(name, { stateDir, env: await fixtures.envFor(name), hardCapMs: 300_000 });
        results.get(name)!.push(r);
        const why = failure(r);
        process.stderr.write(`[${++done}/${runs * names.length}] ${name} ${(r.wallMs / 1000).toFixed(1)} s ${why ?? 'ok'}\n`);
      }
    }),
  );
} finally {
  await fixtures.close();
  rmSync(stateDir, { recursive: true, force: true });
}

const pct = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
const rows = [['scenario', 'runs', 'exit codes', 'failed', 'median s', 'p95 s']];
const failures: string[] = [];
let failed = 0;
for (const [name, rs] of results) {
  if (rs.length === 0) continue;
  const hist = new Map<string, number>();
  for (const r of rs) hist.set(String(r.code ?? r.signal), (hist.get(String(r.code ?? r.signal)) ?? 0) + 1);
  const walls = rs.map((r) => r.wallMs / 1000).sort((a, b) => a - b);
  const bad = rs.filter((r) => failure(r) !== null);
  failed += bad.length;
  for (const r of bad) {
    const tail = `${r.stdout}\n${r.stderr}`.trim().split('\n').slice(-8).map((l) => `    ${l}`).join('\n');
    failures.push(`${name}: ${failure(r)}\n${tail}`);
  }
  rows.push([name, String(rs.length), [...hist].map(([c, n]) => `${c}:${n}`).join(' '), String(bad.length), pct(walls, 50).toFixed(1), pct(walls, 95).toFixed(1)]);
}
const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
const line = (r: string[]) => `| ${r.map((c, i) => c.padEnd(widths[i]!)).join(' | ')} |`;
console.log(line(rows[0]!));
console.log(`|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`);
for (const r of rows.slice(1)) console.log(line(r));
console.log(`\n${interrupted ? 'interrupted: ' : ''}${runs} runs x ${names.length} scenarios, --parallel ${parallel}, ${((Date.now() - started) / 60_000).toFixed(1)} min, ${new Date().toISOString().slice(0, 10)}`);
if (failures.length > 0) console.log(`\nfailures:\n${failures.join('\n')}`);
const total = [...results.values()].reduce((n, rs) => n + rs.length, 0);
console.log(`${total - failed} passed, ${failed} failed`);
process.exitCode = failed > 0 || interrupted ? 1 : 0;
