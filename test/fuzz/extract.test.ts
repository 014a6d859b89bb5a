// Property-based fuzzing (fast-check) of the layer extractor with generated archives full of
// escape attempts: `..`, absolute names, symlinks then writes through them, hard links to
// outside files, device nodes, whiteouts, long names, PAX xattrs. Whatever the archive, the
// extraction either succeeds or fails with E_IMAGE_LAYER, and nothing outside the target
// root is created, removed or changed. Runs as root (mknod, chown, trusted.* xattrs), like
// the image worker. The generator only aims links at a sentinel directory beside the root,
// so a regression damages that directory, not the machine.
import { lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import fc from 'fast-check';
import tar from 'tar-stream';
import { afterAll, describe, expect, it } from 'vitest';
import { extractLayer } from '../../src/image/extract.ts';
import { CorralError } from '../../src/errors.ts';
import { budget, corpus, timeoutFor } from './budget.ts';

const scratch = mkdtempSync(join(tmpdir(), 'corral-test-fuzz-extract-'));
// fast-check's interruptAfterTimeLimit stops waiting for the case in progress; that case
// still writes into scratch, so the removal waits for it (else it re-creates its dir after).
let inFlight: Promise<unknown> = Promise.resolve();
afterAll(async () => {
  await inFlight.catch(() => undefined); // its failure, if any, was fast-check's to report
  rmSync(scratch, { recursive: true, force: true });
});

/** An entry as generated (and as stored in corpus/tar/*.json). `OUT` in a name or target is the sentinel dir's absolute path. */
interface GenEntry {
  name: string;
  type: 'file' | 'directory' | 'symlink' | 'link' | 'character-device' | 'block-device' | 'fifo';
  linkname?: string;
  body?: string;
  xattr?: string;
}

/** Everything under `dir` (lstat, not following links): path → identity and content. */
function snapshot(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (p: string) => {
    const st = lstatSync(p);
    const content = st.isFile() ? readFileSync(p, 'utf8') : '';
    out.set(p, `${st.mode}:${st.ino}:${st.nlink}:${st.uid}:${st.size}:${st.mtimeMs}:${content}`);
    if (st.isDirectory()) for (const e of readdirSync(p)) walk(join(p, e));
  };
  walk(dir);
  return out;
}

let n = 0;
/**
 * Extracts `entries` into base/d1/d2/d3/root, beside base/outside (a sentinel with a file).
 * Relative link targets climb at most 4 levels from depth ≤ 3, so they stay inside base.
 */
function attempt(...args: Parameters<typeof attemptOnce>): Promise<void> {
  const p = attemptOnce(...args);
  inFlight = p;
  return p;
}

async function attemptOnce(entries: GenEntry[]): Promise<void> {
  const base = join(scratch, String(++n));
  const root = join(base, 'd1', 'd2', 'd3', 'root');
  const outside = join(base, 'outside');
  mkdirSync(root, { recursive: true });
  mkdirSync(join(outside, 'sub'), { recursive: true });
  writeFileSync(join(outside, 'secret'), 'secret');
  const before = snapshot(base);
  const pack = tar.pack();
  for (const e of entries) {
    const name = e.name.replaceAll('OUT', outside);
    const linkname = e.linkname?.replaceAll('OUT', outside);
    const pax = e.xattr ? { 'SCHILY.xattr.user.fuzz': e.xattr } : undefined;
    const h = { name, type: e.type, linkname, mode: 0o755, devmajor: 1, devminor: 3, pax } as tar.Headers;
    pack.entry(h, e.type === 'file' ? (e.body ?? 'x') : undefined);
  }
  pack.finalize();
  try {
    await extractLayer(Readable.from(pack as unknown as AsyncIterable<Buffer>), root);
  } catch (err) {
    if (!(err instanceof CorralError) || err.code !== 'E_IMAGE_LAYER') throw err;
  }
  const after = snapshot(base);
  // Outside the root: exactly what was there, down to link counts (a hard link to the
  // secret would raise its nlink) and mtimes.
  const outsideRoot = (m: Map<string, string>) => new Map([...m].filter(([p]) => p !== root && !p.startsWith(`${root}/`)));
  const ancestors = [base, join(base, 'd1'), join(base, 'd1', 'd2'), join(base, 'd1', 'd2', 'd3')];
  const stable = (m: Map<string, string>) => new Map([...outsideRoot(m)].map(([p, v]) => [p, ancestors.includes(p) ? v.replace(/:[\d.]+:$/, ':') : v]));
  expect(stable(after)).toEqual(stable(before));
  rmSync(base, { recursive: true, force: true });
}

const component = fc.constantFrom('a', 'b', 'dev', 'link', '..', '.', 'secret', 'sub', '.wh.a', '.wh..wh..opq', 'OUT');
const name = fc.oneof(
  { weight: 8, arbitrary: fc.tuple(fc.boolean(), fc.array(component, { minLength: 1, maxLength: 4 })).map(([abs, cs]) => (abs ? '/' : '') + cs.join('/')) },
  { weight: 1, arbitrary: fc.integer({ min: 90, max: 300 }).map((k) => `a/${'n'.repeat(k)}`) }, // long names: GNU/PAX long-name headers
);
const target = fc.oneof(
  fc.constantFrom('OUT', 'OUT/sub', 'OUT/secret', '.', 'a', 'link', 'dev', 'sub'),
  fc.tuple(fc.integer({ min: 1, max: 4 }), fc.constantFrom('', 'outside', 'outside/sub', 'outside/secret', 'd3', 'root/a')).map(([k, rest]) => '../'.repeat(k) + rest),
);
const entry: fc.Arbitrary<GenEntry> = fc.oneof(
  { weight: 3, arbitrary: fc.record({ name, type: fc.constant('file' as const), body: fc.string({ maxLength: 20 }), xattr: fc.option(fc.string({ maxLength: 8 }), { nil: undefined }) }) },
  { weight: 2, arbitrary: fc.record({ name, type: fc.constant('directory' as const) }) },
  { weight: 3, arbitrary: fc.record({ name, type: fc.constant('symlink' as const), linkname: target }) },
  { weight: 2, arbitrary: fc.record({ name, type: fc.constant('link' as const), linkname: fc.oneof(target, name) }) },
  { weight: 2, arbitrary: fc.record({ name, type: fc.constantFrom('character-device' as const, 'block-device' as const, 'fifo' as const) }) },
);

describe('fuzzing the layer extractor', () => {
  it('replays the seed corpus without writing outside the root', async () => {
    const seeds = corpus('tar');
    expect(seeds.length).toBeGreaterThan(0);
    for (const [file, text] of seeds) {
      const { entries } = JSON.parse(text) as { why: string; entries: GenEntry[] };
      await attempt(entries).catch((err: Error) => {
        throw new Error(`seed ${file}: ${err.message}`, { cause: err });
      });
    }
  });

  it('never creates, removes or changes anything outside the root, whatever the archive', async () => {
    await fc.assert(fc.asyncProperty(fc.array(entry, { minLength: 1, maxLength: 10 }), attempt), budget(6000));
  }, timeoutFor(6000));
});
