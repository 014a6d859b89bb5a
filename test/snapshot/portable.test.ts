// Portable snapshots on real VMs: a running sandbox (a file on its disk, a process counting
// in the background) is snapshotted, exported to one archive, imported into another state dir
// (another "host": its own store, snapshots and sandboxes), and a sandbox started from it
// there has the file and the process still counting. Archives changed on the way are
// refused (a byte flipped, a manifest that asks for another kernel, an image not here), and
// a refused import leaves nothing behind.
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { Sandbox, Supervisor } from '../../src/index.ts';
import { uniqueName } from '../helpers/sandbox.ts';

/** Rewrites an archive entry by entry; `change` returns new bytes for an entry, or undefined to keep it. */
async function rewrite(from: string, to: string, change: (name: string, data: Buffer) => Buffer | undefined): Promise<void> {
  const entries: { name: string; data: Buffer }[] = [];
  const ex = tar.extract();
  ex.on('entry', (h, stream, next) => {
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.on('end', () => {
      entries.push({ name: h.name, data: Buffer.concat(chunks) });
      next();
    });
  });
  await pipeline(createReadStream(from), ex);
  const pack = tar.pack();
  const out = pipeline(pack, createWriteStream(to));
  for (const e of entries) pack.entry({ name: e.name }, change(e.name, e.data) ?? e.data);
  pack.finalize();
  await out;
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('portable snapshots', () => {
  let here: Supervisor;
  let there: Supervisor;
  let dirs: string[];
  let archive: string;
  const source = uniqueName('port');
  const snap = `${source}-snap`;

  beforeAll(async () => {
    dirs = [mkdtempSync(join(tmpdir(), 'corral-host-a-')), mkdtempSync(join(tmpdir(), 'corral-host-b-')), mkdtempSync(join(tmpdir(), 'corral-archives-'))];
    here = new Supervisor({ stateDir: dirs[0]! });
    there = new Supervisor({ stateDir: dirs[1]! });
    archive = join(dirs[2]!, 'snap.corral');
    const sb = await Sandbox.builder(source).memory(256).supervisor(here).create();
    await sb.fs().write('/root/note.txt', 'written before the snapshot\n');
    // A process that outlives the exec that started it, counting into a file.
    await sb.exec('sh', ['-c', 'i=0; (while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done) >/dev/null 2>&1 & sync']);
    await sb.snapshot(snap);
    await sb.stop();
  });
  afterAll(async () => {
    await here?.close();
    await there?.close();
    for (const d of dirs ?? []) rmSync(d, { recursive: true, force: true });
  });

  it('exports a snapshot to one archive, imports it on another host, and a sandbox starts from it with its files and processes', async () => {
    const out = await Sandbox.exportSnapshot(snap, archive, { supervisor: here });
    expect(out).toMatchObject({ file: archive, bytes: statSync(archive).size });
    const meta = await Sandbox.importSnapshot(archive, { name: 'moved', supervisor: there });
    expect(meta).toMatchObject({ name: 'moved', source, upperFile: 'upper.qcow2' });
    expect((await there.snapshots()).map((s) => s.name)).toEqual(['moved']);

    const sb = await Sandbox.builder(uniqueName('moved')).fromSnapshot('moved').supervisor(there).create();
    try {
      expect((await sb.exec('cat', ['/root/note.txt'])).stdout).toBe('written before the snapshot\n');
      // The counter started before the snapshot goes on counting in the restored guest.
      const first = Number((await sb.exec('cat', ['/tmp/count'])).stdout);
      expect(first).toBeGreaterThan(0);
      await vi.waitFor(async () => expect(Number((await sb.exec('cat', ['/tmp/count'])).stdout)).toBeGreaterThan(first), { timeout: 20_000, interval: 100 });
    } finally {
      await sb.stop();
    }
    // Importing the same name again is refused, and takes nothing.
    await expect(Sandbox.importSnapshot(archive, { name: 'moved', supervisor: there })).rejects.toMatchObject({ code: 'E_SNAPSHOT_EXISTS' });
  });

  it('refuses an archive with a flipped byte, naming the file that does not match, and leaves nothing behind', async () => {
    const bad = join(dirs[2]!, 'flipped.corral');
    const bytes = readFileSync(archive);
    bytes[Math.floor(bytes.length / 3)]! ^= 0xff;
    writeFileSync(bad, bytes);
    const err = await Sandbox.importSnapshot(bad, { name: 'flipped', supervisor: there }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'E_SNAPSHOT_CORRUPT', message: expect.stringMatching(/does not match its digest|cannot be read/) });
    const cut = join(dirs[2]!, 'cut.corral');
    writeFileSync(cut, readFileSync(archive).subarray(0, 100_000));
    await expect(Sandbox.importSnapshot(cut, { name: 'cut', supervisor: there })).rejects.toMatchObject({ code: 'E_SNAPSHOT_CORRUPT' });
    expect(readdirSync(join(dirs[1]!, 'snapshots')).sort()).toEqual(['moved']);
  });

  it('refuses a snapshot taken on another kernel, or on an image this host does not have', async () => {
    const otherKernel = join(dirs[2]!, 'kernel.corral');
    await rewrite(archive, otherKernel, (name, data) => {
      if (name !== 'manifest.json') return undefined;
      const m = JSON.parse(data.toString());
      m.root.kernel = '0000000000000000/vmlinux';
      return Buffer.from(JSON.stringify(m));
    });
    await expect(Sandbox.importSnapshot(otherKernel, { name: 'k', supervisor: there })).rejects.toMatchObject({ code: 'E_SNAPSHOT_INCOMPATIBLE', message: expect.stringContaining('kernel 0000000000000000/vmlinux') });

    // An image that is not here: meta.json says so, and the manifest's digest of it is right.
    const otherImage = join(dirs[2]!, 'image.corral');
    let metaSha = '';
    let metaBytes = 0;
    await rewrite(archive, join(dirs[2]!, 'step.corral'), (name, data) => {
      if (name !== 'meta.json') return undefined;
      const m = JSON.parse(data.toString());
      m.config.image = '127.0.0.1:1/nowhere:1';
      const b = Buffer.from(JSON.stringify(m));
      metaSha = sha(b);
      metaBytes = b.length;
      return b;
    });
    await rewrite(join(dirs[2]!, 'step.corral'), otherImage, (name, data) => {
      if (name !== 'manifest.json') return undefined;
      const m = JSON.parse(data.toString());
      m.files['meta.json'] = { bytes: metaBytes, sha256: metaSha };
      return Buffer.from(JSON.stringify(m));
    });
    await expect(Sandbox.importSnapshot(otherImage, { name: 'i', supervisor: there })).rejects.toMatchObject({ code: 'E_SNAPSHOT_INCOMPATIBLE', message: expect.stringContaining('pull it first') });
    expect(readdirSync(join(dirs[1]!, 'snapshots')).sort()).toEqual(['moved']);
  });

  it('names a bad argument', async () => {
    await expect(Sandbox.importSnapshot(join(dirs[2]!, 'missing.corral'), { supervisor: there })).rejects.toMatchObject({ code: 'E_INVALID_OPTION', message: expect.stringContaining('file') });
    await expect(Sandbox.exportSnapshot('no-such-snapshot', join(dirs[2]!, 'x.corral'), { supervisor: here })).rejects.toMatchObject({ code: 'E_SNAPSHOT_NOT_FOUND' });
    // A directory that is not there: an error to the caller (it once ended the process, unhandled).
    await expect(Sandbox.exportSnapshot(snap, join(dirs[2]!, 'no-such-dir', 'x.corral'), { supervisor: here })).rejects.toMatchObject({ code: 'E_SNAPSHOT', message: expect.stringContaining('ENOENT') });
  });
});
