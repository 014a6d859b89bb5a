/**
 * Builds the precompiled runtime (src/runtime/dist.ts): each entry of DIST_ENTRIES bundled
 * with esbuild into an ES module in node_modules/.corral-dist/ (the code entries share, and
 * each module only imported dynamically, in chunks beside them), the packages left to
 * node_modules, and a stamp of the sources it was built from. Nothing is done while the
 * stamp matches. The setup runs it (scripts/setup.sh, step "precompiled runtime").
 *
 *   node --import tsx scripts/build-dist.ts [--force]
 */

import { build } from 'esbuild';
import { chmodSync, mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DIST_DIR, DIST_ENTRIES, ROOT, distFresh, sourceStamp } from '../src/runtime/dist.ts';

if (!process.argv.includes('--force') && distFresh()) {
  console.log(`precompiled runtime up to date: ${DIST_DIR}`);
  process.exit(0);
}

// Stamped with the sources as they were before the build: an edit made meanwhile leaves it stale.
const sources = sourceStamp();
const tmp = mkdtempSync(`${DIST_DIR}.tmp-`);
try {
  await build({
    absWorkingDir: ROOT,
    entryPoints: Object.fromEntries(Object.entries(DIST_ENTRIES).map(([name, file]) => [name, join(ROOT, file)])),
    outdir: tmp,
    outExtension: { '.js': '.mjs' },
    bundle: true,
    // Dynamic imports stay lazy (the NATS client, the MCP SDK…): each becomes a chunk of its own.
    splitting: true,
    chunkNames: 'chunk-[hash]',
    platform: 'node',
    format: 'esm',
    target: 'node20',
    packages: 'external',
    // Names stay as written: errors and classes are told apart by them.
    keepNames: true,
    define: { __CORRAL_DIST__: 'true' },
    logLevel: 'warning',
  });
  writeFileSync(join(tmp, 'stamp.json'), JSON.stringify({ sources, builtAt: new Date().toISOString() }));
  rmSync(DIST_DIR, { recursive: true, force: true });
  renameSync(tmp, DIST_DIR);
  chmodSync(DIST_DIR, 0o755);
} catch (err) {
  rmSync(tmp, { recursive: true, force: true });
  throw err;
}
console.log(`precompiled runtime built: ${DIST_DIR}`);
