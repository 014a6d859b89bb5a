/**
 * Runs every bench with `--json`, one after another, each as its own process (as a user runs
 * it), and keeps their figures: `bench/results.json` (every metric's median, p95, floor and
 * ratio, with the date, the machine and the commit) and the table in README.md between the
 * `bench:all` markers. Prints each bench's own output as it goes. Asserts nothing.
 *
 *   npm run bench:all [-- --only boot,template] [--no-readme]
 *
 * Sizes are kept small enough for a 2-core machine (~15 min in all): density with 20
 * sandboxes and the limit bench to 60; run those benches alone for the large figures.
 */
import { execFileSync, spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, loadavg, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type { Metric } from './stats.ts';

interface BenchResult {
  readonly bench: string;
  readonly metrics: Record<string, Metric>;
  /** The 1-minute load average when the bench ended (other work on the machine shows here). */
  load?: number;
}

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
/** Each bench, with the arguments bench:all gives it. */
const BENCHES: Readonly<Record<string, readonly string[]>> = {
  boot: ['bench/boot.bench.ts'],
  template: ['bench/template.bench.ts'],
  lifecycle: ['bench/lifecycle.bench.ts'],
  watch: ['bench/watch.bench.ts'],
  cpu: ['bench/cpu.bench.ts'],
  density: ['bench/density.bench.ts', '--n', '20'],
  limit: ['bench/limit.bench.ts', '--n', '60', '--step', '30'],
  jail: ['bench/jail.bench.ts'],
  image: ['bench/image.bench.ts'],
  cluster: ['bench/cluster.bench.ts'],
};

const { values: args } = parseArgs({ options: { only: { type: 'string' }, 'no-readme': { type: 'boolean', default: false } } });
const names = args.only ? args.only.split(',') : Object.keys(BENCHES);
for (const n of names) {
  if (!BENCHES[n]) throw new RangeError(`--only: unknown bench "${n}" (allowed: ${Object.keys(BENCHES).join(', ')})`);
}

/** Runs one bench, echoing its output; resolves with the JSON object on its last line. */
function run(name: string): Promise<BenchResult> {
  const [script, ...rest] = BENCHES[name]!;
  const tsx = join(root, 'node_modules/.bin/tsx');
  return new Promise((resolve, reject) => {
    const child = spawn(tsx, [join(root, script!), ...rest, '--json'], { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      process.stdout.write(d);
    });
    child.once('error', reject);
    child.once('close', (code, signal) => {
      if (code !== 0) return reject(new Error(`bench ${name} exited ${code ?? signal}`));
      const last = out.trimEnd().split('\n').at(-1) ?? '';
      try {
        resolve(JSON.parse(last) as BenchResult);
      } catch (err) {
        reject(new Error(`bench ${name} printed no JSON line last: ${last.slice(0, 200)}`, { cause: err }));
      }
    });
  });
}

const fmt = (x: number | undefined) => (x === undefined ? '' : Math.abs(x) >= 100 ? x.toFixed(0) : Math.abs(x) >= 10 ? x.toFixed(1) : x.toFixed(2));

const results: BenchResult[] = [];
const failed: string[] = [];
for (const name of names) {
  console.log(`\n=== bench:all — ${name} ===`);
  try {
    const r = await run(name);
    r.load = loadavg()[0]!;
    results.push(r);
  } catch (err) {
    // One bench failing must not lose the others' figures: say so, carry on, exit non-zero.
    console.error(`bench:all: ${(err as Error).message}`);
    failed.push(name);
  }
}

const commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root, encoding: 'utf8' }).trim();
const machine = `${availableParallelism()} cores (${cpus()[0]?.model ?? 'unknown'}), ${(totalmem() / 2 ** 30).toFixed(0)} GiB, node ${process.version}`;
const at = new Date().toISOString();
writeFileSync(join(root, 'bench/results.json'), `${JSON.stringify({ at, commit, machine, results }, null, 1)}\n`);

const rows = results.flatMap((r) =>
  Object.entries(r.metrics).map(([m, v]) => `| ${r.bench} (${r.load?.toFixed(1) ?? '?'}) | ${m} | ${v.unit} | ${fmt(v.median)} | ${fmt(v.p95)} | ${fmt(v.floor)} | ${v.ratio === undefined ? '' : `×${v.ratio.toFixed(2)}`} |`),
);
const table = [
  `\`npm run bench:all\` at ${commit}, ${at.slice(0, 10)}, ${machine}; every floor measured in the same run (\`bench/results.json\` has the figures as data). In parentheses the 1-minute load average as each bench ended: above ~1.5 other work shared the 2 cores, and latencies and throughputs are inflated (ratios less so).`,
  '',
  '| bench (load) | metric | unit | median | p95 | floor | ratio |',
  '|---|---|---|---|---|---|---|',
  ...rows,
].join('\n');
console.log(`\n${table}`);
if (!args['no-readme'] && !args.only) {
  const readme = join(root, 'README.md');
  const text = readFileSync(readme, 'utf8');
  const start = '<!-- bench:all:start -->';
  const end = '<!-- bench:all:end -->';
  const a = text.indexOf(start);
  const b = text.indexOf(end);
  if (a < 0 || b < a) throw new Error(`README.md has no ${start} … ${end} section to write the table into`);
  writeFileSync(readme, `${text.slice(0, a + start.length)}\n${table}\n${text.slice(b)}`);
  console.log('README.md: table written between the bench:all markers');
}
if (failed.length) {
  console.error(`bench:all: ${failed.length} bench(es) failed: ${failed.join(', ')}`);
  process.exitCode = 1;
}
