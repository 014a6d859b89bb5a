/**
 * Image pull benchmark. Prints figures; asserts nothing.
 *
 *   npm run bench:image          (RUNS=5 to change the sample count; -- --json adds the figures
 *                                 as one JSON line at the end)
 *
 * Pull + verify + unpack + erofs layer-image build of the python test image (Debian
 * bookworm + python3, from scripts/test-images.sh) from a loopback docker-registry into an
 * empty cache, against `skopeo copy docker://… oci:DIR` of the same image in the same run
 * (download + verify only, no unpack: the floor of moving the bytes).
 *
 * Wall time depends on what else runs on the machine; the CPU seconds beside it (this
 * process's threads, libuv's thread pool included, + the children it waited for: zstd for
 * zstd layers, mkfs.erofs when squashing; skopeo) do much less.
 */

import { kernelLabel } from '../src/runtime/kernel.ts';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Image } from '../src/image/Image.ts';
import { resolveImage } from '../src/image/pull.ts';
import { startRegistry, testImages } from '../test/image/helpers/registry.ts';
import { BenchReport, quantile } from './stats.ts';

const RUNS = Number(process.env.RUNS ?? 5);
const TICK_S = 1 / Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());

/** CPU seconds so far: this process (all threads), and the children it has waited for. */
function cpuSeconds(): { self: number; children: number } {
  const stat = readFileSync('/proc/self/stat', 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const u = process.cpuUsage();
  return { self: (u.user + u.system) / 1e6, children: (Number(f[13]) + Number(f[14])) * TICK_S };
}

const images = testImages();
const report = new BenchReport('image');
const reg = await startRegistry('none');
const tmp = mkdtempSync(join(tmpdir(), 'corral-bench-image-'));
try {
  await reg.push(join(images.dir, 'python'), 'python', '3.12');
  const ref = `${reg.host}/python:3.12`;
  const ours: number[] = [];
  const skopeo: number[] = [];
  const oursCpu: number[] = [];
  const skopeoCpu: number[] = [];
  let bytes = 0;
  let tarBytes = 0;
  for (let i = 0; i < RUNS; i++) {
    const sd = join(tmp, `state-${i}`);
    const c0 = cpuSeconds();
    const t0 = performance.now();
    await resolveImage(ref, { stateDir: sd, onEvent: (e) => void (e.type === 'image.pull.done' && (bytes = e.bytes)) });
    ours.push((performance.now() - t0) / 1000);
    const c1 = cpuSeconds();
    oursCpu.push(c1.self - c0.self + c1.children - c0.children);
    if (i === 0) {
      const info = await Image.inspect(ref, { stateDir: sd });
      tarBytes = info.layers.reduce((s, l) => s + (l.imageBytes ?? 0), 0);
    }
    rmSync(sd, { recursive: true, force: true });
    const out = join(tmp, `oci-${i}`);
    const t1 = performance.now();
    execFileSync('skopeo', ['copy', '-q', '--src-tls-verify=false', `docker://${ref}`, `oci:${out}:latest`], { stdio: 'ignore' });
    skopeo.push((performance.now() - t1) / 1000);
    skopeoCpu.push(cpuSeconds().children - c1.children);
    rmSync(out, { recursive: true, force: true });
  }
  const mb = bytes / 1e6;
  const fmt = (s: number[], cpu: number[]) =>
    `median ${quantile(s, 0.5).toFixed(2)} s (${(mb / quantile(s, 0.5)).toFixed(1)} MB/s), p95 ${quantile(s, 0.95).toFixed(2)} s (n=${s.length}); CPU median ${quantile(cpu, 0.5).toFixed(2)} s`;
  console.log(`corral image bench — ${new Date().toISOString()} — python:3.12 test image: ${mb.toFixed(1)} MB compressed, ${(tarBytes / 1e6).toFixed(1)} MB of erofs layer images, kernel ${kernelLabel()}`);
  console.log(`  corral pull + verify + erofs layer image:  ${fmt(ours, oursCpu)}`);
  console.log(`  skopeo copy docker:// → oci: (no unpack):   ${fmt(skopeo, skopeoCpu)}`);
  console.log(`  ratio corral / skopeo (medians): ×${(quantile(ours, 0.5) / quantile(skopeo, 0.5)).toFixed(2)} wall, ×${(quantile(oursCpu, 0.5) / quantile(skopeoCpu, 0.5)).toFixed(2)} CPU`);
  report.add('skopeo_copy', skopeo.map((x) => x * 1000), 'ms');
  report.add('pull_ready', ours.map((x) => x * 1000), 'ms', quantile(skopeo, 0.5) * 1000);
  report.add('skopeo_cpu', skopeoCpu, 's');
  report.add('pull_cpu', oursCpu, 's', quantile(skopeoCpu, 0.5));
} finally {
  await reg.close();
  rmSync(tmp, { recursive: true, force: true });
}
report.print();
