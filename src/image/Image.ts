/**
 * The local image cache, as the public API: `Image.list()`, `inspect()`, `remove()`,
 * `prune()`. The cache lives in the state dir (the same one the supervisor uses).
 */

import { readdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { CorralError } from '../errors.ts';
import { defaultStateDir } from '../runtime/artifacts.ts';
import { pruneTemplates } from '../snapshot/templates.ts';
import { digestHex } from './digest.ts';
import { ImageIndex, type ImageRecord } from './ImageIndex.ts';
import type { ImageDefaults } from './manifest.ts';
import { parseReference } from './reference.ts';
import { squashPlan } from './squash.ts';
import { bounded, type CallOptions } from '../runtime/callOptions.ts';

/** Options of the Image calls. */
export interface ImageOptions extends CallOptions {
  /** Default: `CORRAL_STATE_DIR` or `~/.local/state/corral`. */
  readonly stateDir?: string;
}

/** A cached image. */
export interface ImageInfo {
  /** `registry/repository`. */
  readonly name: string;
  /** Canonical tag references pointing at it. */
  readonly tags: readonly string[];
  /** Platform manifest digest. */
  readonly digest: string;
  readonly platform: string;
  readonly configDigest: string;
  readonly defaults: ImageDefaults;
  readonly layers: readonly { readonly digest: string; readonly diffId: string; readonly size: number; readonly imageBytes: number | null }[];
  /**
   * Images of more than 3 layers: the squashed layer image of the layers above the bottom one
   * (sandboxes boot from it and the bottom layer). `imageBytes` null: not built yet (the image
   * was cached before squashing existed; the next pull builds it).
   */
  readonly squashed?: { readonly key: string; readonly diffIds: readonly string[]; readonly imageBytes: number | null };
  /** Compressed size. */
  readonly sizeBytes: number;
  readonly pulledAt: number;
  /** Sandboxes pinned to it. */
  readonly usedBy: readonly string[];
}

/** What {@link Image.prune} removed. */
export interface PruneResult {
  readonly images: number;
  readonly layers: number;
  readonly bytes: number;
  /** Templates removed (none that a sandbox's or snapshot's disk still backs onto). */
  readonly templates: number;
}

/** Runs `fn` on the image index, bounded by the call's { signal, timeoutMs } (the index closes once `fn` is done either way). */
async function withIndex<T>(what: string, options: ImageOptions, fn: (idx: ImageIndex) => Promise<T> | T): Promise<T> {
  return bounded(what, options, async () => {
    const idx = ImageIndex.open(options.stateDir ?? defaultStateDir());
    try {
      return await fn(idx);
    } finally {
      await idx.close();
    }
  });
}

function info(idx: ImageIndex, rec: ImageRecord): ImageInfo {
  const plan = squashPlan(rec.layers.map((l) => l.diffId));
  const usedBy = idx.pins().filter((p) => p.pin.digest === rec.digest).map((p) => p.sandbox);
  return {
    name: rec.name,
    tags: rec.tags,
    digest: rec.digest,
    platform: rec.platform,
    configDigest: rec.configDigest,
    defaults: rec.defaults,
    layers: rec.layers.map((l) => ({ digest: l.digest, diffId: l.diffId, size: l.size, imageBytes: idx.getLayer(l.diffId)?.imageBytes ?? null })),
    ...(plan ? { squashed: { key: plan.key, diffIds: plan.diffIds, imageBytes: idx.hasSquash(plan.key) ? idx.getSquash(plan.key)?.imageBytes ?? null : null } } : {}),
    sizeBytes: rec.sizeBytes,
    pulledAt: rec.pulledAt,
    usedBy,
  };
}

function find(idx: ImageIndex, ref: string): ImageRecord {
  const r = parseReference(ref);
  const digest = r.digest ?? idx.getTag(r.canonical);
  const rec = digest ? idx.getImage(r.name, digest) ?? idx.listImages().find((i) => i.name === r.name && i.digest === digest) : undefined;
  if (!rec) throw new CorralError('E_IMAGE_NOT_FOUND', `image ${r.canonical} is not in the local cache`, { details: { image: r.canonical } });
  return rec;
}

/** Removes layer images (squashed ones too) no image record needs, and leftovers of interrupted pulls. */
async function collectLayers(idx: ImageIndex): Promise<{ layers: number; bytes: number }> {
  const needed = new Set(
    idx.listImages().flatMap((i) => {
      const plan = squashPlan(i.layers.map((l) => l.diffId));
      return [...i.layers.map((l) => digestHex(l.diffId)), ...(plan ? [`${digestHex(plan.key)}.squash`] : [])];
    }),
  );
  let layers = 0;
  let bytes = 0;
  const files = await readdir(idx.layersDir).catch(() => [] as string[]);
  const locks = new Set(files.filter((f) => f.endsWith('.lock')));
  for (const f of files) {
    const hex = f.replace(/\.erofs(\..*)?$/, '');
    if (needed.has(hex) && f.endsWith('.erofs')) continue;
    if (f.endsWith('.lock')) continue; // a pull in progress
    // The image a pull is writing (`<name>.erofs.<pid>.<random>.tmp`), under its lock.
    if (f.endsWith('.tmp') && locks.has(`${f.replace(/\.\d+\.[a-z0-9]+\.tmp$/, '')}.lock`)) continue;
    const p = join(idx.layersDir, f);
    bytes += (await stat(p).catch(() => ({ size: 0 }))).size;
    await rm(p, { force: true });
    if (f.endsWith('.squash.erofs')) {
      layers++;
      await idx.removeSquash(`sha256:${hex.slice(0, -'.squash'.length)}`);
    } else if (f.endsWith('.erofs')) {
      layers++;
      await idx.removeLayer(`sha256:${hex}`);
    }
  }
  return { layers, bytes };
}

/**
 * @example
 * for (const img of await Image.list()) console.log(img.tags, img.digest);
 * await Image.prune();
 */
export const Image = {
  /** Every cached image. */
  async list(options: ImageOptions = {}): Promise<ImageInfo[]> {
    return withIndex('image list', options, (idx) => idx.listImages().map((r) => info(idx, r)));
  },

  /** One cached image by tag or digest reference; E_IMAGE_NOT_FOUND if not cached. */
  async inspect(ref: string, options: ImageOptions = {}): Promise<ImageInfo> {
    return withIndex(`inspect of image ${ref}`, options, (idx) => info(idx, find(idx, ref)));
  },

  /**
   * Removes a cached image and the layer images only it used. Refuses (E_IMAGE_IN_USE) while
   * a sandbox is pinned to it, unless `force` (that sandbox then re-pulls the digest on start).
   */
  async remove(ref: string, options: ImageOptions & { readonly force?: boolean } = {}): Promise<void> {
    await withIndex(`removal of image ${ref}`, options, async (idx) => {
      const rec = find(idx, ref);
      const users = idx.pins().filter((p) => p.pin.digest === rec.digest).map((p) => p.sandbox);
      if (users.length > 0 && !options.force) {
        throw new CorralError('E_IMAGE_IN_USE', `image ${ref} is pinned by sandbox${users.length > 1 ? 's' : ''} ${users.map((u) => `"${u}"`).join(', ')} (remove them, or pass force)`, {
          details: { sandboxes: users },
        });
      }
      await idx.removeImage(rec);
      await collectLayers(idx);
    });
  },

  /** Removes untagged images no sandbox is pinned to, unused layer images and pull leftovers. */
  async prune(options: ImageOptions = {}): Promise<PruneResult> {
    return withIndex('image prune', options, async (idx) => {
      const pinned = new Set(idx.pins().map((p) => p.pin.digest));
      let images = 0;
      for (const rec of idx.listImages()) {
        if (rec.tags.length === 0 && !pinned.has(rec.digest)) {
          await idx.removeImage(rec);
          images++;
        }
      }
      const { layers, bytes } = await collectLayers(idx);
      // A pull in progress holds a lock on its layer; leftovers without one are garbage.
      const locks = (await readdir(idx.layersDir).catch(() => [] as string[])).filter((f) => f.endsWith('.lock'));
      if (locks.length === 0) {
        for (const f of await readdir(idx.tmpDir).catch(() => [] as string[])) await rm(join(idx.tmpDir, f), { recursive: true, force: true });
      }
      // Templates are built from images: prune the ones nothing depends on with them.
      const t = await pruneTemplates(idx.stateDir);
      return { images, layers, bytes: bytes + t.bytes, templates: t.templates };
    });
  },
};
