/**
 * The precompiled runtime: the CLI, the detached host and the worker threads bundled into
 * plain JavaScript by scripts/build-dist.ts (the setup runs it) in `node_modules/.corral-dist/`,
 * inside node_modules so that their packages resolve from there. A process started from it
 * loads in ~0.45 s against ~1.2 s through tsx (which resolves and loads each module through a
 * hooks thread), and a worker thread started from it needs no tsx loader of its own. (A
 * bundled worker reaches LMDB within ~100 ms of its start: it may be ended only as
 * src/pool/SandboxPool.ts ends it, by itself.)
 *
 * It is used only while it matches the sources it was built from (their paths, sizes and
 * modification times), so an edited source never runs stale: the TypeScript runs instead.
 * `CORRAL_DIST=0` turns it off.
 */

import { readFileSync, readdirSync, statSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Defined (true) by the bundler in the precompiled runtime only. */
declare const __CORRAL_DIST__: boolean | undefined;

/** Whether this code runs from the precompiled runtime. */
export const BUNDLED = typeof __CORRAL_DIST__ !== 'undefined' && __CORRAL_DIST__;

/** The repository's root: two levels up from this file, or from the bundle's directory. */
export const ROOT = BUNDLED ? resolve(dirname(fileURLToPath(import.meta.url)), '..', '..') : fileURLToPath(new URL('../../', import.meta.url));

/** Where the precompiled runtime lives. */
export const DIST_DIR = join(ROOT, 'node_modules', '.corral-dist');

/** The bundles, each an entry point of its own (scripts/build-dist.ts). */
export const DIST_ENTRIES = {
  cli: 'src/cli/main.ts',
  host: 'src/detached/hostMain.ts',
  'sandbox.worker': 'workers/sandbox.worker.ts',
  'image.worker': 'workers/image.worker.ts',
  check: 'src/runtime/dist.ts',
} as const;
export type DistEntry = keyof typeof DIST_ENTRIES;

/** The trees whose files the bundles are made of, and the manifest of the packages they import. */
const SOURCES = ['src', 'workers', 'machines', 'package.json'];

/**
 * A digest of the source files' paths, sizes and modification times: what the stamp of a
 * build records, and what it must still be for the build to be used (~250 stats).
 */
export function sourceStamp(root: string = ROOT): string {
  const lines: string[] = [];
  const walk = (rel: string): void => {
    const st = statSync(join(root, rel), { throwIfNoEntry: false });
    if (!st) return;
    if (st.isDirectory()) {
      for (const name of readdirSync(join(root, rel)).sort()) walk(join(rel, name));
    } else if (st.isFile()) {
      lines.push(`${rel} ${st.size} ${st.mtimeMs}`);
    }
  };
  for (const s of SOURCES) walk(s);
  return createHash('sha256').update(lines.join('\n')).digest('hex');
}

/** Whether the precompiled runtime is there and was built from the sources as they are now. */
export function distFresh(root: string = ROOT): boolean {
  let recorded: string;
  try {
    recorded = (JSON.parse(readFileSync(join(root, 'node_modules', '.corral-dist', 'stamp.json'), 'utf8')) as { sources?: string }).sources ?? '';
  } catch {
    return false; // not built (or half written): the sources run
  }
  return recorded === sourceStamp(root);
}

let fresh: boolean | undefined;

/**
 * The file of bundle `name` when it is the one to run: always from the precompiled runtime
 * (what it starts is built with it), and from the sources only while it is fresh. Undefined:
 * start the TypeScript.
 *
 * @example
 * const host = distEntry('host'); // …/node_modules/.corral-dist/host.mjs, or undefined
 */
export function distEntry(name: DistEntry): string | undefined {
  if (!BUNDLED) {
    if (process.env.CORRAL_DIST === '0') return undefined;
    fresh ??= distFresh();
    if (!fresh) return undefined;
  }
  return join(DIST_DIR, `${name}.mjs`);
}
