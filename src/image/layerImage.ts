/**
 * Layer images: a directory turned into a read-only erofs image with Debian's erofs-utils
 * (1.5: built from an unpacked directory; it has no --tar). Owners, modes, devices
 * (overlayfs whiteouts are 0/0 character devices) and xattrs (`trusted.overlay.opaque`)
 * are kept. Uncompressed: under TCG, decompression costs more than the reads it saves.
 */

import { spawn } from 'node:child_process';
import { CorralError } from '../errors.ts';

/** A fixed UUID keeps layer images of the same content byte-identical. */
const UUID = '00000000-0000-0000-0000-000000000000';

/**
 * Runs `mkfs.erofs` on `dir`, writing `out`.
 *
 * @example
 * await buildErofs('/tmp/unpack/root', '/state/images/layers/abc.erofs.tmp');
 */
export function buildErofs(dir: string, out: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('mkfs.erofs', ['--quiet', '-U', UUID, out, dir], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err = (err + d).slice(-2000)));
    child.once('error', (e) => reject(new CorralError('E_SETUP_MISSING', `mkfs.erofs could not run (Debian package erofs-utils; run scripts/setup.sh): ${e.message}`, { cause: e })));
    child.once('exit', (code) => (code === 0 ? resolve() : reject(new CorralError('E_IMAGE_LAYER', `mkfs.erofs failed (exit ${code}): ${err.trim()}`))));
  });
}
