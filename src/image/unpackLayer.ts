/**
 * One layer, from its downloaded (digest-checked) blob to a read-only erofs layer image:
 * decompress (gzip in-process, zstd through a `zstd -dc` child), check the uncompressed
 * digest (the config's diff_id), and write the image straight from the tar stream
 * (src/image/tarErofs.ts: nothing unpacked on the host, no `mkfs.erofs`), as the blob streams
 * in from the registry. Runs in the pulling thread: inflating runs on libuv's thread pool (or
 * in the zstd child), and the rest (tar headers, hashing, writes) in slices of at most 1 MiB
 * of input, between which the event loop runs. Writes go to temp names and are renamed
 * into place, so a failure leaves nothing half-written under the final name.
 */

import { spawn } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { mkdir, rename, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { Transform, type Readable, type TransformCallback } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { CorralError } from '../errors.ts';
import { checkDigest, DigestTap } from './digest.ts';
import { extractLayer, type ExtractStats } from './extract.ts';
import { tarToErofs } from './tarErofs.ts';
import type { LayerCompression } from './manifest.ts';

/** Where a layer's image goes, and what its content must hash to. */
export interface UnpackTask {
  readonly compression: LayerCompression;
  /** Expected digest of the uncompressed tar (the config's diff_id). */
  readonly diffId: string;
  /** Final path of the erofs layer image. */
  readonly out: string;
}

/** What {@link unpackLayer} did. */
export interface UnpackResult extends ExtractStats {
  readonly tarBytes: number;
  readonly imageBytes: number;
  readonly ms: number;
}

const CHUNK_BYTES = 1 << 20;

/**
 * Joins small chunks (a registry's response comes in ~64 KiB pieces) into ~1 MiB ones: each
 * chunk zlib inflates is a round trip to libuv's thread pool, and on a busy machine every
 * round trip waits for a core.
 */
class Coalesce extends Transform {
  #parts: Buffer[] = [];
  #bytes = 0;

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.#parts.push(chunk);
    this.#bytes += chunk.length;
    if (this.#bytes >= CHUNK_BYTES) this.#push();
    cb();
  }

  override _flush(cb: TransformCallback): void {
    if (this.#bytes > 0) this.#push();
    cb();
  }

  #push(): void {
    this.push(this.#parts.length === 1 ? this.#parts[0] : Buffer.concat(this.#parts, this.#bytes));
    this.#parts = [];
    this.#bytes = 0;
  }
}

/**
 * Calls `fn` once if `source` fails, also if it failed already (a download can break before
 * the unpack reads its first byte: its stream then never ends, nor errors again).
 */
function onFailure(source: Readable, fn: (err: Error) => void): void {
  if (source.errored) process.nextTick(fn, source.errored);
  else if (source.destroyed) process.nextTick(fn, new Error('the stream was closed before its end'));
  else source.once('error', fn);
}

/** The decompressed stream of `source`; `done` settles when the decompressor exited, `destroy` stops it. */
function decompress(source: Readable, compression: LayerCompression): { stream: Readable; done: Promise<void>; destroy: () => void } {
  if (compression === 'none') return { stream: source, done: Promise.resolve(), destroy: () => {} };
  if (compression === 'gzip') {
    // zlib inflates on libuv's thread pool: this thread only moves the chunks.
    const gunzip = createGunzip({ chunkSize: CHUNK_BYTES });
    const joined = new Coalesce();
    onFailure(source, (e) => gunzip.destroy(e));
    joined.on('error', (e) => gunzip.destroy(e));
    return { stream: source.pipe(joined).pipe(gunzip).on('error', () => {}), done: Promise.resolve(), destroy: () => gunzip.destroy() };
  }
  const child = spawn('zstd', ['-dc', '-q'], { stdio: ['pipe', 'pipe', 'pipe'] });
  let err = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (err = (err + d).slice(-1000)));
  onFailure(source, (e) => child.stdout.destroy(e));
  source.pipe(child.stdin);
  child.stdin.on('error', () => {});
  const done = new Promise<void>((resolve, reject) => {
    child.once('error', (e) => reject(new CorralError('E_IMAGE_LAYER', `zstd could not run (Debian package zstd): ${e.message}`, { cause: e })));
    child.once('exit', (code) => (code === 0 ? resolve() : reject(new CorralError('E_IMAGE_LAYER', `zstd -d failed (exit ${code}): ${err.trim()}`))));
  });
  return {
    stream: child.stdout,
    done,
    destroy: () => {
      done.catch(() => {});
      source.unpipe(child.stdin);
      child.kill();
    },
  };
}

/**
 * Decompresses `source` (a layer blob's bytes) into `consume` and checks the uncompressed
 * digest against `diffId` once `consume` has read the archive (trailing padding included).
 */
async function readLayer<T>(source: Readable, compression: LayerCompression, diffId: string, consume: (tar: Readable) => Promise<T>): Promise<T & { readonly tarBytes: number }> {
  const { stream, done, destroy } = decompress(source, compression);
  const tap = new DigestTap();
  onFailure(stream, (e) => tap.destroy(e));
  try {
    const stats = await consume(stream.pipe(tap));
    await done;
    // tar-stream stops at the end-of-archive blocks; hash any trailing padding too.
    if (!tap.readableEnded) {
      tap.resume();
      await new Promise<void>((res, rej) => tap.once('end', res).once('error', rej));
    }
    checkDigest(`layer ${diffId} (uncompressed)`, diffId, tap.digest());
    return { ...stats, tarBytes: tap.bytes };
  } catch (err) {
    destroy();
    throw err;
  }
}

/**
 * Decompresses `blob`, extracts it into `root` (an existing, empty directory) and checks the
 * uncompressed digest against `diffId`.
 *
 * @example
 * const stats = await extractBlob('/tmp/x.blob', 'gzip', diffId, '/tmp/unpack/root');
 */
export function extractBlob(blob: string, compression: LayerCompression, diffId: string, root: string): Promise<ExtractStats & { readonly tarBytes: number }> {
  return readLayer(createReadStream(blob, { highWaterMark: CHUNK_BYTES }), compression, diffId, (tar) => extractLayer(tar, root));
}

/**
 * Writes the erofs image of the layer whose compressed bytes `source` streams (from the
 * registry as they arrive, or from a kept blob) under a temp name, checks its diff_id, awaits
 * `complete` (the caller's check of the compressed digest, once `source` was read to its end)
 * and only then renames it to `task.out`. On any failure the temp file is removed.
 *
 * @example
 * await unpackLayer(createReadStream(blob), { compression: 'gzip', diffId, out: '/state/images/layers/x.erofs' });
 */
export async function unpackLayer(source: Readable, task: UnpackTask, complete?: () => Promise<void>): Promise<UnpackResult> {
  const t0 = performance.now();
  const tmpOut = `${task.out}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
  try {
    await mkdir(dirname(task.out), { recursive: true });
    const { imageBytes, ...stats } = await readLayer(source, task.compression, task.diffId, (tar) => tarToErofs(tar, tmpOut));
    await complete?.();
    await rename(tmpOut, task.out);
    return { ...stats, imageBytes, ms: performance.now() - t0 };
  } finally {
    await rm(tmpOut, { force: true });
  }
}
