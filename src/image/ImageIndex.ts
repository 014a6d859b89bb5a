/**
 * The local image cache's index, in the state dir's LMDB environment (next to the sandbox
 * records): tags → manifest digests, images (manifest digest → layers and config defaults),
 * layers (uncompressed digest → erofs layer image), and each sandbox's pinned image (a field
 * of its record, so it goes when the sandbox is removed).
 *
 * Layer images live in `<stateDir>/images/layers/<hex>.erofs`, squashed ones (images of more
 * than 3 layers, src/image/squash.ts) next to them as `<key hex>.squash.erofs`; a layer is
 * present when its file is (files are renamed into place complete), the record adds its sizes.
 */

import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { Database, RootDatabase } from 'lmdb';
import { sharedRoot } from '../store/lmdbEnv.ts';
import { CorralError } from '../errors.ts';
import { digestHex } from './digest.ts';
import type { ImageDefaults } from './manifest.ts';
import { squashPlan } from './squash.ts';

/** One layer of an image, bottom first in {@link ImageRecord.layers}. */
export interface ImageLayerRef {
  /** Digest of the compressed blob in the registry. */
  readonly digest: string;
  /** Digest of the uncompressed tar (the config's diff_id): the layer image's key. */
  readonly diffId: string;
  readonly size: number;
  readonly mediaType: string;
}

/** A pulled image: one platform manifest. */
export interface ImageRecord {
  /** `registry/repository`. */
  readonly name: string;
  /** The platform manifest's digest (what sandboxes pin). */
  readonly digest: string;
  /** Tags (canonical refs) last seen pointing at it. */
  readonly tags: readonly string[];
  readonly platform: string;
  readonly configDigest: string;
  readonly defaults: ImageDefaults;
  readonly layers: readonly ImageLayerRef[];
  /** Sum of the compressed layer sizes. */
  readonly sizeBytes: number;
  readonly pulledAt: number;
}

/** A built layer image. */
export interface LayerRecord {
  readonly diffId: string;
  readonly imageBytes: number;
  readonly tarBytes: number;
  readonly createdAt: number;
}

/** A squashed layer image (src/image/squash.ts): the layers above an image's bottom one, merged. */
export interface SquashRecord {
  /** The squash key (a hash of the merged diff_ids, in order). */
  readonly key: string;
  /** The merged layers' diff_ids, bottom first. */
  readonly diffIds: readonly string[];
  readonly imageBytes: number;
  readonly tarBytes: number;
  readonly createdAt: number;
}

/** The image a sandbox was first booted from, kept in its record. */
export interface PinnedImage {
  readonly ref: string;
  readonly digest: string;
  readonly pinnedAt: number;
}

interface TagRecord {
  readonly digest: string;
  readonly updatedAt: number;
}

/** Where the image cache keeps its files. */
export function imagesDir(stateDir: string): string {
  return join(stateDir, 'images');
}

/**
 * @example
 * const idx = ImageIndex.open(stateDir); idx.getTag('docker.io/library/python:3.12'); await idx.close();
 */
export class ImageIndex {
  readonly stateDir: string;
  readonly layersDir: string;
  readonly tmpDir: string;
  readonly #root: RootDatabase;
  readonly #tags: Database<TagRecord, string>;
  readonly #images: Database<ImageRecord, string>;
  readonly #layers: Database<LayerRecord, string>;
  readonly #squashes: Database<SquashRecord, string>;
  readonly #sandboxes: Database<Record<string, unknown>, string>;
  #closed = false;

  private constructor(stateDir: string, root: RootDatabase) {
    this.stateDir = stateDir;
    this.layersDir = join(imagesDir(stateDir), 'layers');
    this.tmpDir = join(imagesDir(stateDir), 'tmp');
    this.#root = root;
    this.#tags = root.openDB({ name: 'image-tags' });
    this.#images = root.openDB({ name: 'images' });
    this.#layers = root.openDB({ name: 'image-layers' });
    this.#squashes = root.openDB({ name: 'image-squashes' });
    this.#sandboxes = root.openDB({ name: 'sandboxes' });
  }

  /** Opens the index in `stateDir` (the same LMDB environment as the Store; any thread). */
  static open(stateDir: string): ImageIndex {
    try {
      mkdirSync(join(imagesDir(stateDir), 'layers'), { recursive: true, mode: 0o700 });
      mkdirSync(join(imagesDir(stateDir), 'tmp'), { recursive: true, mode: 0o700 });
      return new ImageIndex(stateDir, sharedRoot(stateDir));
    } catch (err) {
      throw new CorralError('E_STORE', `cannot open the image index in ${stateDir}: ${(err as Error).message}`, { cause: err });
    }
  }

