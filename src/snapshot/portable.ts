/**
 * Portable snapshots: one archive file that carries a snapshot to another host or state dir
 * (microsandbox 0.7's `snapshot save/load`). The archive is a tar of
 *
 *   meta.json       the snapshot's metadata (config, agent HELLO, devices, root identity)
 *   state           the migration stream: devices and the whole guest RAM (a snapshot that
 *                   holds only the pages changed over a template's RAM is flattened)
 *   upper.qcow2     the writable disk as it was at the save, flattened (no backing file)
 *   manifest.json   last: format, version, and each file's size and sha256
 *
 * An import checks every file against the manifest (a changed or truncated archive is
 * refused with E_SNAPSHOT_CORRUPT and leaves nothing behind), and the snapshot's root
 * against this host's (E_SNAPSHOT_INCOMPATIBLE when the kernel, the initramfs or the image's
 * layers it needs are missing or different: a guest restored onto other bytes than the
 * ones it had mounted would read garbage).
 */

import { createHash } from 'node:crypto';
import { execFile } from 'node:child_process';
import { createReadStream, createWriteStream, existsSync } from 'node:fs';
import { mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import tar from 'tar-stream';
import { validateName } from '../config.ts';
import { CorralError } from '../errors.ts';
import { prepareRoot } from '../runtime/rootfs.ts';
import { readSnapshot, rootIdentity, snapshotBase, snapshotBytes, snapshotDir, snapshotsDir, type RootIdentity, type SnapshotMeta } from './snapshots.ts';
import { flattenDelta } from '../vm/migrationStream.ts';

const run = promisify(execFile);
const FORMAT = 'corral-snapshot';
const VERSION = 1;
/** The files of an archive, in the order they are written. */
const FILES = ['meta.json', 'state', 'upper.qcow2'] as const;
const MANIFEST = 'manifest.json';

interface Manifest {
  readonly format: typeof FORMAT;
  readonly version: number;
  readonly snapshot: string;
  readonly createdAt: number;
  readonly root: RootIdentity;
  readonly files: Readonly<Record<string, { readonly bytes: number; readonly sha256: string }>>;
}

/** What {@link exportSnapshot} wrote. */
export interface ExportResult {
  readonly file: string;
  readonly bytes: number;
  readonly ms: number;
}

/** Counts and hashes what passes through. */
class Digest extends Transform {
  readonly #hash = createHash('sha256');
  bytes = 0;
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.#hash.update(chunk);
    this.bytes += chunk.length;
    cb(null, chunk);
  }
  hex(): string {
    return this.#hash.digest('hex');
  }
}

/**
 * Writes snapshot `name` of `stateDir` to one archive `file` (replaced atomically).
 *
 * @example
 * await exportSnapshot(stateDir, 'before-upgrade', '/backups/before-upgrade.corral');
 */
