/**
 * Layer images written straight from a tar stream (src/image/tarErofs.ts) on crafted
 * archives (tar-stream's packer), read back by erofs-utils' own reader (`fsck.erofs
 * --extract`, which also checks the image): hostile names and symlinks stay inside the
 * image, whiteouts, devices, hard links, modes and owners are what overlayfs and the guest
 * read, large directories and files span blocks. Booting from such images is in vm.test.ts.
 */

import { execFileSync } from 'node:child_process';
import { existsSync, lstatSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import tar from 'tar-stream';
import { afterAll, describe, expect, it } from 'vitest';
import { tarToErofs } from '../../src/image/tarErofs.ts';
import { HOSTILE_NAMES, packTar, type TarEntry } from '../helpers/tarFixtures.ts';

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

type Entry = TarEntry;

/** Builds the image of `entries` and extracts it with fsck.erofs into `<base>/root`. */
async function build(entries: Entry[]): Promise<{ base: string; root: string; image: string }> {
  const base = mkdtempSync(join(tmpdir(), 'corral-test-tarerofs-'));
  dirs.push(base);
  const image = join(base, 'layer.erofs');
  await tarToErofs(packTar(entries), image);
  const root = join(base, 'root');
  execFileSync('fsck.erofs', [`--extract=${root}`, '--preserve', image], { stdio: ['ignore', 'ignore', 'pipe'] });
  return { base, root, image };
}

describe('layer images written from a tar stream', () => {
  it('keeps every name inside the image, whatever the names and symlinks say', async () => {
    const { root } = await build([...HOSTILE_NAMES]);
    expect(readdirSync(root).sort()).toEqual(['abs', 'escape1', 'escape3', 'escape4', 'escape5', 'etc-link', 'up', 'x']);
    expect(readFileSync(join(root, 'abs/escape2'), 'utf8')).toBe('x');
    expect(readFileSync(join(root, 'escape5'), 'utf8')).toBe('x');
    expect(readlinkSync(join(root, 'etc-link'))).toBe('/');
    expect(readlinkSync(join(root, 'up'))).toBe('../../..');
  });

  it('writes whiteouts as 0/0 character devices, and keeps devices, hard links, modes, owners and mtimes', async () => {
    const mtime = new Date('2024-05-06T07:08:09Z');
    const { root, image } = await build([
      { name: 'etc/', type: 'directory', mode: 0o750, uid: 12, gid: 34, mtime },
      { name: 'etc/.wh.deleted', body: '' },
      { name: 'data/old/.wh..wh..opq', body: '' },
      { name: 'data/old/c', body: 'c' },
      { name: 'bin/tool', body: '#!', mode: 0o4755, uid: 1000, gid: 1001, mtime },
      { name: 'bin/hard', type: 'link', linkname: 'bin/tool' },
      { name: 'dev/null', type: 'character-device', devmajor: 1, devminor: 3, mode: 0o666 },
      { name: 'dev/fifo', type: 'fifo', mode: 0o600 },
    ]);
    const wh = lstatSync(join(root, 'etc/deleted'));
    expect(wh.isCharacterDevice()).toBe(true);
    expect(wh.rdev).toBe(0);
    expect(existsSync(join(root, 'etc/.wh.deleted'))).toBe(false);
    expect(existsSync(join(root, 'data/old/.wh..wh..opq'))).toBe(false);
    const etc = lstatSync(join(root, 'etc'));
    expect([etc.mode & 0o7777, etc.uid, etc.gid]).toEqual([0o750, 12, 34]);
    const tool = lstatSync(join(root, 'bin/tool'));
    expect([tool.uid, tool.gid, tool.mtimeMs]).toEqual([1000, 1001, mtime.getTime()]);
    // fsck.erofs 1.5 extracts hard links as copies and drops setuid: the inode as dump.erofs shows it.
    const inode = execFileSync('dump.erofs', ['--path=/bin/hard', image], { encoding: 'utf8' });
    expect(inode).toMatch(/Links: 2\b/);
    const nid = Number(inode.match(/NID: (\d+)/)?.[1]);
    expect(Number(execFileSync('dump.erofs', ['--path=/bin/tool', image], { encoding: 'utf8' }).match(/NID: (\d+)/)?.[1])).toBe(nid);
    // dump.erofs prints the mode without setuid: the inode's i_mode as the kernel reads it
    // (erofs_fs.h: meta_blkaddr at byte 40 of the superblock at 1024; i_mode at byte 4 of the inode at nid × 32).
    const img = readFileSync(image);
    expect(img.readUInt16LE(img.readUInt32LE(1024 + 40) * 4096 + nid * 32 + 4)).toBe(0o104755);
    expect(readFileSync(join(root, 'bin/hard'), 'utf8')).toBe('#!');
    expect(lstatSync(join(root, 'dev/null')).rdev).toBe((1 << 8) | 3);
    expect(lstatSync(join(root, 'dev/fifo')).isFIFO()).toBe(true);
    // The opaque marker is an xattr of the directory's inode (fsck.erofs 1.5 does not restore xattrs).
    expect(execFileSync('dump.erofs', ['--path=/data/old', image], { encoding: 'utf8' })).toMatch(/Xattr size: [1-9]/);
  });

  it('spreads large directories and files over blocks, and later entries replace earlier ones', async () => {
    const big = Buffer.alloc(3 * 4096 + 100);
    for (let i = 0; i < big.length; i++) big[i] = (i * 7) & 0xff;
    const names = Array.from({ length: 600 }, (_, i) => `file-with-a-long-name-${String(i).padStart(4, '0')}`);
    const { root } = await build([
      ...names.map((name) => ({ name: `many/${name}`, body: name })),
      { name: 'big', body: big },
      { name: 'long-link', type: 'symlink', linkname: 'x'.repeat(3000) },
      { name: 'replaced', body: 'old' },
      { name: 'replaced', body: 'new' },
      { name: 'dir/a', body: 'a' },
      { name: 'dir/', type: 'directory', mode: 0o700 },
      { name: 'gone/a', body: 'a' },
      { name: 'gone', body: 'now a file' },
    ]);
    expect(readdirSync(join(root, 'many')).sort()).toEqual(names);
    expect(readFileSync(join(root, 'many', names[599]!), 'utf8')).toBe(names[599]);
    expect(readFileSync(join(root, 'big')).equals(big)).toBe(true);
    expect(readlinkSync(join(root, 'long-link'))).toBe('x'.repeat(3000));
    expect(readFileSync(join(root, 'replaced'), 'utf8')).toBe('new');
    expect(readFileSync(join(root, 'dir/a'), 'utf8')).toBe('a');
    expect(lstatSync(join(root, 'dir')).mode & 0o7777).toBe(0o700);
    expect(readFileSync(join(root, 'gone'), 'utf8')).toBe('now a file');
  });

  it('fails with E_IMAGE_LAYER on a truncated archive', async () => {
    const p = tar.pack();
    p.entry({ name: 'a', size: 10_000 }, Buffer.alloc(10_000));
    p.finalize();
    const chunks: Buffer[] = [];
    for await (const c of p as unknown as AsyncIterable<Buffer>) chunks.push(c);
    const bytes = Buffer.concat(chunks);
    const base = mkdtempSync(join(tmpdir(), 'corral-test-tarerofs-'));
    dirs.push(base);
    await expect(tarToErofs(Readable.from([bytes.subarray(0, 4000)]), join(base, 'x.erofs'))).rejects.toMatchObject({ code: 'E_IMAGE_LAYER' });
  });
});