  /** The file of a layer image. */
  layerPath(diffId: string): string {
    return join(this.layersDir, `${digestHex(diffId)}.erofs`);
  }

  hasLayer(diffId: string): boolean {
    return existsSync(this.layerPath(diffId));
  }

  getLayer(diffId: string): LayerRecord | undefined {
    return this.#layers.get(diffId);
  }

  async putLayer(rec: LayerRecord): Promise<void> {
    await this.#layers.put(rec.diffId, rec);
  }

  /** The file of a squashed layer image. */
  squashPath(key: string): string {
    return join(this.layersDir, `${digestHex(key)}.squash.erofs`);
  }

  hasSquash(key: string): boolean {
    return existsSync(this.squashPath(key));
  }

  getSquash(key: string): SquashRecord | undefined {
    return this.#squashes.get(key);
  }

  async putSquash(rec: SquashRecord): Promise<void> {
    await this.#squashes.put(rec.key, rec);
  }

  async removeSquash(key: string): Promise<void> {
    await this.#squashes.remove(key);
  }

  getTag(ref: string): string | undefined {
    return this.#tags.get(ref)?.digest;
  }

  getImage(name: string, digest: string): ImageRecord | undefined {
    return this.#images.get(`${name}@${digest}`);
  }

  /** True if the image and every layer image it needs (its squashed one too) are present. */
  isComplete(rec: ImageRecord | undefined): rec is ImageRecord {
    if (!this.hasLayers(rec)) return false;
    const plan = squashPlan(rec.layers.map((l) => l.diffId));
    return !plan || this.hasSquash(plan.key);
  }

  /** True if the image and each of its own layer images are present (squashed or not). */
  hasLayers(rec: ImageRecord | undefined): rec is ImageRecord {
    return !!rec && rec.layers.every((l) => this.hasLayer(l.diffId));
  }

  /** Records a pulled image and points `tag` (a canonical ref) at it. */
  async putImage(rec: ImageRecord, tag?: string): Promise<void> {
    await this.#root.transaction(() => {
      if (tag) {
        const prev = this.#tags.get(tag)?.digest;
        if (prev && prev !== rec.digest) {
          const old = this.#images.get(`${rec.name}@${prev}`);
          if (old) this.#images.putSync(`${old.name}@${old.digest}`, { ...old, tags: old.tags.filter((t) => t !== tag) });
        }
        this.#tags.putSync(tag, { digest: rec.digest, updatedAt: Date.now() });
      }
      const cur = this.#images.get(`${rec.name}@${rec.digest}`);
      const tags = [...new Set([...(cur?.tags ?? []), ...rec.tags, ...(tag ? [tag] : [])])];
      this.#images.putSync(`${rec.name}@${rec.digest}`, { ...rec, tags });
    });
  }

  listImages(): ImageRecord[] {
    return [...this.#images.getRange()].map((e) => e.value);
  }

  listLayers(): LayerRecord[] {
    return [...this.#layers.getRange()].map((e) => e.value);
  }

  async removeImage(rec: ImageRecord): Promise<void> {
    await this.#root.transaction(() => {
      this.#images.removeSync(`${rec.name}@${rec.digest}`);
      for (const t of rec.tags) if (this.#tags.get(t)?.digest === rec.digest) this.#tags.removeSync(t);
    });
  }

  async removeLayer(diffId: string): Promise<void> {
    await this.#layers.remove(diffId);
  }

  /** The image a sandbox is pinned to, from its record. */
  getPin(sandbox: string): PinnedImage | undefined {
    const rec = this.#sandboxes.get(sandbox) as { image?: PinnedImage } | undefined;
    return rec?.image;
  }

  /** Pins a sandbox to an image digest (a field of its record; no-op if it has none). */
  async pin(sandbox: string, pin: PinnedImage): Promise<void> {
    await this.#sandboxes.transaction(() => {
      const cur = this.#sandboxes.get(sandbox);
      if (cur) this.#sandboxes.putSync(sandbox, { ...cur, image: pin });
    });
  }

  /** Every sandbox record's pin (for prune and remove). */
  pins(): { sandbox: string; pin: PinnedImage }[] {
    const out: { sandbox: string; pin: PinnedImage }[] = [];
    for (const { key, value } of this.#sandboxes.getRange()) {
      const pin = (value as { image?: PinnedImage }).image;
      if (pin) out.push({ sandbox: key, pin });
    }
    return out;
  }

  /** Other sandbox records (name → record) — to find a running one on the same disk. */
  sandboxRecords(): { name: string; record: Record<string, unknown> }[] {
    return [...this.#sandboxes.getRange()].map((e) => ({ name: e.key, record: e.value }));
  }

  /** Flushes and closes. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    // The root is shared by the thread's users of the state dir: flush, do not close.
    await this.#root.flushed;
  }
}
