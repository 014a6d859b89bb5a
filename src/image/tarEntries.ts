/**
 * Driving a layer's tar stream (`tar-stream`), and the names in it, for the extractor
 * (extract.ts) and the erofs writer (tarErofs.ts) alike.
 */

import type { Readable } from 'node:stream';
import tar from 'tar-stream';
import { CorralError } from '../errors.ts';

/** OCI whiteouts: `.wh.<name>` removes `name` of a lower layer; `.wh..wh..opq` hides a directory's lower contents. */
export const WH = '.wh.';
export const OPAQUE = '.wh..wh..opq';
/** Symlinks followed resolving one entry's name, at most (as the kernel's ELOOP limit). */
export const MAX_SYMLINK_HOPS = 40;

/** A bad layer: E_IMAGE_LAYER. */
export function fail(msg: string, cause?: unknown): never {
  throw new CorralError('E_IMAGE_LAYER', msg, cause === undefined ? undefined : { cause });
}

/** An entry's name, refused if it holds a NUL: its last component, and its parent's path. */
export function entryName(name: string): { base: string; parentName: string } {
  if (name.includes('\0')) fail(`entry name with NUL: ${JSON.stringify(name)}`);
  const parts = components(name);
  return { base: parts[parts.length - 1] ?? '', parentName: parts.slice(0, -1).join('/') };
}

/** An entry name's path components, without empty ones and `.`. */
export function components(p: string): string[] {
  return p.split('/').filter((c) => c !== '' && c !== '.');
}

/**
 * Feeds the entries of the tar archive `source` to `handle`, one at a time and in order;
 * resolves once the last has been handled. A failure of the archive, the source or an entry
 * destroys all three, and rejects once the entry in progress has settled (its stream ends
 * with the extractor's): a caller that removes what it wrote on failure would otherwise race
 * that entry's writes. A failure that is not a CorralError is E_IMAGE_LAYER.
 */
export function forEachTarEntry(source: Readable, handle: (header: tar.Headers, stream: Readable) => Promise<void>): Promise<void> {
  const extract = tar.extract();
  return new Promise<void>((resolve, reject) => {
    let failed = false;
    /** The entry being handled. */
    let current: Promise<void> = Promise.resolve();
    let currentStream: Readable | undefined;
    const onError = (err: Error) => {
      if (failed) return;
      failed = true;
      source.unpipe?.(extract as never);
      source.destroy();
      extract.destroy();
      currentStream?.destroy(); // so that the entry in progress settles
      const e = err instanceof CorralError ? err : new CorralError('E_IMAGE_LAYER', `bad layer archive: ${err.message}`, { cause: err });
      void current.then(() => reject(e), () => reject(e));
    };
    extract.on('entry', (header, stream, next) => {
      currentStream = stream as unknown as Readable;
      current = handle(header, currentStream);
      current.then(() => next(), onError);
    });
    extract.on('finish', () => {
      if (!failed) current.then(resolve, reject);
    });
    extract.on('error', onError);
    source.on('error', onError);
    source.pipe(extract as never);
  });
}
