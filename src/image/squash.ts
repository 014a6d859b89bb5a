/**
 * Layer squashing: a microVM without ACPI has 8 virtio-mmio slots (src/vm/qemuArgs.ts), so
 * an image of more than {@link SQUASH_ABOVE} layers boots from two read-only layer images:
 * its bottom layer (the distro base, the most shared) as it is, and every layer above it
 * merged into one. The merged image is itself an overlay layer above layer 0:
 *
 * - later layers win; a whiteout deletes what the merged layers below it made, an opaque
 *   directory empties what they put in it;
 * - what may still hide content of layer 0 stays: a whiteout (0/0 char device) and the
 *   `trusted.overlay.opaque` xattr, and a directory that replaced a non-directory (a file, a
 *   symlink, a whiteout) is made opaque, as overlayfs shows it in the full stack. Under an
 *   opaque directory nothing of layer 0 shows, so whiteouts and opaque dirs there are dropped.
 *
 * The merged image is keyed by the merged layers' diff_ids only (two images with the same
 * upper stack share it), so it cannot know what layer 0 holds: a whiteout of a path the
 * merged range created and deleted is kept (it hides nothing if layer 0 has no such path).
 *
 * Each layer is extracted by the safe extractor (src/image/extract.ts) into a directory of its
 * own, then moved over the merged tree with renames that never follow a symlink: every
 * directory walked into is lstat'ed as a real directory first, and a layer's entries (hard
 * links included, they keep their inode) only move between two trees in one scratch dir.
 */

import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, lchownSync, lstatSync, mkdirSync, readdirSync, renameSync, rmSync, type Stats, utimesSync } from 'node:fs';
import { mkdir, rename, rm, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { CorralError } from '../errors.ts';
import { buildErofs } from './layerImage.ts';
import type { LayerCompression } from './manifest.ts';
import { extractBlob } from './unpackLayer.ts';
import { ifMissing } from '../runtime/errno.ts';

/** Images with more layers than this boot from layer 0 + one squashed layer of the rest. */
export const SQUASH_ABOVE = 3;

/** Which layers of an image are squashed, and the key of the result. */
export interface SquashPlan {
  /** `sha256:` of the ordered diff_ids of the merged layers. */
  readonly key: string;
  /** The merged layers' diff_ids, bottom first (layer 1 up). */
  readonly diffIds: readonly string[];
}

/**
 * The squash of an image's layers (diff_ids bottom first), or undefined if it has at most
 * {@link SQUASH_ABOVE} layers.
 *
 * @example
 * squashPlan(rec.layers.map((l) => l.diffId))?.key; // 'sha256:…'
 */
export function squashPlan(diffIds: readonly string[]): SquashPlan | undefined {
  if (diffIds.length <= SQUASH_ABOVE) return undefined;
  const merged = diffIds.slice(1);
  return { key: `sha256:${createHash('sha256').update(`corral-squash-v1\n${merged.join('\n')}`).digest('hex')}`, diffIds: merged };
}

/** A task for the image pool. Plain data (it crosses a thread boundary). */
export interface SquashTask {
  readonly kind: 'squash';
  /** The downloaded, digest-checked blobs of the merged layers, bottom first. */
  readonly layers: readonly { readonly blob: string; readonly compression: LayerCompression; readonly diffId: string }[];
  /** Final path of the merged erofs image. */
  readonly out: string;
  /** An empty scratch directory (src/image/scratch.ts), removed here. */
  readonly workDir: string;
}

/** What {@link squashLayers} did. */
export interface SquashResult {
  readonly layers: number;
  /** Sum of the merged layers' uncompressed tar sizes. */
  readonly tarBytes: number;
  readonly imageBytes: number;
  readonly ms: number;
}

function lstatOrUndefined(path: string): Stats | undefined {
  return ifMissing(() => lstatSync(path), undefined);
}

function isWhiteout(st: Stats): boolean {
  return st.isCharacterDevice() && st.rdev === 0;
}

function dropUnder(set: Set<string>, rel: string): void {
  for (const p of set) if (p === rel || p.startsWith(`${rel}/`)) set.delete(p);
}

/**
 * Moves the extracted layer `layer` over the merged tree `tree` (both real directories in one
 * filesystem). `layerOpaque` are the layer's opaque directories (relative), `treeOpaque` the
 * tree's, updated here. `layer` is left in pieces: remove it afterwards.
 *
 * @example
 * applyLayer('/scratch/root', '/scratch/l3', stats.opaquePaths, opaque);
 */
export function applyLayer(tree: string, layer: string, layerOpaque: readonly string[], treeOpaque: Set<string>): void {
  const lOpaque = new Set(layerOpaque);
  if (lOpaque.has('')) {
    // The whole root is opaque: nothing below shows.
    for (const name of readdirSync(tree)) rmSync(join(tree, name), { recursive: true, force: true });
    treeOpaque.clear();
    treeOpaque.add('');
  }
  const applyDir = (rel: string, hidden: boolean): void => {
    for (const name of readdirSync(join(layer, rel))) {
      const r = rel === '' ? name : `${rel}/${name}`;
      const lp = join(layer, r);
      const tp = join(tree, r);
      const lst = lstatSync(lp);
      const tst = lstatOrUndefined(tp);
      if (lst.isDirectory() && tst?.isDirectory() && !lOpaque.has(r)) {
        applyDir(r, hidden || treeOpaque.has(r));
        setDirMeta(tp, lst);
        continue;
      }
      if (tst) {
        rmSync(tp, { recursive: true, force: true });
        dropUnder(treeOpaque, r);
      }
      // Under an opaque directory, nothing of layer 0 is left to hide.
      if (isWhiteout(lst) && hidden) continue;
      renameSync(lp, tp);
      if (lst.isDirectory()) {
        for (const o of lOpaque) if (o === r || o.startsWith(`${r}/`)) treeOpaque.add(o);
        // It replaced a non-directory: in the full stack nothing below that shows through.
        if (tst && !tst.isDirectory() && !hidden) treeOpaque.add(r);
      }
    }
  };
  applyDir('', treeOpaque.has(''));
  setDirMeta(tree, lstatSync(layer));
}

/** A directory of the tree takes the metadata of the layer's (the upper one wins). */
function setDirMeta(path: string, st: Stats): void {
  lchownSync(path, st.uid, st.gid);
  chmodSync(path, st.mode & 0o7777);
  utimesSync(path, st.atime, st.mtime);
}

/** Whiteouts under `dir` (a real directory), not following symlinks. */
function removeWhiteouts(dir: string): void {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    const st = lstatSync(p);
    if (st.isDirectory()) removeWhiteouts(p);
    else if (isWhiteout(st)) rmSync(p);
  }
}

