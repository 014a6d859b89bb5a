/**
 * Layer squashing on the host (no VM): crafted layers (tar-stream's packer) merged into one
 * tree that is itself an overlay layer above layer 0. Runs as root (mknod, trusted.* xattrs),
 * like the image worker.
 */

import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tar from 'tar-stream';
import { afterAll, describe, expect, it } from 'vitest';
import { mergeLayers, squashPlan } from '../../src/image/squash.ts';

const scratch = mkdtempSync(join(tmpdir(), 'corral-test-squash-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

type Entry = tar.Headers & { body?: string };

async function tarBytes(entries: Entry[]): Promise<Buffer> {
  const pack = tar.pack();
  for (const { body, ...h } of entries) pack.entry(h, h.type === undefined || h.type === 'file' ? (body ?? '') : undefined);
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const c of pack as unknown as AsyncIterable<Buffer>) chunks.push(c);
  return Buffer.concat(chunks);
}

let n = 0;
/** Merges `layers` (bottom first) into a fresh tree; returns its path. */
async function merge(layers: Entry[][]): Promise<string> {
  const base = join(scratch, String(++n));
  const tree = join(base, 'root');
  mkdirSync(tree, { recursive: true });
  const blobs = await Promise.all(
    layers.map(async (entries, i) => {
      const bytes = await tarBytes(entries);
      const blob = join(base, `${i}.tar`);
      writeFileSync(blob, bytes);
      return { blob, compression: 'none' as const, diffId: `sha256:${createHash('sha256').update(bytes).digest('hex')}` };
    }),
  );
  await mergeLayers(blobs, tree, base);
  return tree;
}

const opaque = (p: string) => {
  try {
    return execFileSync('getfattr', ['--only-values', '-n', 'trusted.overlay.opaque', p], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }) === 'y';
  } catch {
    return false;
  }
};
const whiteout = (p: string) => {
  const st = lstatSync(p, { throwIfNoEntry: false });
  return !!st && st.isCharacterDevice() && st.rdev === 0;
};

describe('layer squashing', () => {
  it('squashes only images of more than 3 layers, keyed by the layers above the bottom one', () => {
    expect(squashPlan(['sha256:a', 'sha256:b', 'sha256:c'])).toBeUndefined();
    const p = squashPlan(['sha256:a', 'sha256:b', 'sha256:c', 'sha256:d'])!;
    expect(p.diffIds).toEqual(['sha256:b', 'sha256:c', 'sha256:d']);
    // another bottom layer, same upper stack: the same squashed layer
    expect(squashPlan(['sha256:z', 'sha256:b', 'sha256:c', 'sha256:d'])!.key).toBe(p.key);
    expect(squashPlan(['sha256:a', 'sha256:c', 'sha256:b', 'sha256:d'])!.key).not.toBe(p.key);
  });

  it('applies later layers over earlier ones, keeping only the whiteouts and opaque dirs that can hide layer 0', async () => {
    const tree = await merge([
      [
        { name: 'a', body: 'a1' },
        { name: 'd/x', body: 'x' },
        { name: 's', type: 'symlink', linkname: '/etc' },
        { name: 't', body: 't' },
        { name: 'h1', body: 'hard', mode: 0o4755 },
        { name: 'h2', type: 'link', linkname: 'h1' },
        { name: 'keep/k', body: 'k' },
      ],
      [
        { name: 'a', body: 'a2' },
        { name: '.wh.t', body: '' },
        { name: 'd/.wh..wh..opq', body: '' },
        { name: 'd/y', body: 'y' },
        { name: 's/', type: 'directory', mode: 0o750 },
        { name: 's/f', body: 'f' },
        { name: '.wh.zero', body: '' },
        { name: 'keep/k2', body: 'k2' },
      ],
      [
        { name: 'd/.wh.y', body: '' },
        { name: 'd/z', body: 'z' },
        { name: 'keep/.wh.k', body: '' },
      ],
    ]);
    expect(readdirSync(tree).sort()).toEqual(['a', 'd', 'h1', 'h2', 'keep', 's', 't', 'zero']);
    expect(readFileSync(join(tree, 'a'), 'utf8')).toBe('a2');
    // added then deleted in the merged range: layer 0 may have a `t`, so the whiteout stays
    expect(whiteout(join(tree, 't'))).toBe(true);
    expect(whiteout(join(tree, 'zero'))).toBe(true);
    // opaque w.r.t. layer 0, emptied of the earlier merged content; no whiteout under it
    expect(opaque(join(tree, 'd'))).toBe(true);
    expect(readdirSync(join(tree, 'd'))).toEqual(['z']);
    // a dir that replaced a symlink hides whatever layer 0 has there
    expect(lstatSync(join(tree, 's')).isDirectory()).toBe(true);
    expect(lstatSync(join(tree, 's')).mode & 0o7777).toBe(0o750);
    expect(opaque(join(tree, 's'))).toBe(true);
    expect(readdirSync(join(tree, 's'))).toEqual(['f']);
    // hard links keep their inode, modes their setuid bit
    expect(lstatSync(join(tree, 'h2')).ino).toBe(lstatSync(join(tree, 'h1')).ino);
    expect(lstatSync(join(tree, 'h1')).mode & 0o7777).toBe(0o4755);
    // a plain dir merges, not opaque; a deleted file of an earlier merged layer still whited out
    expect(opaque(join(tree, 'keep'))).toBe(false);
    expect(readdirSync(join(tree, 'keep')).sort()).toEqual(['k', 'k2']);
    expect(whiteout(join(tree, 'keep/k'))).toBe(true);
    expect(readFileSync(join(tree, 'keep/k2'), 'utf8')).toBe('k2');
  });

  it('never follows a symlink an earlier layer planted', async () => {
    const outside = join(scratch, 'outside');
    mkdirSync(outside, { recursive: true });
    writeFileSync(join(outside, 'secret'), 'secret');
    const tree = await merge([
      [{ name: 'esc', type: 'symlink', linkname: outside }],
      [
        { name: 'esc/secret', body: 'owned' },
        { name: 'esc/new', body: 'new' },
      ],
      [{ name: 'esc/.wh.secret', body: '' }],
    ]);
    expect(readFileSync(join(outside, 'secret'), 'utf8')).toBe('secret');
    expect(readdirSync(outside)).toEqual(['secret']);
    // each layer is extracted on its own: esc/ is a plain dir of layer 2, which replaces the
    // symlink here (opaque: it hides what layer 0 has at esc); under it no whiteout is needed
    expect(lstatSync(join(tree, 'esc')).isDirectory()).toBe(true);
    expect(opaque(join(tree, 'esc'))).toBe(true);
    expect(readdirSync(join(tree, 'esc'))).toEqual(['new']);
  });
});
