/**
 * Volumes: what the builder's `.volume(guestPath, v => …)` describes, as JSON config, and
 * how each kind reaches the guest.
 *
 * - bind: a host directory shared over virtio-9p; `readonly()` is enforced by qemu
 *   (`-fsdev …,readonly=on`), so a root process in the guest cannot write through it, not
 *   even after remounting it read-write.
 * - named: a directory corral manages under `<stateDir>/volumes/<name>/data` (see
 *   namedVolumes.ts), shared the same way; it outlives every sandbox that used it.
 * - tmpfs: mounted by the agent with `size=<MiB>m`: writing past it fails with ENOSPC.
 */

import { InvalidOptionError } from '../errors.ts';
import { guestPath, hostDir, isWithin } from './paths.ts';
import { validateVolumeName } from './namedVolumes.ts';

/** A volume in a sandbox config. */
export type VolumeConfig =
  | { readonly guestPath: string; readonly kind: 'bind'; readonly hostPath: string; readonly readonly: boolean }
  | { readonly guestPath: string; readonly kind: 'named'; readonly name: string; readonly readonly: boolean }
  | { readonly guestPath: string; readonly kind: 'tmpfs'; readonly sizeMib: number };

export const VOLUME_LIMITS = {
  /** virtio-mmio slots are few on microvm (disks, serial, NIC take some). */
  maxShared: 8,
  maxVolumes: 16,
  tmpfsMib: { min: 1, max: 64 * 1024 },
  defaultTmpfsMib: 64,
} as const;

/**
 * The `v` of `.volume(path, v => …)`: pick one kind, then modifiers.
 *
 * @example
 * .volume('/app/src', (v) => v.bind('./src').readonly())
 * .volume('/data', (v) => v.named('my-data'))
 * .volume('/tmp/scratch', (v) => v.tmpfs().size(100))
 */
export class VolumeBuilder {
  #kind: 'bind' | 'named' | 'tmpfs' | undefined;
  #source = '';
  #readonly = false;
  #sizeMib: number | undefined;
  readonly #option: string;

  /** @internal made by the sandbox builder. */
  constructor(option: string) {
    this.#option = option;
  }

  /** Shares a host directory (relative paths are resolved against the current directory). */
  bind(hostPath: string): this {
    this.#setKind('bind');
    this.#source = hostDir(hostPath, `${this.#option}.bind`);
    return this;
  }

  /** Shares a corral-managed named volume, created on first use. */
  named(name: string): this {
    this.#setKind('named');
    this.#source = validateVolumeName(name, `${this.#option}.named`);
    return this;
  }

  /** A memory-backed filesystem, empty at each boot; its size defaults to 64 MiB. */
  tmpfs(): this {
    this.#setKind('tmpfs');
    return this;
  }

  /** Read-only for the guest (bind and named volumes). */
  readonly(on = true): this {
    if (typeof on !== 'boolean') throw new InvalidOptionError(`${this.#option}.readonly`, 'true or false', on);
    this.#readonly = on;
    return this;
  }

  /** The size limit of a tmpfs volume, in MiB. */
  size(mib: number): this {
    const { min, max } = VOLUME_LIMITS.tmpfsMib;
    if (typeof mib !== 'number' || !Number.isInteger(mib) || mib < min || mib > max) {
      throw new InvalidOptionError(`${this.#option}.size`, `an integer from ${min} to ${max} MiB`, mib);
    }
    this.#sizeMib = mib;
    return this;
  }

  /** @internal */
  toConfig(guest: string): VolumeConfig {
    switch (this.#kind) {
      case 'bind':
      case 'named':
        if (this.#sizeMib !== undefined) throw new InvalidOptionError(`${this.#option}.size`, 'only for tmpfs volumes', this.#sizeMib);
        return this.#kind === 'bind'
          ? { guestPath: guest, kind: 'bind', hostPath: this.#source, readonly: this.#readonly }
          : { guestPath: guest, kind: 'named', name: this.#source, readonly: this.#readonly };
      case 'tmpfs':
        if (this.#readonly) throw new InvalidOptionError(`${this.#option}.readonly`, 'only for bind and named volumes', true);
        return { guestPath: guest, kind: 'tmpfs', sizeMib: this.#sizeMib ?? VOLUME_LIMITS.defaultTmpfsMib };
      default:
        throw new InvalidOptionError(this.#option, 'a volume kind: v.bind(hostPath), v.named(name) or v.tmpfs()', undefined);
    }
  }

  #setKind(kind: 'bind' | 'named' | 'tmpfs'): void {
    if (this.#kind && this.#kind !== kind) throw new InvalidOptionError(this.#option, `one kind per volume (already ${this.#kind})`, kind);
    this.#kind = kind;
  }
}

/**
 * Checks a config's volume list (from the builder or parsed JSON): kinds, paths, sizes, no
 * two volumes on the same guest path or one inside another, bind sources that exist.
 */
export function normalizeVolumes(raw: unknown): VolumeConfig[] {
  if (raw === undefined) return [];
  if (!Array.isArray(raw)) throw new InvalidOptionError('volumes', 'an array of volume objects', raw);
  if (raw.length > VOLUME_LIMITS.maxVolumes) throw new InvalidOptionError('volumes', `at most ${VOLUME_LIMITS.maxVolumes} volumes`, raw.length);
  const out: VolumeConfig[] = [];
  raw.forEach((v: unknown, i) => {
    const opt = `volumes[${i}]`;
    if (typeof v !== 'object' || v === null) throw new InvalidOptionError(opt, 'a volume object', v);
    const o = v as Record<string, unknown>;
    const guest = guestPath(o.guestPath, `${opt}.guestPath`);
    const ro = o.readonly ?? false;
    if (typeof ro !== 'boolean') throw new InvalidOptionError(`${opt}.readonly`, 'true or false', ro);
    switch (o.kind) {
      case 'bind':
        out.push({ guestPath: guest, kind: 'bind', hostPath: hostDir(o.hostPath, `${opt}.hostPath`), readonly: ro });
        break;
      case 'named':
        out.push({ guestPath: guest, kind: 'named', name: validateVolumeName(o.name, `${opt}.name`), readonly: ro });
        break;
      case 'tmpfs': {
        const { min, max } = VOLUME_LIMITS.tmpfsMib;
        const size = o.sizeMib ?? VOLUME_LIMITS.defaultTmpfsMib;
        if (typeof size !== 'number' || !Number.isInteger(size) || size < min || size > max) {
          throw new InvalidOptionError(`${opt}.sizeMib`, `an integer from ${min} to ${max} MiB`, size);
        }
        out.push({ guestPath: guest, kind: 'tmpfs', sizeMib: size });
        break;
      }
      default:
        throw new InvalidOptionError(`${opt}.kind`, 'one of "bind", "named", "tmpfs"', o.kind);
    }
  });
  for (const a of out) {
    for (const b of out) {
      if (a !== b && isWithin(b.guestPath, a.guestPath)) {
        throw new InvalidOptionError('volume', `distinct guest paths, none inside another (${b.guestPath} is inside ${a.guestPath})`, b.guestPath);
      }
    }
  }
  const shared = out.filter((v) => v.kind !== 'tmpfs').length;
  if (shared > VOLUME_LIMITS.maxShared) throw new InvalidOptionError('volumes', `at most ${VOLUME_LIMITS.maxShared} bind and named volumes`, shared);
  return out;
}

/** The 9p mount tag of the n-th shared volume: generic, so clones match their template. */
export function shareTag(n: number): string {
  return `corral.v${n}`;
}