export async function exportSnapshot(stateDir: string, name: string, file: string, signal?: AbortSignal): Promise<ExportResult> {
  const t0 = performance.now();
  const meta = readSnapshot(stateDir, name);
  if (!meta.root) throw new CorralError('E_SNAPSHOT', `snapshot "${name}" was taken before snapshots recorded what they run on, so it cannot be checked on another host: take it again to export it`);
  const dir = snapshotDir(stateDir, name);
  const part = `${file}.part-${process.pid}`;
  const work = `${dir}.export-${process.pid}-${Date.now()}`;
  await mkdir(work, { mode: 0o700 });
  try {
    // A qcow2 upper refers to its template's disk, which another host does not have: flattened.
    const flat = join(work, 'upper.qcow2');
    await run('qemu-img', ['convert', '-O', 'qcow2', join(dir, meta.upperFile), flat], { signal });
    const sources: Record<(typeof FILES)[number], string> = { 'meta.json': join(dir, 'meta.json'), state: join(dir, 'state'), 'upper.qcow2': flat };
    if (meta.ram) {
      // Its state holds only the pages the guest changed over a template's RAM, which
      // another host does not have: the archive carries the whole RAM, as any snapshot's did.
      const base = snapshotBase(stateDir, meta);
      sources.state = join(work, 'state');
      await flattenDelta(await readFile(join(dir, 'state')), base.memFile, sources.state);
      const { ram: _, ...whole } = meta;
      sources['meta.json'] = join(work, 'meta.json');
      await writeFile(sources['meta.json'], JSON.stringify(whole));
    }
    const pack = tar.pack();
    const root = meta.root;
    const files: Record<string, { bytes: number; sha256: string }> = {};
    const write = async () => {
      for (const f of FILES) {
        const size = (await stat(sources[f])).size;
        const digest = new Digest();
        const entry = pack.entry({ name: f, size, mode: 0o600 });
        await pipeline(createReadStream(sources[f]), digest, entry, { signal });
        files[f] = { bytes: digest.bytes, sha256: digest.hex() };
      }
      const manifest: Manifest = { format: FORMAT, version: VERSION, snapshot: name, createdAt: meta.createdAt, root, files };
      pack.entry({ name: MANIFEST, mode: 0o600 }, JSON.stringify(manifest, null, 1));
      pack.finalize();
    };
    // Awaited together: a file that cannot be opened (no such directory) fails the export
    // at once, and neither side's failure goes unhandled (it once ended the process).
    await Promise.all([pipeline(pack, createWriteStream(part, { mode: 0o600 }), { signal }), write()]);
    await rename(part, file);
    return { file, bytes: (await stat(file)).size, ms: performance.now() - t0 };
  } catch (err) {
    await rm(part, { force: true });
    throw err instanceof CorralError ? err : new CorralError('E_SNAPSHOT', `export of snapshot "${name}" to ${file} failed: ${(err as Error).message}`, { cause: err });
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/**
 * Reads an archive made by {@link exportSnapshot} into `stateDir` as snapshot `name` (the
 * archive's own name by default), after checking every file and that this host has the
 * kernel, initramfs and image layers it was taken on.
 *
 * @example
 * const meta = await importSnapshot(stateDir, '/backups/before-upgrade.corral', { name: 'restored' });
 */
export async function importSnapshot(stateDir: string, file: string, options: { name?: string; signal?: AbortSignal } = {}): Promise<SnapshotMeta> {
  if (!existsSync(file)) throw new CorralError('E_INVALID_OPTION', `invalid option file: ${file} does not exist`, { details: { option: 'file' } });
  await mkdir(snapshotsDir(stateDir), { recursive: true, mode: 0o700 });
  const tmp = join(snapshotsDir(stateDir), `.import.tmp-${process.pid}-${Date.now()}`);
  await mkdir(tmp, { mode: 0o700 });
  try {
    const seen = await extract(file, tmp, options.signal);
    const manifestText = seen.get(MANIFEST)?.text;
    if (manifestText === undefined) throw corrupt(file, 'it has no manifest.json (not a corral snapshot archive, or cut short)');
    let manifest: Manifest;
    try {
      manifest = JSON.parse(manifestText) as Manifest;
    } catch (err) {
      throw corrupt(file, `its manifest is not JSON: ${(err as Error).message}`);
    }
    if (manifest.format !== FORMAT || manifest.version !== VERSION) throw corrupt(file, `format ${String(manifest.format)} v${String(manifest.version)}, this corral reads ${FORMAT} v${VERSION}`);
    for (const f of FILES) {
      const want = manifest.files?.[f];
      const got = seen.get(f);
      if (!want || !got) throw corrupt(file, `${f} is ${got ? 'not in the manifest' : 'missing'}`);
      if (got.bytes !== want.bytes || got.sha256 !== want.sha256) throw corrupt(file, `${f} does not match its digest (${got.bytes} bytes, sha256 ${got.sha256.slice(0, 12)}…; the manifest says ${want.bytes}, ${want.sha256.slice(0, 12)}…)`);
    }
    const meta = JSON.parse(await readFile(join(tmp, 'meta.json'), 'utf8')) as SnapshotMeta;
    const name = validateName(options.name ?? meta.name, 'snapshot name');
    await checkRoot(stateDir, meta, manifest.root);
    const final = snapshotDir(stateDir, name);
    if (existsSync(final)) throw new CorralError('E_SNAPSHOT_EXISTS', `a snapshot named "${name}" exists: import under another name ({ name })`);
    const imported: SnapshotMeta = { ...meta, name, upperFile: 'upper.qcow2', bytes: snapshotBytes(tmp) };
    await writeFile(join(tmp, 'meta.json'), JSON.stringify(imported));
    await rename(tmp, final);
    return imported;
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    throw err instanceof CorralError ? err : new CorralError('E_SNAPSHOT', `import of ${file} failed: ${(err as Error).message}`, { cause: err });
  }
}

/** Extracts the known entries of `file` into `dir`, hashing each; anything else is refused. */
async function extract(file: string, dir: string, signal?: AbortSignal): Promise<Map<string, { bytes: number; sha256: string; text?: string }>> {
  const seen = new Map<string, { bytes: number; sha256: string; text?: string }>();
  const ex = tar.extract();
  ex.on('entry', (header, stream, next) => {
    const name = header.name;
    const known = name === MANIFEST || (FILES as readonly string[]).includes(name);
    if (!known || header.type !== 'file' || seen.has(name)) {
      stream.resume();
      ex.destroy(corrupt(file, `it holds an entry corral does not write: ${JSON.stringify(name)} (${header.type})`));
      return;
    }
    const digest = new Digest();
    if (name === MANIFEST) {
      // Small, read into memory; bounded so a hostile archive cannot make it large.
      const chunks: Buffer[] = [];
      stream.pipe(digest).on('data', (c: Buffer) => {
        if (digest.bytes > 1024 * 1024) ex.destroy(corrupt(file, 'its manifest is over 1 MiB'));
        else chunks.push(c);
      });
      digest.on('end', () => {
        seen.set(name, { bytes: digest.bytes, sha256: digest.hex(), text: Buffer.concat(chunks).toString('utf8') });
        next();
      });
      digest.on('error', (e) => ex.destroy(e));
      return;
    }
    pipeline(stream, digest, createWriteStream(join(dir, name), { mode: 0o600 })).then(
      () => {
        seen.set(name, { bytes: digest.bytes, sha256: digest.hex() });
        next();
      },
      (e: Error) => ex.destroy(e),
    );
  });
  try {
    await pipeline(createReadStream(file), ex, { signal });
  } catch (err) {
    if (err instanceof CorralError) throw err;
    throw corrupt(file, `it cannot be read as an archive: ${(err as Error).message}`);
  }
  return seen;
}

/** Refuses a snapshot whose root this host does not have as it was. */
async function checkRoot(stateDir: string, meta: SnapshotMeta, root: RootIdentity): Promise<void> {
  let here: RootIdentity;
  try {
    // Never pulls: an import must not reach a registry behind the caller's back.
    // The kernel it ran, whatever CORRAL_KERNEL says here (as a restore boots it).
    const prepared = await prepareRoot({ ...meta.config, pullPolicy: 'never' }, stateDir, { createUpper: false, kernel: meta.kernel ?? 'custom' });
    here = rootIdentity(prepared);
  } catch (err) {
    const code = (err as CorralError).code;
    if (code === 'E_IMAGE_NOT_CACHED' || code === 'E_IMAGE_NOT_FOUND') {
      throw new CorralError('E_SNAPSHOT_INCOMPATIBLE', `snapshot "${meta.name}" runs on image ${meta.config.image}${root.imageDigest ? `@${root.imageDigest}` : ''}, which is not on this host: pull it first (corral pull ${meta.config.image})`, { cause: err, details: { image: meta.config.image } });
    }
    throw err;
  }
  const diff: string[] = [];
  if (here.kernel !== root.kernel) diff.push(`kernel ${root.kernel} (this host has ${here.kernel})`);
  if (here.initramfs !== root.initramfs) diff.push(`initramfs ${root.initramfs} (this host has ${here.initramfs})`);
  if (root.imageDigest && here.imageDigest !== root.imageDigest) diff.push(`image ${meta.config.image}@${root.imageDigest} (this host has ${here.imageDigest ?? 'another'})`);
  if (JSON.stringify(here.lower) !== JSON.stringify(root.lower)) diff.push(`layers ${root.lower.join(', ')} (this host has ${here.lower.join(', ') || 'none'})`);
  if (diff.length) {
    throw new CorralError('E_SNAPSHOT_INCOMPATIBLE', `snapshot "${meta.name}" was taken on other bytes than this host has: ${diff.join('; ')}`, { details: { differences: diff } });
  }
}

function corrupt(file: string, why: string): CorralError {
  return new CorralError('E_SNAPSHOT_CORRUPT', `${basename(file)} is not a usable snapshot archive: ${why}`, { details: { file } });
}
