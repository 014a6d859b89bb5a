/**
 * Pulling an image into the local cache, by policy, and resolving a reference to the layer
 * images a sandbox boots from.
 *
 * - `if-missing` (default): use the cached image the tag points at, pull only if missing.
 * - `always`: resolve the tag at the registry every time; fetch only layers not cached.
 * - `never`: use the cache or fail with E_IMAGE_NOT_CACHED.
 * - A pinned digest (a sandbox's first pull) wins over the tag: the same layers forever.
 *
 * Manifests, configs and blobs are checked against their digests; layers are keyed by their
 * uncompressed digest and built once (a lock file makes concurrent pulls of one layer, from
 * any thread or process, wait for a single build). A layer is unpacked as it downloads,
 * straight into its erofs image (src/image/unpackLayer.ts), up to 3 layers at once; the image
 * is kept only once both its compressed digest and its diff_id held.
 *
 * An image of more than 3 layers also gets a squashed layer image of its layers above the
 * bottom one (src/image/squash.ts, in the image pool): their blobs are kept (or fetched again,
 * for layers cached by another image or an image pulled before squashing existed) until it
 * is built.
 */

import { randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { finished, pipeline } from 'node:stream/promises';
import type { ImagePullEventBody } from '../bus/events.ts';
import { CorralError } from '../errors.ts';
import type { Credentials } from './auth.ts';
import { checkDigest, digestHex, DigestTap, sha256Digest } from './digest.ts';
import { ImageIndex, type ImageRecord } from './ImageIndex.ts';
import { withFileLock } from './lock.ts';
import { formatPlatform, hostPlatform, layerCompression, parseImageConfig, parseManifest, selectPlatform, type ImageDefaults, type Platform } from './manifest.ts';
import { withImagePool } from './pool.ts';
import { unpackScratchDir } from './scratch.ts';
import { squashPlan } from './squash.ts';
import { parseReference, type ImageReference } from './reference.ts';
import { unpackLayer, type UnpackResult } from './unpackLayer.ts';
import { RegistryClient } from './RegistryClient.ts';

import type { PullPolicy } from './pullPolicy.ts';

/** Options of {@link resolveImage}. */
export interface ResolveImageOptions {
  readonly stateDir: string;
  readonly policy?: PullPolicy;
  readonly credentials?: Credentials | (() => Credentials | undefined) | undefined;
  readonly insecureRegistries?: readonly string[] | undefined;
  /** Default: the host's (linux/amd64 here). */
  readonly platform?: Platform;
  /** Use exactly this platform manifest (a sandbox's pin). */
  readonly pinnedDigest?: string | undefined;
  readonly signal?: AbortSignal | undefined;
  readonly onEvent?: ((e: ImagePullEventBody) => void) | undefined;
  /** An open index to use (else one is opened and closed). */
  readonly index?: ImageIndex;
}

/** An image ready to boot: its layer images, topmost first, and its squashed one if any. */
export interface ResolvedImage {
  /** The canonical reference (`registry/repo:tag`). */
  readonly ref: string;
  readonly name: string;
  /** The platform manifest digest (what a sandbox pins). */
  readonly digest: string;
  readonly defaults: ImageDefaults;
  /** Layer image files, topmost first (overlayfs lowerdir order). */
  readonly layers: readonly { readonly diffId: string; readonly path: string }[];
  /**
   * Images of more than 3 layers: the layers above the bottom one merged into one image
   * (boot from it and the bottom layer). Missing only for an image cached before squashing
   * existed and resolved with the policy "never".
   */
  readonly squashed?: { readonly key: string; readonly path: string } | undefined;
  /** True if anything was fetched from the registry. */
  readonly pulled: boolean;
}

const MAX_CONFIG_BYTES = 4 * 1024 * 1024;
const DOWNLOAD_CONCURRENCY = 3;
const PROGRESS_EVERY_MS = 200;

const inflight = new Map<string, Promise<ResolvedImage>>();

type Squash = Parameters<Parameters<typeof withImagePool>[0]>[0];

/**
 * Resolves `ref` by policy to layer images in the cache, pulling what is missing.
 * Concurrent calls for the same image in one thread share one pull; other threads and
 * processes share layer builds through lock files.
 *
 * @example
 * const img = await resolveImage('127.0.0.1:5000/python:3.12', { stateDir, onEvent: console.log });
 */
export function resolveImage(ref: string, options: ResolveImageOptions): Promise<ResolvedImage> {
  const r = parseReference(ref);
  const key = [options.stateDir, r.canonical, options.pinnedDigest ?? '', options.policy ?? 'if-missing', formatPlatform(options.platform ?? hostPlatform())].join('|');
  const cur = inflight.get(key);
  if (cur) return cur;
  const p = (async () => {
    const index = options.index ?? ImageIndex.open(options.stateDir);
    try {
      return await resolveWith(index, r, options);
    } finally {
      if (!options.index) await index.close();
    }
  })().finally(() => inflight.delete(key));
  inflight.set(key, p);
  return p;
}

function toResolved(index: ImageIndex, r: ImageReference, rec: ImageRecord, pulled: boolean): ResolvedImage {
  const plan = squashPlan(rec.layers.map((l) => l.diffId));
  return {
    squashed: plan && index.hasSquash(plan.key) ? { key: plan.key, path: index.squashPath(plan.key) } : undefined,
    ref: r.canonical,
    name: rec.name,
    digest: rec.digest,
    defaults: rec.defaults,
    layers: [...rec.layers].reverse().map((l) => ({ diffId: l.diffId, path: index.layerPath(l.diffId) })),
    pulled,
  };
}

async function resolveWith(index: ImageIndex, r: ImageReference, o: ResolveImageOptions): Promise<ResolvedImage> {
  const policy = o.policy ?? 'if-missing';
  const t0 = performance.now();
  const wanted = o.pinnedDigest ?? r.digest;
  const cachedDigest = wanted ?? (policy !== 'always' && r.tag !== undefined ? index.getTag(r.canonical) : undefined);
  const cached = cachedDigest ? index.getImage(r.name, cachedDigest) : undefined;
  // A digest is immutable: once complete in the cache, "always" has nothing new to fetch.
  if (index.isComplete(cached) && (policy !== 'always' || wanted)) {
    o.onEvent?.({ type: 'image.pull.done', image: r.canonical, digest: cached.digest, layers: cached.layers.length, bytes: 0, durationMs: performance.now() - t0, cached: true });
    return toResolved(index, r, cached, false);
  }
  if (policy === 'never') {
    // Cached before squashing existed: the caller boots the separate layers if they fit.
    if (index.hasLayers(cached)) return toResolved(index, r, cached, false);
    throw new CorralError('E_IMAGE_NOT_CACHED', `image ${r.canonical}${wanted ? `@${wanted}` : ''} is not in the local cache and the pull policy is "never"`, {
      details: { image: r.canonical },
    });
  }
  try {
    // A cached image only missing its squashed layer: the same digest, not what the tag says now.
    const rec = await pull(index, r, wanted ?? (index.hasLayers(cached) ? cached.digest : undefined), o, t0);
    return toResolved(index, r, rec, true);
  } catch (err) {
    o.onEvent?.({ type: 'image.pull.failed', image: r.canonical, error: { name: (err as Error).name, message: (err as Error).message, ...((err as CorralError).code ? { code: (err as CorralError).code } : {}) } });
    throw err;
  }
}

async function pull(index: ImageIndex, r: ImageReference, wanted: string | undefined, o: ResolveImageOptions, t0: number): Promise<ImageRecord> {
  const client = new RegistryClient(r.registry, { credentials: o.credentials, insecureRegistries: o.insecureRegistries, signal: o.signal });
  const platform = o.platform ?? hostPlatform();
  let m = await client.manifest(r.repository, wanted ?? r.tag!);
  let parsed = parseManifest(m.bytes, m.contentType);
  if (parsed.kind === 'index') {
    const desc = selectPlatform(parsed.manifests, platform, r.canonical);
    m = await client.manifest(r.repository, desc.digest);
    parsed = parseManifest(m.bytes, m.contentType);
    if (parsed.kind !== 'image') throw new CorralError('E_REGISTRY', `image ${r.canonical}: the ${formatPlatform(platform)} entry of the index is not an image manifest`);
  }
  const { config, layers } = parsed;
  if (config.size > MAX_CONFIG_BYTES) throw new CorralError('E_REGISTRY', `image ${r.canonical}: config blob of ${config.size} bytes is too large`);
  const configRes = await client.blob(r.repository, config.digest);
  let configBody: ArrayBuffer;
  try {
    configBody = await configRes.arrayBuffer();
  } catch (err) {
    throw brokenDownload(err, `config of ${r.canonical}`, r.registry, 0, config.size, o.signal);
  }
  const configBytes = Buffer.from(configBody);
  checkDigest(`config of ${r.canonical}`, config.digest, sha256Digest(configBytes));
  const cfg = parseImageConfig(configBytes);
  if (cfg.diffIds.length !== layers.length) {
    throw new CorralError('E_REGISTRY', `image ${r.canonical}: ${layers.length} layers but ${cfg.diffIds.length} diff_ids in its config`);
  }
  const work = layers.map((l, i) => ({ ...l, diffId: cfg.diffIds[i]!, compression: layerCompression(l.mediaType), squash: false }));
  const plan = squashPlan(work.map((l) => l.diffId));
  const squashOut = plan && !index.hasSquash(plan.key) ? index.squashPath(plan.key) : undefined;
  if (squashOut) for (const l of work.slice(1)) l.squash = true;
  // Blobs of the layers to squash are kept until the squashed image is built.
  const kept = new Map<(typeof work)[number], string>();
  const missing = work.filter((l) => l.squash || !index.hasLayer(l.diffId));
  const image = r.canonical;
  o.onEvent?.({
    type: 'image.pull.started',
    image,
    digest: m.digest,
    layers: work.length,
    cachedLayers: work.length - missing.length,
    bytesTotal: missing.reduce((s, l) => s + l.size, 0),
  });

  let bytes = 0;
  const fetchAll = async (squash: Squash | undefined): Promise<void> => {
    // Built by another pull while this one waited for the squash lock: no blob to keep.
    if (plan && index.hasSquash(plan.key)) for (const l of work) l.squash = false;
    const queue = work.filter((l) => l.squash || !index.hasLayer(l.diffId));
    const worker = async () => {
      for (let l = queue.shift(); l; l = queue.shift()) {
        const layer = l;
        const what = `layer ${layer.digest} of ${image}`;
        let last = 0;
        const progress = (phase: 'download' | 'unpack' | 'done', done: number, force = false) => {
          const now = performance.now();
          if (!force && now - last < PROGRESS_EVERY_MS) return;
          last = now;
          o.onEvent?.({ type: 'image.pull.progress', image, layer: layer.digest, phase, bytesDone: done, bytesTotal: layer.size });
        };
        const task = { compression: layer.compression, diffId: layer.diffId, out: index.layerPath(layer.diffId) };
        /** A layer to squash: its blob is kept on disk, then unpacked from there. */
        const download = async (): Promise<string> => {
          const path = join(index.tmpDir, `${digestHex(layer.digest)}.${randomBytes(4).toString('hex')}.blob`);
          kept.set(layer, path);
          const res = await client.blob(r.repository, layer.digest, o.signal);
          const tap = new DigestTap(layer.size, (n) => progress('download', n));
          await pipeline(Readable.fromWeb(res.body as never), tap, createWriteStream(path, { mode: 0o600 }), ...(o.signal ? [{ signal: o.signal }] : []) as []).catch((err: unknown) => {
            throw brokenDownload(err, what, r.registry, tap.bytes, layer.size, o.signal);
          });
          checkDigest(what, layer.digest, tap.digest());
          bytes += tap.bytes;
          return path;
        };
        /** Any other layer: unpacked as it streams in, kept only if both digests hold. */
        const stream = async (): Promise<UnpackResult> => {
          const res = await client.blob(r.repository, layer.digest, o.signal);
          const body = Readable.fromWeb(res.body as never, { highWaterMark: 1 << 20 });
          const tap = new DigestTap(layer.size, (n) => progress('download', n));
          let broken: unknown;
          body.once('error', (e) => {
            broken ??= e;
            tap.destroy(e);
          });
          tap.once('error', (e) => (broken ??= e));
          body.pipe(tap);
          let checked = false;
          // The whole blob read and hashed, whatever the unpack left of it (a corrupted blob
          // can break the archive before its digest can be checked: the digest is the cause).
          const whole = async (): Promise<void> => {
            if (checked) return;
            if (!tap.readableEnded && !broken) {
              tap.unpipe();
              tap.resume();
              await finished(tap).catch((e: unknown) => void (broken ??= e));
            }
            if (broken) throw brokenDownload(broken, what, r.registry, tap.bytes, layer.size, o.signal);
            progress('unpack', layer.size, true);
            checkDigest(what, layer.digest, tap.digest());
            checked = true;
            bytes += tap.bytes;
          };
          try {
            return await unpackLayer(tap, task, whole);
          } catch (err) {
            if (broken) throw brokenDownload(broken, what, r.registry, tap.bytes, layer.size, o.signal);
            // A bad archive (not a local failure such as a full disk) may be a corrupted blob.
            const code = (err as CorralError).code;
            if (code === 'E_IMAGE_LAYER' || code === 'E_IMAGE_DIGEST') await whole();
            throw err;
          } finally {
            body.destroy();
          }
        };
        const blob = layer.squash ? await download() : undefined;
        await withFileLock(
          `${task.out}.lock`,
          () => index.hasLayer(layer.diffId),
          async () => {
            const res = blob ? await unpackLayer(createReadStream(blob, { highWaterMark: 1 << 20 }), task) : await stream();
            await index.putLayer({ diffId: layer.diffId, imageBytes: res.imageBytes, tarBytes: res.tarBytes, createdAt: Date.now() });
          },
          o.signal,
        );
        progress('done', layer.size, true);
      }
    };
    try {
      const results = await Promise.allSettled(Array.from({ length: Math.min(DOWNLOAD_CONCURRENCY, queue.length) }, worker));
      const failed = results.find((x): x is PromiseRejectedResult => x.status === 'rejected');
      if (failed) throw failed.reason;
      const merged = work.filter((l) => l.squash);
      if (plan && squashOut && squash && merged.length > 0) {
        let workDir: string | undefined;
        const squashing = (bytesDone: number) =>
          o.onEvent?.({ type: 'image.pull.progress', image, phase: 'squash', layers: merged.map((l) => l.digest), bytesDone, bytesTotal: merged.reduce((s, l) => s + l.size, 0) });
        squashing(0);
        try {
          const res = await squash(
            {
              kind: 'squash',
              layers: merged.map((l) => ({ blob: kept.get(l)!, compression: l.compression, diffId: l.diffId })),
              out: squashOut,
              workDir: (workDir = unpackScratchDir(merged.reduce((s, l) => s + l.size, 0), index.tmpDir)),
            },
            o.signal,
          );
          await index.putSquash({ key: plan.key, diffIds: plan.diffIds, imageBytes: res.imageBytes, tarBytes: res.tarBytes, createdAt: Date.now() });
          squashing(merged.reduce((s, l) => s + l.size, 0));
        } finally {
          if (workDir) await rm(workDir, { recursive: true, force: true });
        }
      }
    } finally {
      for (const blob of kept.values()) await rm(blob, { force: true });
    }
  };
  if (squashOut) {
    // The squash lock is held from the first kept blob on: it also tells Image.prune that
    // the blobs in the tmp dir are in use. The pool (for the squash only) boots meanwhile.
    await withImagePool((squash) => withFileLock(`${squashOut}.lock`, () => false, () => fetchAll(squash), o.signal));
  } else if (missing.length > 0) {
    await fetchAll(undefined);
  }

  const rec: ImageRecord = {
    name: r.name,
    digest: m.digest,
    tags: [],
    platform: formatPlatform(cfg.platform),
    configDigest: config.digest,
    defaults: cfg.defaults,
    layers: work.map((l) => ({ digest: l.digest, diffId: l.diffId, size: l.size, mediaType: l.mediaType })),
    sizeBytes: work.reduce((s, l) => s + l.size, 0),
    pulledAt: Date.now(),
  };
  await index.putImage(rec, r.tag !== undefined && !r.digest ? r.canonical : undefined);
  o.onEvent?.({ type: 'image.pull.done', image, digest: m.digest, layers: work.length, bytes, durationMs: performance.now() - t0, cached: false });
  return rec;
}

/**
 * A blob download that broke off (the registry or the network closed the connection, a
 * write failed): E_REGISTRY naming the blob and how far it got, unless it is already a
 * CorralError or the caller aborted.
 */
function brokenDownload(err: unknown, what: string, registry: string, done: number, total: number, signal: AbortSignal | undefined): unknown {
  if (err instanceof CorralError || signal?.aborted) return err;
  const e = err as Error & { cause?: { message?: string }; code?: string };
  // A full disk is not the registry's fault: say so, with the system's words.
  if (e.code === 'ENOSPC') return new CorralError('E_IMAGE_LAYER', `cannot store ${what}: ${e.message}`, { cause: err });
  const why = [e.message, e.cause?.message].filter(Boolean).join(': ');
  return new CorralError('E_REGISTRY', `downloading ${what} from registry ${registry} failed after ${done} of ${total} bytes: the connection broke (${why})`, { cause: err });
}
