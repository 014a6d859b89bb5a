/** Crafted layer archives for the extractor's and the erofs writer's tests. */
import { Readable } from 'node:stream';
import tar from 'tar-stream';

/** One archive entry: a tar-stream header and its body. */
export type TarEntry = tar.Headers & { body?: string | Buffer };

/** `entries` packed into a tar stream (tar-stream's packer). */
export function packTar(entries: readonly TarEntry[]): Readable {
  const p = tar.pack();
  for (const { body, ...h } of entries) p.entry(h, body ?? '');
  p.finalize();
  return Readable.from(p as unknown as AsyncIterable<Buffer>);
}

/** Names and symlinks that try to leave the root: both readers must keep every one inside it. */
export const HOSTILE_NAMES: readonly TarEntry[] = [
  { name: '../../escape1', body: 'x' },
  { name: '/abs/escape2', body: 'x' },
  { name: 'etc-link', type: 'symlink', linkname: '/' },
  { name: 'etc-link/escape3', body: 'x' },
  { name: 'up', type: 'symlink', linkname: '../../..' },
  { name: 'up/escape4', body: 'x' },
  { name: 'up/x/../escape5', body: 'x' },
];
