/**
 * Manifests, indexes and image configs (OCI and Docker v2), validated, and the choice of
 * the host platform's manifest from an index.
 */

import { arch } from 'node:os';
import { CorralError } from '../errors.ts';
import { isDigest } from './reference.ts';

export const MEDIA = {
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
} as const;

/** The Accept header of manifest requests: every kind we can read. */
export const MANIFEST_ACCEPT = [MEDIA.ociIndex, MEDIA.ociManifest, MEDIA.dockerList, MEDIA.dockerManifest].join(', ');

/** A content descriptor. */
export interface Descriptor {
  readonly mediaType: string;
  readonly digest: string;
  readonly size: number;
  readonly platform?: Platform;
}

/** An OS/architecture pair (`linux`/`amd64`, optional variant such as `v8`). */
export interface Platform {
  readonly os: string;
  readonly architecture: string;
  readonly variant?: string;
}

export type ParsedManifest =
  | { readonly kind: 'index'; readonly manifests: readonly Descriptor[] }
  | { readonly kind: 'image'; readonly config: Descriptor; readonly layers: readonly Descriptor[] };

/** How a layer blob is compressed, from its media type. */
export type LayerCompression = 'gzip' | 'zstd' | 'none';

/** The image config fields a sandbox takes defaults from. */
export interface ImageDefaults {
  readonly env: Readonly<Record<string, string>>;
  readonly cmd: readonly string[];
  readonly entrypoint: readonly string[];
  readonly workdir: string;
  readonly user: string;
}

/** The host platform in OCI terms. */
export function hostPlatform(): Platform {
  const a = arch();
  const architecture = a === 'x64' ? 'amd64' : a === 'ia32' ? '386' : a;
  return { os: 'linux', architecture };
}

/** `linux/amd64` or `linux/arm64/v8`. */
export function formatPlatform(p: Platform): string {
  return `${p.os}/${p.architecture}${p.variant ? `/${p.variant}` : ''}`;
}

function bad(what: string): never {
  throw new CorralError('E_REGISTRY', `invalid manifest: ${what}`);
}

function descriptor(d: unknown, where: string): Descriptor {
  if (typeof d !== 'object' || d === null) bad(`${where} is not an object`);
  const o = d as Record<string, unknown>;
  if (typeof o.mediaType !== 'string') bad(`${where}.mediaType is missing`);
  if (!isDigest(o.digest)) bad(`${where}.digest is not sha256:<hex>`);
  if (typeof o.size !== 'number' || !Number.isSafeInteger(o.size) || o.size < 0) bad(`${where}.size is not a size`);
  const out: { -readonly [K in keyof Descriptor]: Descriptor[K] } = { mediaType: o.mediaType, digest: o.digest, size: o.size };
  const p = o.platform as Record<string, unknown> | undefined;
  if (p && typeof p.os === 'string' && typeof p.architecture === 'string') {
    out.platform = { os: p.os, architecture: p.architecture, ...(typeof p.variant === 'string' ? { variant: p.variant } : {}) };
  }
  return out;
}

/** Parses and checks a manifest or index. `contentType` is the response's Content-Type. */
export function parseManifest(bytes: Uint8Array, contentType: string | null): ParsedManifest {
  let doc: Record<string, unknown>;
  try {
    doc = JSON.parse(Buffer.from(bytes).toString('utf8')) as Record<string, unknown>;
  } catch (err) {
    throw new CorralError('E_REGISTRY', 'invalid manifest: not JSON', { cause: err });
  }
  if (typeof doc !== 'object' || doc === null) bad('not an object');
  const mediaType = (typeof doc.mediaType === 'string' ? doc.mediaType : contentType?.split(';')[0]?.trim()) ?? '';
  if (doc.schemaVersion !== 2) bad(`schemaVersion ${String(doc.schemaVersion)} (only 2 is supported)`);
  if (mediaType === MEDIA.ociIndex || mediaType === MEDIA.dockerList || (Array.isArray(doc.manifests) && !doc.layers)) {
    if (!Array.isArray(doc.manifests)) bad('index without manifests');
    return { kind: 'index', manifests: doc.manifests.map((m, i) => descriptor(m, `manifests[${i}]`)) };
  }
  if (!Array.isArray(doc.layers)) bad('no layers');
  return { kind: 'image', config: descriptor(doc.config, 'config'), layers: doc.layers.map((l, i) => descriptor(l, `layers[${i}]`)) };
}

/**
 * Picks the manifest for `platform` from an index; throws E_IMAGE_PLATFORM listing what the
 * index offers when none matches.
 */
export function selectPlatform(manifests: readonly Descriptor[], platform: Platform, ref: string): Descriptor {
  const candidates = manifests.filter((m) => m.platform && m.platform.os === platform.os && m.platform.architecture === platform.architecture);
  const match = (platform.variant ? candidates.find((m) => m.platform?.variant === platform.variant) : undefined) ?? candidates[0];
  if (match) return match;
  const offered = manifests.filter((m) => m.platform && m.platform.architecture !== 'unknown').map((m) => formatPlatform(m.platform!));
  throw new CorralError('E_IMAGE_PLATFORM', `image ${ref} has no manifest for ${formatPlatform(platform)} (it offers: ${offered.join(', ') || 'none'})`, {
    details: { platform: formatPlatform(platform), offered },
  });
}

/** The compression of a layer media type; throws for types that are not layers we can unpack. */
export function layerCompression(mediaType: string): LayerCompression {
  if (/tar\+gzip$|rootfs\.diff\.tar\.gzip$|tar\.gzip$/.test(mediaType)) return 'gzip';
  if (/tar\+zstd$/.test(mediaType)) return 'zstd';
  if (/image\.layer\.v1\.tar$|rootfs\.diff\.tar$/.test(mediaType)) return 'none';
  throw new CorralError('E_IMAGE_LAYER', `unsupported layer media type ${mediaType}`);
}

/** Parsed image config: the defaults and the layers' uncompressed digests. */
export interface ParsedConfig {
  readonly defaults: ImageDefaults;
  readonly diffIds: readonly string[];
  readonly platform: Platform;
}

function strings(v: unknown): string[] {
  return Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : [];
}

/** Parses an image config blob. */
export function parseImageConfig(bytes: Uint8Array): ParsedConfig {
  let doc: Record<string, unknown>;
  try {
    doc = JSON.parse(Buffer.from(bytes).toString('utf8')) as Record<string, unknown>;
  } catch (err) {
    throw new CorralError('E_REGISTRY', 'invalid image config: not JSON', { cause: err });
  }
  const c = (doc.config ?? {}) as Record<string, unknown>;
  const env: Record<string, string> = {};
  for (const kv of strings(c.Env)) {
    const i = kv.indexOf('=');
    if (i > 0) env[kv.slice(0, i)] = kv.slice(i + 1);
  }
  const rootfs = (doc.rootfs ?? {}) as Record<string, unknown>;
  const diffIds = strings(rootfs.diff_ids);
  if (!diffIds.every(isDigest)) throw new CorralError('E_REGISTRY', 'invalid image config: rootfs.diff_ids must be sha256 digests');
  return {
    defaults: {
      env,
      cmd: strings(c.Cmd),
      entrypoint: strings(c.Entrypoint),
      workdir: typeof c.WorkingDir === 'string' && c.WorkingDir.startsWith('/') ? c.WorkingDir : '/',
      user: typeof c.User === 'string' ? c.User : '',
    },
    diffIds,
    platform: { os: String(doc.os ?? 'linux'), architecture: String(doc.architecture ?? 'unknown') },
  };
}
