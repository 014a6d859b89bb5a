/**
 * What a sandbox's root is made of, from its config: the layer images of an OCI image
 * (pulled by policy, pinned to a digest at first use), a local image built by setup
 * (`corral/base`), or a disk image. Called by prepareRoot() in the sandbox worker.
 */

import { existsSync, readFileSync } from 'node:fs';
import type { ImagePullEventBody } from '../bus/events.ts';
import type { SandboxConfig } from '../config.ts';
import { CorralError } from '../errors.ts';
import type { Artifacts } from '../runtime/artifacts.ts';
import type { DiskRoot, LayerDisk } from '../vm/qemuArgs.ts';
import { resolveCredentials } from './auth.ts';
import { ImageIndex } from './ImageIndex.ts';
import type { ImageDefaults } from './manifest.ts';
import { resolveImage, type ResolvedImage } from './pull.ts';
import { parseReference } from './reference.ts';
import { SQUASH_ABOVE } from './squash.ts';
import { ifMissing } from '../runtime/errno.ts';

/** Options of {@link resolveRootImage}. */
export interface RootImageOptions {
  readonly onEvent?: ((e: ImagePullEventBody) => void) | undefined;
  /** Secret handle → value, for `registryAuth.secret` (handed over by the supervisor). */
  readonly secrets?: Readonly<Record<string, string>> | undefined;
  readonly signal?: AbortSignal | undefined;
}

/** A resolved root. */
export interface RootImage {
  /** Read-only layer images, topmost first (empty for a disk root). */
  readonly lower: readonly LayerDisk[];
  readonly disk?: DiskRoot;
  /** Image config defaults (env, cmd, entrypoint, workdir, user). */
  readonly defaults: ImageDefaults;
  /** The canonical reference and pinned digest of an OCI image. */
  readonly ref?: string;
  readonly digest?: string;
}

const EMPTY_DEFAULTS: ImageDefaults = { env: {}, cmd: [], entrypoint: [], workdir: '/', user: '' };

function localDefaults(path: string | undefined): ImageDefaults {
  if (!path) return EMPTY_DEFAULTS;
  // An image without a config file has no defaults; one whose config is unreadable or not
  // JSON is broken, and booting it without its env and command would hide that.
  const text = ifMissing(() => readFileSync(path, 'utf8'), undefined);
  if (text === undefined) return EMPTY_DEFAULTS;
  try {
    const c = JSON.parse(text) as { env?: string[]; cmd?: string[]; entrypoint?: string[]; workdir?: string; user?: string };
    const env: Record<string, string> = {};
    for (const kv of c.env ?? []) {
      const i = kv.indexOf('=');
      if (i > 0) env[kv.slice(0, i)] = kv.slice(i + 1);
    }
    return { env, cmd: c.cmd ?? [], entrypoint: c.entrypoint ?? [], workdir: c.workdir ?? '/', user: c.user ?? '' };
  } catch (err) {
    throw new CorralError('E_IMAGE_NOT_FOUND', `the image config ${path} is not valid JSON: ${(err as Error).message}`, { cause: err });
  }
}

function ownerAlive(pid: unknown): boolean {
  if (typeof pid !== 'number' || pid <= 0) return false;
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Most lower layers besides the upper disk, serial port and RTC filler (src/vm/qemuArgs.ts). */
const MAX_SEPARATE_LAYERS = 5;

/**
 * The lower disks of an OCI image, topmost first: at most {@link SQUASH_ABOVE} layers as they
 * are, more as their squashed layer over the bottom one (two virtio slots, whatever the
 * image), so that volumes and a NIC keep their slots. Without a squashed layer (an image
 * cached before squashing, resolved with the policy "never"): the separate layers if they
 * fit, else E_IMAGE_NOT_CACHED saying to pull it again.
 *
 * @example
 * lowerLayers(await resolveImage(ref, { stateDir })); // [{ path: '…/x.squash.erofs', fstype: 'erofs' }, { path: '…/base.erofs', … }]
 */
export function lowerLayers(img: Pick<ResolvedImage, 'ref' | 'layers' | 'squashed'>): LayerDisk[] {
  if (img.squashed) return [{ path: img.squashed.path, fstype: 'erofs' }, { path: img.layers[img.layers.length - 1]!.path, fstype: 'erofs' }];
  if (img.layers.length > SQUASH_ABOVE && img.layers.length > MAX_SEPARATE_LAYERS) {
    throw new CorralError(
      'E_IMAGE_NOT_CACHED',
      `image ${img.ref} (${img.layers.length} layers) was cached before layer squashing and its squashed layer is missing; its layers do not fit the ${MAX_SEPARATE_LAYERS} layer slots of a microVM and the pull policy is "never": pull it again (pull policy "if-missing" or "always", or corral pull ${img.ref})`,
      { details: { image: img.ref } },
    );
  }
  return img.layers.map((l) => ({ path: l.path, fstype: 'erofs' }));
}

/**
 * @example
 * const root = await resolveRootImage(config, stateDir, loadArtifacts(), { onEvent });
 */
export async function resolveRootImage(config: SandboxConfig, stateDir: string, artifacts: Artifacts, options: RootImageOptions = {}): Promise<RootImage> {
  if (config.disk) {
    if (!existsSync(config.image)) {
      throw new CorralError('E_IMAGE_NOT_FOUND', `disk image ${config.image} does not exist`, { details: { image: config.image } });
    }
    const index = ImageIndex.open(stateDir);
    try {
      // The disk is the guest's writable root: two VMs on one file would corrupt it.
      for (const { name, record } of index.sandboxRecords()) {
        const c = record.config as { image?: string; disk?: unknown } | undefined;
        if (name !== config.name && c?.disk && c.image === config.image && record.status !== 'stopped' && ownerAlive(record.ownerPid)) {
          throw new CorralError('E_DISK_BUSY', `disk image ${config.image} is the root of running sandbox "${name}" (disk roots have no copy-on-write: give each sandbox its own copy)`, {
            details: { image: config.image, sandbox: name },
          });
        }
      }
    } finally {
      await index.close();
    }
    return { lower: [], disk: { path: config.image, format: config.disk.format, fstype: config.disk.fstype }, defaults: EMPTY_DEFAULTS };
  }
  const local = artifacts.images[config.image];
  if (local) return { lower: [{ path: local.rootfs, fstype: local.fstype }], defaults: localDefaults(local.config) };

  const ref = parseReference(config.image);
  const index = ImageIndex.open(stateDir);
  try {
    const pin = index.getPin(config.name);
    const pinned = pin && pin.ref === ref.canonical ? pin.digest : undefined;
    const img = await resolveImage(config.image, {
      stateDir,
      index,
      policy: config.pullPolicy ?? 'if-missing',
      credentials: () => resolveCredentials(config.registryAuth, options.secrets),
      insecureRegistries: config.insecureRegistries,
      pinnedDigest: pinned,
      signal: options.signal,
      onEvent: options.onEvent,
    });
    const lower = lowerLayers(img);
    if (!pinned) await index.pin(config.name, { ref: img.ref, digest: img.digest, pinnedAt: Date.now() });
    return { lower, defaults: img.defaults, ref: img.ref, digest: img.digest };
  } finally {
    await index.close();
  }
}
