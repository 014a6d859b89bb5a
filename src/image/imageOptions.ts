/**
 * The image-related fields of a sandbox config, validated (field paths in errors):
 * `pullPolicy`, `registryAuth` (a reference to credentials, never a password),
 * `insecureRegistries`, and `disk` for disk-image roots.
 */

import { InvalidOptionError } from '../errors.ts';
import { normalizeRegistryAuth, type RegistryAuthConfig } from './auth.ts';
import { absoluteDiskPath, normalizeDisk, type DiskImageConfig } from './disk.ts';
import { PULL_POLICIES, type PullPolicy } from './pullPolicy.ts';
import { isDiskImagePath, parseReference } from './reference.ts';

/** The image fields of a SandboxConfig. */
export interface ImageConfigFields {
  /** An OCI reference, `corral/base`, or (for a disk image) the disk file's absolute path. */
  readonly image: string;
  /** When to contact the registry. Default `if-missing`. */
  readonly pullPolicy?: PullPolicy;
  readonly registryAuth?: RegistryAuthConfig;
  /** Registries (host[:port]) that may be used over plain http. Loopback always may. */
  readonly insecureRegistries?: readonly string[];
  /** Set iff `image` is a disk image file. */
  readonly disk?: DiskImageConfig;
}

/** The keys this module owns in a config. */
export const IMAGE_CONFIG_KEYS = ['pullPolicy', 'registryAuth', 'insecureRegistries', 'disk'] as const;

const REGISTRY_RE = /^[A-Za-z0-9.-]+(:[0-9]{1,5})?$/;

/** Local images built by setup (not OCI references). */
const LOCAL_RE = /^corral\/[a-z0-9._-]+$/;

/**
 * Validates and normalises the image fields. Relative disk paths become absolute (against
 * the current directory), so a built config means the same file wherever it is read.
 */
export function normalizeImageFields(c: Record<string, unknown>, image: string): ImageConfigFields {
  const out: { -readonly [K in keyof ImageConfigFields]: ImageConfigFields[K] } = { image };
  if (c.disk !== undefined || isDiskImagePath(image)) {
    out.image = absoluteDiskPath(image);
    out.disk = normalizeDisk(c.disk, out.image);
  } else if (!LOCAL_RE.test(image)) {
    parseReference(image, 'image');
  }
  if (c.pullPolicy !== undefined) {
    if (!PULL_POLICIES.includes(c.pullPolicy as PullPolicy)) {
      throw new InvalidOptionError('pullPolicy', `one of ${PULL_POLICIES.map((p) => `"${p}"`).join(', ')}`, c.pullPolicy);
    }
    out.pullPolicy = c.pullPolicy as PullPolicy;
  }
  if (c.registryAuth !== undefined) out.registryAuth = normalizeRegistryAuth(c.registryAuth);
  if (c.insecureRegistries !== undefined) {
    if (!Array.isArray(c.insecureRegistries)) throw new InvalidOptionError('insecureRegistries', 'an array of host[:port] strings', c.insecureRegistries);
    c.insecureRegistries.forEach((r, i) => {
      if (typeof r !== 'string' || !REGISTRY_RE.test(r)) throw new InvalidOptionError(`insecureRegistries[${i}]`, 'a registry host[:port]', r);
    });
    out.insecureRegistries = [...(c.insecureRegistries as string[])];
  }
  return out;
}
