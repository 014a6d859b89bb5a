/**
 * Soak run (`npm run soak`, not part of `npm test`): prints the figures of the README's
 * "Reliability and security" section.
 *
 * 1. Output floods: a hostile guest (test/helpers/fake-qemu.mjs, "flood" mode) writes
 *    SOAK_FLOOD_MIB MiB (default "256,1024") of stdout as fast as the host reads it; a
 *    slow consumer checksums it. Prints throughput and the peak RSS of this process
 *    (anonymous and file-backed: LMDB's map counts as the latter).
 * 2. Load: SOAK_N real sandboxes (default 2) × SOAK_M concurrent execs each (default 4),
 *    SOAK_ROUNDS rounds (default 5); each exec writes SOAK_KIB KiB (default 256) of random
 *    bytes and their sha256 (computed in the guest) on stderr: the host checks every byte.
 *    Prints throughput and p50/p99 exec latency, then checks that no fd, qemu or child
 *    process outlived the run.
 *
 * 3. stdout throughput of a real guest (`cat` of 64 MiB, checksummed; SOAK_CAT=0 skips it).
 *
 * Exits non-zero when a check fails. `npm run soak` then runs test/sdk/faults.test.ts with
 * CORRAL_FAULT_KILLS=12 SIGKILLs of the embedding process (2 in the default test run).
 *
 * @example
 * SOAK_N=3 SOAK_M=6 SOAK_FLOOD_MIB=1024 npm run soak
 */

import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { quantile } from '../../bench/stats.ts';
import { Sandbox } from '../../src/index.ts';
import { Supervisor } from '../../src/supervisor/Supervisor.ts';
import { consumeFlood } from '../helpers/flood.ts';
import { hostileSandbox } from '../helpers/sandbox.ts';

const MiB = 1024 * 1024;
const env = (k: string, d: string) => process.env[k] ?? d;
const floods = env('SOAK_FLOOD_MIB', '256,1024').split(',').filter(Boolean).map(Number);
const N = Number(env('SOAK_N', '2'));
const M = Number(env('SOAK_M', '4'));
const ROUNDS = Number(env('SOAK_ROUNDS', '5'));
const KIB = Number(env('SOAK_KIB', '256'));