/**
 * Leaves the opaque xattr on the outermost opaque directories only, with no whiteout under
 * them: below one, nothing of layer 0 shows, so those would hide nothing. (A layer's own
 * opaque dirs and whiteouts arrive nested when it is moved over as a whole.)
 */
async function finishOpaque(tree: string, opaque: Set<string>): Promise<void> {
  const dirs = [...opaque].filter((r) => lstatOrUndefined(join(tree, r))?.isDirectory());
  const nested = (r: string) => dirs.some((a) => a !== r && (a === '' || r.startsWith(`${a}/`)));
  const outer = dirs.filter((r) => !nested(r));
  for (const r of outer) removeWhiteouts(join(tree, r));
  // Nested ones came with their layer, xattr included (see applyLayer).
  await setfattr(['-x', 'trusted.overlay.opaque'], dirs.filter(nested).map((r) => join(tree, r)));
  await setfattr(['-n', 'trusted.overlay.opaque', '-v', 'y'], outer.map((r) => join(tree, r)));
}

function setfattr(args: string[], paths: string[]): Promise<void> {
  if (paths.length === 0) return Promise.resolve();
  return new Promise((resolve, reject) => {
    // Absolute paths: none can be taken for an option.
    const child = spawn('setfattr', ['-h', ...args, ...paths], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err = (err + d).slice(-2000)));
    child.once('error', (e) => reject(new CorralError('E_IMAGE_LAYER', `setfattr could not run (Debian package attr; run scripts/setup.sh): ${e.message}`, { cause: e })));
    child.once('exit', (code) => (code === 0 ? resolve() : reject(new CorralError('E_IMAGE_LAYER', `setfattr failed (exit ${code}): ${err.trim()}`))));
  });
}

/**
 * Extracts the layers one after the other (each in a directory of its own under `workDir`)
 * and merges them into `tree`, an existing empty directory (see the module comment).
 * Returns the sum of their uncompressed tar sizes.
 *
 * @example
 * await mergeLayers(task.layers, '/scratch/root', '/scratch');
 */
export async function mergeLayers(layers: SquashTask['layers'], tree: string, workDir: string): Promise<number> {
  const opaque = new Set<string>();
  let tarBytes = 0;
  for (const [i, l] of layers.entries()) {
    const dir = join(workDir, `layer${i}`);
    mkdirSync(dir, { mode: 0o755 });
    try {
      const stats = await extractBlob(l.blob, l.compression, l.diffId, dir);
      tarBytes += stats.tarBytes;
      applyLayer(tree, dir, stats.opaquePaths, opaque);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
  await finishOpaque(tree, opaque);
  return tarBytes;
}

/**
 * {@link mergeLayers}, then the erofs image of the result at `task.out` (temp name, then
 * rename).
 *
 * @example
 * await squashLayers({ kind: 'squash', layers, out: index.squashPath(plan.key), workDir });
 */
export async function squashLayers(task: SquashTask): Promise<SquashResult> {
  const t0 = performance.now();
  const tree = join(task.workDir, 'root');
  const tmpOut = `${task.out}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
  try {
    await mkdir(tree, { mode: 0o755 });
    const tarBytes = await mergeLayers(task.layers, tree, task.workDir);
    await mkdir(dirname(task.out), { recursive: true });
    await buildErofs(tree, tmpOut);
    await rename(tmpOut, task.out);
    return { layers: task.layers.length, tarBytes, imageBytes: (await stat(task.out)).size, ms: performance.now() - t0 };
  } finally {
    await rm(tmpOut, { force: true });
    await rm(task.workDir, { recursive: true, force: true });
  }
}
