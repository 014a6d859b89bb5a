/**
 * The layer extractor on crafted archives (tar-stream's packer): hostile names and
 * symlinks never write outside the root, link targets are kept, whiteouts and opaque
 * directories become what overlayfs reads. Runs as root (mknod, trusted.* xattrs).
 */

import { execFileSync } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { extractLayer } from '../../src/image/extract.ts';
import { HOSTILE_NAMES, packTar, type TarEntry } from '../helpers/tarFixtures.ts';

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

type Entry = TarEntry;

async function extract(entries: Entry[]): Promise<{ base: string; root: string }> {
  const base = mkdtempSync(join(tmpdir(), 'corral-test-extract-'));
  dirs.push(base);
  const root = join(base, 'root');
  mkdirSync(root);
  await extractLayer(packTar(entries), root);
  return { base, root };
}

describe('the layer extractor', () => {
  it('never writes outside the root, whatever the names and symlinks say', async () => {
    const { base, root } = await extract([...HOSTILE_NAMES]);
    expect(existsSync(join(base, 'escape1'))).toBe(false);
    expect(readFileSync(join(root, 'escape1'), 'utf8')).toBe('x');
    expect(readFileSync(join(root, 'abs/escape2'), 'utf8')).toBe('x');
    expect(readFileSync(join(root, 'escape3'), 'utf8')).toBe('x');
    expect(readFileSync(join(root, 'escape4'), 'utf8')).toBe('x');
    expect(readFileSync(join(root, 'escape5'), 'utf8')).toBe('x');
    expect(existsSync(join(base, 'escape4'))).toBe(false);
    // targets are kept as written, absolute ones too
    expect(readlinkSync(join(root, 'etc-link'))).toBe('/');
    expect(readlinkSync(join(root, 'up'))).toBe('../../..');
  });

  it('turns whiteouts into 0/0 character devices and opaque markers into the overlay xattr', async () => {
    const { root } = await extract([
      { name: 'etc/', type: 'directory', mode: 0o755 },
      { name: 'etc/.wh.deleted', body: '' },
      { name: 'data/old/.wh..wh..opq', body: '' },
      { name: 'data/old/c', body: 'c' },
      { name: 'bin/tool', body: '#!', mode: 0o4755, uid: 0, gid: 0 },
      { name: 'bin/hard', type: 'link', linkname: 'bin/tool' },
      { name: 'dev/null', type: 'character-device', devmajor: 1, devminor: 3, mode: 0o666 },
    ]);
    const wh = lstatSync(join(root, 'etc/deleted'));
    expect(wh.isCharacterDevice()).toBe(true);
    expect(wh.rdev).toBe(0);
    expect(existsSync(join(root, 'etc/.wh.deleted'))).toBe(false);
    expect(execFileSync('getfattr', ['--only-values', '-n', 'trusted.overlay.opaque', join(root, 'data/old')], { encoding: 'utf8' })).toBe('y');
    expect(existsSync(join(root, 'data/old/.wh..wh..opq'))).toBe(false);
    expect(lstatSync(join(root, 'bin/tool')).mode & 0o7777).toBe(0o4755);
    expect(lstatSync(join(root, 'bin/hard')).ino).toBe(lstatSync(join(root, 'bin/tool')).ino);
    expect(lstatSync(join(root, 'dev/null')).rdev).toBe((1 << 8) | 3);
  });
});
