/**
 * The image part of the builder: `.image(i => i.disk('./alpine.raw').fstype('ext4'))`.
 */

import { DISK_FORMATS, type DiskFormat } from '../image/disk.ts';
import { InvalidOptionError } from '../errors.ts';

/**
 * @example
 * Sandbox.builder('vm').image((i) => i.disk('./alpine.raw').fstype('ext4'))
 */
export class ImageBuilder {
  #ref: string | undefined;
  #disk: string | undefined;
  #format: DiskFormat | undefined;
  #fstype: string | undefined;

  /** An OCI reference or a local image (same as `.image(ref)`). */
  ref(ref: string): this {
    this.#ref = ref;
    return this;
  }

  /** A disk image file (QCOW2, raw, VMDK) as the root, read-write. */
  disk(path: string): this {
    if (typeof path !== 'string' || path.length === 0) throw new InvalidOptionError('image.disk', 'a path to a disk image file', path);
    this.#disk = path;
    return this;
  }

  /** The disk's format; default from the extension (`.qcow2`, `.vmdk`, else raw). */
  format(format: DiskFormat): this {
    if (!DISK_FORMATS.includes(format)) throw new InvalidOptionError('disk.format', `one of ${DISK_FORMATS.map((f) => `"${f}"`).join(', ')}`, format);
    this.#format = format;
    return this;
  }

  /** The disk's filesystem (`ext4`…); default `auto` (probed in the guest). */
  fstype(fstype: string): this {
    this.#fstype = fstype;
    return this;
  }

  /** @internal the config fields this describes. */
  toConfig(): { image: string; disk?: { format?: DiskFormat; fstype?: string } } {
    if (this.#disk !== undefined) {
      return { image: this.#disk, disk: { ...(this.#format ? { format: this.#format } : {}), ...(this.#fstype ? { fstype: this.#fstype } : {}) } };
    }
    if (this.#format || this.#fstype) throw new InvalidOptionError('image', 'format()/fstype() only with disk(path)', this.#ref);
    if (this.#ref === undefined) throw new InvalidOptionError('image', 'ref(reference) or disk(path)', undefined);
    return { image: this.#ref };
  }
}
