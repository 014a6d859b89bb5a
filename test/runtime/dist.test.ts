// The precompiled runtime (src/runtime/dist.ts): used while it matches the sources, never
// stale; the CLI, a detached host and the sandbox worker threads start from it. Real processes.
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { Sandbox, Supervisor } from '../../src/index.ts';
import { DIST_DIR, distFresh, sourceStamp } from '../../src/runtime/dist.ts';
import { BIN } from '../helpers/cli.ts';
import { uniqueName } from '../helpers/sandbox.ts';

const run = promisify(execFile);

describe('the precompiled runtime', () => {
  const roots: string[] = [];
  afterAll(() => {
    for (const r of roots) rmSync(r, { recursive: true, force: true });
  });

  it('is fresh only while its stamp matches the sources: an edit makes it stale until rebuilt', () => {
    const root = mkdtempSync(join(tmpdir(), 'corral-dist-'));
    roots.push(root);
    for (const d of ['src/runtime', 'workers', 'machines', 'node_modules/.corral-dist']) mkdirSync(join(root, d), { recursive: true });
    writeFileSync(join(root, 'src/runtime/a.ts'), 'export const a = 1;\n');
    writeFileSync(join(root, 'workers/w.ts'), 'export {};\n');
    writeFileSync(join(root, 'package.json'), '{}\n');
    const stamp = join(root, 'node_modules/.corral-dist/stamp.json');
    expect(distFresh(root)).toBe(false); // never built
    writeFileSync(stamp, JSON.stringify({ sources: sourceStamp(root) }));
    expect(distFresh(root)).toBe(true);
    // An edit that keeps the size still moves the modification time.
    utimesSync(join(root, 'src/runtime/a.ts'), new Date(), new Date(Date.now() + 5000));
    expect(distFresh(root)).toBe(false);
    writeFileSync(stamp, JSON.stringify({ sources: sourceStamp(root) }));
    expect(distFresh(root)).toBe(true);
    writeFileSync(join(root, 'machines/new.ts'), 'export {};\n'); // a new source
    expect(distFresh(root)).toBe(false);
    writeFileSync(stamp, '{"sources":'); // half written
    expect(distFresh(root)).toBe(false);
  });

  it('runs the CLI when fresh, and the sources with CORRAL_DIST=0', async () => {
    // The setup (npm test's first step) builds it: scripts/build-dist.ts.
    expect(distFresh(), `${DIST_DIR} is missing or older than the sources: run npm run setup`).toBe(true);
    const stateDir = mkdtempSync(join(tmpdir(), 'corral-dist-state-'));
    roots.push(stateDir);
    const loaded = async (env: NodeJS.ProcessEnv) => {
      const { stdout, stderr } = await run(process.execPath, [BIN, 'ls', '--json'], { env: { ...process.env, ...env, CORRAL_STATE_DIR: stateDir, NODE_DEBUG: 'esm' }, maxBuffer: 64 * 2 ** 20 });
      expect(JSON.parse(stdout)).toEqual([]);
      return { bundle: stderr.includes('.corral-dist/cli.mjs'), sources: stderr.includes('src/cli/main.ts') };
    };
    expect(await loaded({ CORRAL_DIST: '1' })).toEqual({ bundle: true, sources: false });
    expect(await loaded({ CORRAL_DIST: '0' })).toEqual({ bundle: false, sources: true });
  });

  it('starts the sandbox worker threads from it, and from the sources with CORRAL_DIST=0', async () => {
    expect(distFresh()).toBe(true);
    const stateDir = mkdtempSync(join(tmpdir(), 'corral-dist-worker-'));
    roots.push(stateDir);
    // A plain process whose pool starts one worker, hosts an actor on it and ends it.
    const script = fileURLToPath(new URL('../pool/end-script.ts', import.meta.url));
    const loaded = async (env: NodeJS.ProcessEnv) => {
      const { stderr } = await run(process.execPath, ['--import', 'tsx', script, stateDir, '1'], { env: { ...process.env, ...env, NODE_DEBUG: 'esm' }, maxBuffer: 64 * 2 ** 20 });
      return { bundle: stderr.includes('.corral-dist/sandbox.worker.mjs'), sources: stderr.includes('workers/sandbox.worker.ts') };
    };
    expect(await loaded({ CORRAL_DIST: '1' })).toEqual({ bundle: true, sources: false });
    expect(await loaded({ CORRAL_DIST: '0' })).toEqual({ bundle: false, sources: true });
  });

  it('starts a detached sandbox\'s host from it, which runs the sandbox', async () => {
    expect(distFresh()).toBe(true);
    // A state dir of its own: the hosts of other tests' detached sandboxes name the suite's.
    const stateDir = mkdtempSync(join(tmpdir(), 'corral-dist-host-'));
    roots.push(stateDir);
    const sup = new Supervisor({ stateDir });
    const sb = await Sandbox.builder(uniqueName('dist')).detached(true).supervisor(sup).create();
    try {
      const hosts = readdirSync('/proc')
        .filter((p) => /^\d+$/.test(p))
        .map((p) => {
          try {
            return readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0');
          } catch {
            return []; // gone meanwhile
          }
        })
        .filter((argv) => argv.includes(sup.stateDir));
      expect(hosts).toHaveLength(1);
      expect(hosts[0]![1]).toBe(join(DIST_DIR, 'host.mjs'));
      expect(await sb.exec('echo', ['hosted'])).toMatchObject({ code: 0, stdout: 'hosted\n' });
    } finally {
      await sb.stop();
      await sup.close();
    }
  });
});