const failures: string[] = [];
const check = (ok: boolean, what: string) => {
  if (!ok) failures.push(what);
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}`);
};

/** VmRSS / RssAnon / RssFile of this process, MiB. */
function rss(): { total: number; anon: number; file: number } {
  const s = readFileSync('/proc/self/status', 'utf8');
  const kib = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(s)?.[1] ?? 0);
  return { total: kib('VmRSS') / 1024, anon: kib('RssAnon') / 1024, file: kib('RssFile') / 1024 };
}

const fdCount = () => readdirSync('/proc/self/fd').length;

/** Pids of processes whose command line mentions `needle` (our state dir / run dirs). */
function processesMentioning(needle: string): number[] {
  const out: number[] = [];
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p) || Number(p) === process.pid) continue;
    try {
      if (readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(needle)) out.push(Number(p));
    } catch {
      /* gone */
    }
  }
  return out;
}

/** Live (not zombie) children of this process, but tsx's esbuild service and ps itself. */
function children(): string[] {
  try {
    return execFileSync('ps', ['-o', 'pid=,stat=,comm=', '--ppid', String(process.pid)], { encoding: 'utf8' })
      .split('\n')
      .map((l) => l.trim().split(/\s+/))
      .filter(([pid, stat, comm]) => pid && !stat?.startsWith('Z') && comm !== 'ps' && comm !== 'esbuild')
      .map(([pid, , comm]) => `${pid} ${comm}`);
  } catch {
    return []; // ps exits 1 when there are none
  }
}

async function flood(sup: Supervisor, mib: number): Promise<void> {
  process.env.CORRAL_FAKE_FLOOD_MIB = String(mib);
  const evil = await hostileSandbox(sup, 'flood').finally(() => delete process.env.CORRAL_FAKE_FLOOD_MIB);
  try {
    const r0 = rss();
    const peak = { ...r0 };
    const sample = () => {
      const r = rss();
      peak.total = Math.max(peak.total, r.total);
      peak.anon = Math.max(peak.anon, r.anon);
      peak.file = Math.max(peak.file, r.file);
    };
    const timer = setInterval(sample, 25);
    const { intact, ms } = await consumeFlood(evil, mib);
    clearInterval(timer);
    sample();
    const s = ms / 1000;
    console.log(
      `flood ${mib} MiB: ${(mib / s).toFixed(0)} MiB/s; RSS ${r0.total.toFixed(0)} → peak ${peak.total.toFixed(0)} MiB ` +
        `(+${(peak.total - r0.total).toFixed(0)}: anon +${(peak.anon - r0.anon).toFixed(0)}, file-backed +${(peak.file - r0.file).toFixed(0)})`,
    );
    check(intact, `flood ${mib} MiB: every byte arrived once, in order`);
  } finally {
    await evil.kill().catch(() => {});
  }
}

interface ExecFigures {
  ms: number;
  bytes: number;
}

/** One exec: KIB KiB of random bytes on stdout, their sha256 on stderr. */
async function checkedExec(sb: Sandbox, tag: string): Promise<ExecFigures> {
  const script = `head -c ${KIB * 1024} /dev/urandom > /tmp/${tag}; cat /tmp/${tag}; sha256sum /tmp/${tag} >&2; rm /tmp/${tag}`;
  const t0 = performance.now();
  const r = await sb.exec('sh', ['-c', script]);
  const ms = performance.now() - t0;
  const got = createHash('sha256').update(r.stdoutBytes).digest('hex');
  const want = r.stderr.split(/\s+/)[0];
  if (r.code !== 0 || r.stdoutBytes.length !== KIB * 1024 || got !== want) {
    throw new Error(`exec ${tag}: code ${r.code}, ${r.stdoutBytes.length} bytes, sha256 ${got} (guest says ${want}), stderr ${r.stderr.slice(0, 200)}`);
  }
  return { ms, bytes: r.stdoutBytes.length };
}

async function load(sup: Supervisor): Promise<void> {
  const t0 = performance.now();
  const boxes = await Promise.all(Array.from({ length: N }, (_, i) => Sandbox.builder(`soak-${process.pid}-${i}`).supervisor(sup).create()));
  console.log(`load: ${N} sandboxes up in ${(performance.now() - t0).toFixed(0)} ms`);
  const figures: ExecFigures[] = [];
  const errors: Error[] = [];
  const t1 = performance.now();
  try {
    for (let round = 0; round < ROUNDS; round++) {
      await Promise.all(
        boxes.flatMap((sb, i) =>
          Array.from({ length: M }, (_, j) =>
            checkedExec(sb, `s${i}-${round}-${j}`).then(
              (f) => void figures.push(f),
              (e: Error) => void errors.push(e),
            ),
          ),
        ),
      );
    }
  } finally {
    const s = (performance.now() - t1) / 1000;
    await Promise.all(boxes.map((sb) => sb.stop().catch((e: Error) => errors.push(e))));
    const ms = figures.map((f) => f.ms);
    const bytes = figures.reduce((a, f) => a + f.bytes, 0);
    console.log(
      `load: ${N} sandboxes × ${M} concurrent execs × ${ROUNDS} rounds, ${KIB} KiB each: ${figures.length} execs in ${s.toFixed(1)} s ` +
        `(${(figures.length / s).toFixed(1)} execs/s, ${(bytes / MiB / s).toFixed(1)} MiB/s checked); latency p50 ${quantile(ms, 0.5).toFixed(0)} ms, p99 ${quantile(ms, 0.99).toFixed(0)} ms`,
    );
    for (const e of errors.slice(0, 5)) console.log(`  ${e.message}`);
    check(errors.length === 0 && figures.length === N * M * ROUNDS, `load: all ${N * M * ROUNDS} execs returned every byte once (sha256 from the guest)`);
  }
}

/** stdout throughput of a real guest: `cat` of a 64 MiB file, 3 runs, median. */
async function catThroughput(sup: Supervisor): Promise<void> {
  const sb = await Sandbox.builder(`soak-cat-${process.pid}`).supervisor(sup).create();
  try {
    await sb.shell('head -c 67108864 /dev/urandom > /tmp/big');
    const want = (await sb.exec('sha256sum', ['/tmp/big'])).stdout.split(' ')[0];
    const mbps: number[] = [];
    let intact = true;
    for (let i = 0; i < 3; i++) {
      const t0 = performance.now();
      const r = await sb.exec('cat', ['/tmp/big']);
      mbps.push(r.stdoutBytes.length / 1e6 / ((performance.now() - t0) / 1000));
      intact &&= r.stdoutBytes.length === 64 * MiB && createHash('sha256').update(r.stdoutBytes).digest('hex') === want;
    }
    console.log(`stdout throughput, real guest, cat of 64 MiB: median ${quantile(mbps, 0.5).toFixed(1)} MB/s (${mbps.map((m) => m.toFixed(1)).join(', ')})`);
    check(intact, 'cat of 64 MiB: every byte arrived once (sha256 from the guest)');
  } finally {
    await sb.stop();
  }
}

async function main(): Promise<void> {
  const stateDir = mkdtempSync(join(tmpdir(), 'corral-soak-'));
  const fds0 = fdCount();
  const sup = new Supervisor({ stateDir });
  try {
    for (const mib of floods) await flood(sup, mib);
    if (N > 0 && M > 0) await load(sup);
    if (env('SOAK_CAT', '1') === '1') await catThroughput(sup);
  } finally {
    await sup.close();
  }
  // The warm spare worker and LMDB's environment are per process and stay (a few fds);
  // what must not stay is anything per sandbox or per exec.
  await new Promise((r) => setTimeout(r, 500));
  const fds1 = fdCount();
  console.log(`fds: ${fds0} before, ${fds1} after`);
  check(fds1 - fds0 <= 8, `no fds leaked (${fds1 - fds0} more, ≤ 8 allowed for the LMDB env and the spare worker)`);
  check(processesMentioning(stateDir).length === 0, 'no process mentions the state dir');
  check(processesMentioning(`corral-run-${process.pid}-`).length === 0, 'no qemu of this process is left');
  const left = children();
  check(left.length === 0, `no child process is left (${left.join(', ') || 'none'})`);
  check(readdirSync(tmpdir()).filter((f) => f.startsWith(`corral-run-${process.pid}-`)).length === 0, 'no run dir of this process is left');
  rmSync(stateDir, { recursive: true, force: true });
  if (failures.length) {
    console.log(`${failures.length} check(s) failed`);
    process.exitCode = 1;
  }
}

await main();
