/**
 * One layer, from its downloaded (digest-checked) blob to a read-only erofs layer image:
 * decompress (gzip in-process, zstd through a `zstd -dc` child), check the uncompressed
 * digest (the config's diff_id), and write the image straight from the tar stream
 * (src/image/tarErofs.ts: nothing unpacked on the host, no `mkfs.erofs`). Runs in an image worker
 * thread (workers/image.worker.ts). Writes go to temp names and are renamed into place, so
 * a failure leaves nothing half-written under the final name.
 */

import { spawn } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { mkdir, rename, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { CorralError } from '../errors.ts';
import { checkDigest, DigestTap } from './digest.ts';
import { extractLayer, type ExtractStats } from './extract.ts';
import { tarToErofs } from './tarErofs.ts';
import type { LayerCompression } from './manifest.ts';

/** A task for the image pool. Plain data (it crosses a thread boundary). */
export interface UnpackTask {
  /** The compressed blob, already checked against its digest. */
  readonly blob: string;
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

function decompress(blob: string, compression: LayerCompression): { stream: Readable; done: Promise<void> } {
  const file = createReadStream(blob, { highWaterMark: 1 << 20 });
  if (compression === 'none') return { stream: file, done: Promise.resolve() };
  if (compression === 'gzip') return { stream: file.pipe(createGunzip({ chunkSize: 1 << 20 })).on('error', () => {}), done: Promise.resolve() };
  const child = spawn('zstd', ['-dc', '-q'], { stdio: ['pipe', 'pipe', 'pipe'] });
  let err = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (err = (err + d).slice(-1000)));
  file.pipe(child.stdin);
  child.stdin.on('error', () => {});
  const done = new Promise<void>((resolve, reject) => {
    child.once('error', (e) => reject(new CorralError('E_IMAGE_LAYER', `zstd could not run (Debian package zstd): ${e.message}`, { cause: e })));
    child.once('exit', (code) => (code === 0 ? resolve() : reject(new CorralError('E_IMAGE_LAYER', `zstd -d failed (exit ${code}): ${err.trim()}`))));
  });
  return { stream: child.stdout, done };
}

/**
 * Decompresses `blob` into `consume` and checks the uncompressed digest against `diffId`
 * once `consume` has read the archive (trailing padding included).
 */
async function readLayer<T>(blob: string, compression: LayerCompression, diffId: string, consume: (tar: Readable) => Promise<T>): Promise<T & { readonly tarBytes: number }> {
  const { stream, done } = decompress(blob, compression);
  const tap = new DigestTap();
  stream.on('error', (e) => tap.destroy(e));
  const stats = await consume(stream.pipe(tap));
  await done;
  // tar-stream stops at the end-of-archive blocks; hash any trailing padding too.
  if (!tap.readableEnded) {
    tap.resume();
    await new Promise<void>((res, rej) => tap.once('end', res).once('error', rej));
  }
  checkDigest(`layer ${diffId} (uncompressed)`, diffId, tap.digest());
  return { ...stats, tarBytes: tap.bytes };
}

/**
 * Decompresses `blob`, extracts it into `root` (an existing, empty directory) and checks the
 * uncompressed digest against `diffId`.
 *
 * @example
 * const stats = await extractBlob('/tmp/x.blob', 'gzip', diffId, '/tmp/unpack/root');
 */
export function extractBlob(blob: string, compression: LayerCompression, diffId: string, root: string): Promise<ExtractStats & { readonly tarBytes: number }> {
  return readLayer(blob, compression, diffId, (tar) => extractLayer(tar, root));
}

/**
 * @example
 * await unpackLayer({ blob, compression: 'gzip', diffId, out: '/state/images/layers/x.erofs' });
 */
export async function unpackLayer(task: UnpackTask): Promise<UnpackResult> {
  const t0 = performance.now();
  const tmpOut = `${task.out}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
  try {
    await mkdir(dirname(task.out), { recursive: true });
    const { imageBytes, ...stats } = await readLayer(task.blob, task.compression, task.diffId, (tar) => tarToErofs(tar, tmpOut));
    await rename(tmpOut, task.out);
    return { ...stats, imageBytes, ms: performance.now() - t0 };
  } finally {
    await rm(tmpOut, { force: true });
  }
}
