// Property-based test (fast-check) of layer squashing (src/image/squash.ts): for generated
// stacks of layers (files, dirs, symlinks, whiteouts, opaque dirs over a small namespace),
// what overlayfs would show of [squashed(layers 1..n), layer 0] is what it shows of the full
// stack [layer n, …, layer 0]. Both views come from one reference model of overlayfs
// lookup below; the squashed tree is the real one, extracted and merged on disk (as root:
// mknod, trusted.* xattrs) and read back (0/0 char devices, the opaque xattr).
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import tar from 'tar-stream';
import { afterAll, describe, expect, it } from 'vitest';
import { mergeLayers } from '../../src/image/squash.ts';
import { budget, timeoutFor } from './budget.ts';

const scratch = mkdtempSync(join(tmpdir(), 'corral-test-fuzz-squash-'));
// fast-check's interruptAfterTimeLimit stops waiting for the case in progress; that case
// still writes into scratch, so the removal waits for it (else it re-creates its dir after).
let inFlight: Promise<unknown> = Promise.resolve();
afterAll(async () => {
  await inFlight.catch(() => undefined); // its failure, if any, was fast-check's to report
  rmSync(scratch, { recursive: true, force: true });
});

/** One layer as overlayfs reads it: path → node; every parent of a node is a dir of the layer. */
type Node = { kind: 'file'; body: string } | { kind: 'symlink'; target: string } | { kind: 'dir'; opaque: boolean } | { kind: 'whiteout' };
type Layer = Map<string, Node>;

interface Op {
  path: string;
  kind: 'file' | 'symlink' | 'dir' | 'opaque' | 'whiteout';
}

const parentOf = (p: string) => p.slice(0, Math.max(0, p.lastIndexOf('/')));

/** Builds a well-formed layer from ops applied in order (later ones win within the layer). */
function buildLayer(ops: Op[], i: number): Layer {
  const l: Layer = new Map();
  const dropUnder = (p: string) => {
    for (const k of [...l.keys()]) if (k.startsWith(`${p}/`)) l.delete(k);
  };
  for (const op of ops) {
    for (let q = parentOf(op.path); q !== ''; q = parentOf(q)) {
      const cur = l.get(q);
      if (cur?.kind !== 'dir') l.set(q, { kind: 'dir', opaque: false });
    }
    if (op.kind === 'dir' || op.kind === 'opaque') {
      const cur = l.get(op.path);
      l.set(op.path, { kind: 'dir', opaque: op.kind === 'opaque' || (cur?.kind === 'dir' && cur.opaque) });
      if (cur?.kind !== 'dir') dropUnder(op.path);
      continue;
    }
    dropUnder(op.path);
    l.set(op.path, op.kind === 'file' ? { kind: 'file', body: `layer${i}:${op.path}` } : op.kind === 'symlink' ? { kind: 'symlink', target: `t${i}` } : { kind: 'whiteout' });
  }
  return l;
}

/** Overlayfs lookup over `layers` (top first), from the root: visible path → description. */
function view(layers: Layer[]): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (dir: string, stack: Layer[]) => {
    const names = new Set<string>();
    for (const l of stack) for (const k of l.keys()) if (parentOf(k) === dir) names.add(k);
    for (const p of names) {
      const below: Layer[] = [];
      for (const l of stack) {
        const n = l.get(p);
        if (!n) continue;
        if (n.kind === 'whiteout') break;
        if (n.kind !== 'dir') {
          if (below.length === 0) out.set(p, n.kind === 'file' ? `file ${n.body}` : `symlink ${n.target}`);
          break;
        }
        below.push(l);
        if (n.opaque) break;
      }
      if (below.length > 0) {
        out.set(p, 'dir');
        walk(p, below);
      }
    }
  };
  walk('', layers);
  return out;
}

function toTar(l: Layer): Promise<Buffer> {
  const pack = tar.pack();
  for (const p of [...l.keys()].sort()) {
    const n = l.get(p)!;
    if (n.kind === 'dir') {
      pack.entry({ name: `${p}/`, type: 'directory', mode: 0o755 });
      if (n.opaque) pack.entry({ name: `${p}/.wh..wh..opq` }, '');
    } else if (n.kind === 'file') pack.entry({ name: p, mode: 0o644 }, n.body);
    else if (n.kind === 'symlink') pack.entry({ name: p, type: 'symlink', linkname: n.target });
    else pack.entry({ name: `${parentOf(p) ? `${parentOf(p)}/` : ''}.wh.${p.slice(p.lastIndexOf('/') + 1)}` }, '');
  }
  pack.finalize();
  return (async () => {
    const chunks: Buffer[] = [];
    for await (const c of pack as unknown as AsyncIterable<Buffer>) chunks.push(c);
    return Buffer.concat(chunks);
  })();
}

/** The merged tree on disk, read back as a layer. */
function readTree(root: string): Layer {
  const l: Layer = new Map();
  const walk = (rel: string) => {
    for (const name of readdirSync(join(root, rel))) {
      const p = rel ? `${rel}/${name}` : name;
      const abs = join(root, p);
      const st = lstatSync(abs);
      if (st.isDirectory()) {
        let opaque = false;
        try {
          opaque = execFileSync('getfattr', ['--only-values', '-n', 'trusted.overlay.opaque', abs], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }) === 'y';
        } catch {
          /* no xattr */
        }
        l.set(p, { kind: 'dir', opaque });
        walk(p);
      } else if (st.isCharacterDevice() && st.rdev === 0) l.set(p, { kind: 'whiteout' });
      else if (st.isSymbolicLink()) l.set(p, { kind: 'symlink', target: readlinkSync(abs) });
      else l.set(p, { kind: 'file', body: readFileSync(abs, 'utf8') });
    }
  };
  walk('');
  return l;
}

let n = 0;
function squashMatchesStack(...args: Parameters<typeof squashMatchesStackOnce>): Promise<void> {
  const p = squashMatchesStackOnce(...args);
  inFlight = p;
  return p;
}

async function squashMatchesStackOnce(opsPerLayer: Op[][]): Promise<void> {
  const layers = opsPerLayer.map(buildLayer);
  const base = join(scratch, String(++n));
  const tree = join(base, 'root');
  mkdirSync(tree, { recursive: true });
  const blobs = [];
  for (const [i, l] of layers.slice(1).entries()) {
    const bytes = await toTar(l);
    const blob = join(base, `${i}.tar`);
    writeFileSync(blob, bytes);
    blobs.push({ blob, compression: 'none' as const, diffId: `sha256:${createHash('sha256').update(bytes).digest('hex')}` });
  }
  await mergeLayers(blobs, tree, base);
  const merged = readTree(tree);
  expect(view([merged, layers[0]!])).toEqual(view([...layers].reverse()));
  // Under an opaque dir nothing of layer 0 shows: no whiteout or opaque dir is left there.
  for (const [p, node] of merged) {
    if (node.kind !== 'whiteout' && !(node.kind === 'dir' && node.opaque)) continue;
    for (let q = parentOf(p); q !== ''; q = parentOf(q)) expect(merged.get(q), `${p} under opaque ${q}`).not.toEqual({ kind: 'dir', opaque: true });
  }
  rmSync(base, { recursive: true, force: true });
}

const path = fc.array(fc.constantFrom('a', 'b', 'c'), { minLength: 1, maxLength: 3 }).map((cs) => cs.join('/'));
const op: fc.Arbitrary<Op> = fc.record({ path, kind: fc.constantFrom('file' as const, 'symlink' as const, 'dir' as const, 'opaque' as const, 'whiteout' as const) });
const stack = fc.array(fc.array(op, { minLength: 1, maxLength: 6 }), { minLength: 2, maxLength: 5 });

describe('fuzzing layer squashing', () => {
  it('shows, over layer 0, exactly what the full stack of layers shows', async () => {
    await fc.assert(fc.asyncProperty(stack, squashMatchesStack), budget(6000));
  }, timeoutFor(6000));
});
