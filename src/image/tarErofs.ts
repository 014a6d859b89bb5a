/**
 * A layer's tar stream turned straight into an erofs layer image (src/image/ErofsWriter.ts),
 * without unpacking it on the host: the tree is built in memory as the entries arrive, file
 * contents are written into the image as they stream, and the directories and inodes are
 * written at the end.
 *
 * The layer's semantics are those of the extractor (src/image/extract.ts), which squashing
 * still uses: entry names are resolved component by component inside the root, a symlink met
 * on the way is followed inside it (as if chrooted); later entries replace earlier ones (a
 * directory over a directory keeps its contents); OCI whiteouts become 0/0 character devices,
 * `.wh..wh..opq` the `trusted.overlay.opaque=y` xattr; owners, modes (setuid included),
 * mtimes, devices, fifos, hard links and PAX xattrs are kept. Nothing touches the host's
 * filesystem but the image file, so no name can reach outside it.
 */

import { closeSync, ftruncateSync, openSync } from 'node:fs';
import type { Readable } from 'node:stream';
import type tar from 'tar-stream';
import { components, entryName, fail, forEachTarEntry, MAX_SYMLINK_HOPS, OPAQUE, WH } from './tarEntries.ts';
import { DataArea, dirNode, INLINE_MAX_BYTES, writeErofs, type ErofsNode, type NodeKind } from './ErofsWriter.ts';
import type { ExtractStats } from './extract.ts';

const OPAQUE_XATTR = 'trusted.overlay.opaque';

/** An in-memory tree with the extractor's name resolution. */
class Tree {
  readonly root = dirNode();

  /**
   * The directory `name` names, following symlinks inside the root (the last one too),
   * creating missing directories and replacing non-directories on the way when `create`.
   */
  dir(name: string, create: boolean): ErofsNode | undefined {
    const pending = components(name);
    const stack: ErofsNode[] = [this.root];
    let hops = 0;
    while (pending.length > 0) {
      const c = pending.shift()!;
      const cur = stack[stack.length - 1]!;
      if (c === '..') {
        if (stack.length > 1) stack.pop();
        continue;
      }
      const child = cur.children!.get(c);
      if (child?.kind === 'dir') {
        stack.push(child);
        continue;
      }
      if (child?.kind === 'symlink') {
        if (++hops > MAX_SYMLINK_HOPS) fail(`too many symlinks resolving ${name}`);
        const target = child.inline?.toString('utf8') ?? '';
        if (target.startsWith('/')) stack.length = 1;
        pending.unshift(...components(target));
        continue;
      }
      if (!create) return undefined;
      const d = dirNode();
      cur.children!.set(c, d);
      stack.push(d);
    }
    return stack[stack.length - 1];
  }

  /** The parent directory (created) and last component of `name`; no last component: undefined. */
  parentOf(name: string): { dir: ErofsNode; base: string } | undefined {
    const parts = components(name);
    const base = parts.pop();
    if (base === undefined || base === '..') return undefined;
    return { dir: this.dir(parts.join('/'), true)!, base };
  }

  /** The node at `name` (parents followed, the last component not). */
  lookup(name: string): ErofsNode | undefined {
    const parts = components(name);
    const base = parts.pop();
    if (base === undefined) return this.root;
    if (base === '..') return this.dir(name, false);
    return this.dir(parts.join('/'), false)?.children!.get(base);
  }
}

function timeOf(d: Date | undefined): { mtimeS: number; mtimeNs: number } {
  const ms = d?.getTime() ?? 0;
  const s = Math.floor(ms / 1000);
  return { mtimeS: s, mtimeNs: Math.round((ms - s * 1000) * 1e6) };
}

/**
 * Reads the tar stream `source` and writes the erofs image of its tree to `out` (created or
 * truncated). Returns what was in it and the image's size.
 *
 * @example
 * const { imageBytes } = await tarToErofs(gunzipped, '/state/images/layers/x.erofs.tmp');
 */
export async function tarToErofs(source: Readable, out: string): Promise<ExtractStats & { readonly imageBytes: number }> {
  const fd = openSync(out, 'w', 0o644);
  try {
    const data = new DataArea(fd);
    const tree = new Tree();
    let files = 0;
    let bytes = 0;
    let whiteouts = 0;
    const opaque = new Set<ErofsNode>();

    const handle = async (header: tar.Headers, stream: Readable): Promise<void> => {
      const name = header.name;
      const { base, parentName } = entryName(name);
      const meta = { mode: (header.mode ?? 0o644) & 0o7777, uid: header.uid ?? 0, gid: header.gid ?? 0, ...timeOf(header.mtime) };

      if (base === OPAQUE) {
        const d = tree.dir(parentName, true)!;
        (d.xattrs ??= new Map()).set(OPAQUE_XATTR, Buffer.from('y'));
        opaque.add(d);
        return void stream.resume();
      }
      if (base.startsWith(WH)) {
        if (base.startsWith(`${WH}${WH}`)) return void stream.resume(); // aufs metadata (.wh..wh.plnk…)
        const at = tree.parentOf(`${parentName}/${base.slice(WH.length)}`);
        if (at) at.dir.children!.set(at.base, { kind: 'chr', mode: 0, uid: 0, gid: 0, mtimeS: meta.mtimeS, mtimeNs: meta.mtimeNs, size: 0, rdev: { major: 0, minor: 0 } });
        whiteouts++;
        return void stream.resume();
      }
      const at = tree.parentOf(name);
      if (!at) {
        // "./" (or "x/.."): only a directory's metadata.
        const d = header.type === 'directory' ? tree.dir(name, true)! : undefined;
        if (d) Object.assign(d, d === tree.root ? { mtimeS: meta.mtimeS, mtimeNs: meta.mtimeNs } : meta);
        return void stream.resume();
      }
      const existing = at.dir.children!.get(at.base);
      const pax = (header as { pax?: Record<string, string> }).pax ?? {};
      const withXattrs = (node: ErofsNode): ErofsNode => {
        for (const [k, v] of Object.entries(pax)) {
          if (k.startsWith('SCHILY.xattr.')) (node.xattrs ??= new Map()).set(k.slice('SCHILY.xattr.'.length), Buffer.from(v, 'latin1'));
        }
        return node;
      };
      const place = (kind: NodeKind, extra: Partial<ErofsNode> = {}): ErofsNode => {
        const node = withXattrs({ kind, ...meta, size: 0, ...extra });
        at.dir.children!.set(at.base, node);
        return node;
      };
      switch (header.type) {
        case 'file':
        case 'contiguous-file': {
          const size = header.size ?? 0;
          const node = place('file', { size });
          const chunks: Buffer[] = [];
          if (size > INLINE_MAX_BYTES) node.block = data.begin();
          let got = 0;
          // 'data' events: async iteration of tar-stream's entry streams costs ~2x here.
          await new Promise<void>((resolve, reject) => {
            stream.on('data', (chunk: Buffer) => {
              got += chunk.length;
              if (size > INLINE_MAX_BYTES) {
                try {
                  data.write(chunk);
                } catch (err) {
                  stream.destroy(err as Error);
                }
              } else {
                chunks.push(chunk);
              }
            });
            stream.once('end', resolve);
            stream.once('error', reject);
            stream.once('close', () => reject(new Error(`${name}: the archive ended inside this entry`)));
          });
          if (got !== size) fail(`${name}: ${got} bytes where the header says ${size}`);
          if (size <= INLINE_MAX_BYTES) node.inline = Buffer.concat(chunks);
          bytes += size;
          files++;
          return;
        }
        case 'directory': {
          if (existing?.kind === 'dir') {
            Object.assign(existing, meta);
            withXattrs(existing);
          } else {
            place('dir', { children: new Map() });
          }
          return void stream.resume();
        }
        case 'symlink': {
          const target = Buffer.from(header.linkname ?? '', 'utf8');
          const node = place('symlink', { size: target.length, mode: 0o777 });
          if (target.length > INLINE_MAX_BYTES) {
            node.block = data.begin();
            data.write(target);
          }
          // Kept in memory even when in blocks: the tree follows it.
          node.inline = target;
          files++;
          return void stream.resume();
        }
        case 'link': {
          const target = tree.lookup(header.linkname ?? '');
          if (!target || target.kind === 'dir') fail(`hard link ${name} → ${header.linkname}: ${target ? 'a directory' : 'no such entry'}`);
          at.dir.children!.set(at.base, withXattrs(target));
          files++;
          return void stream.resume();
        }
        case 'character-device':
        case 'block-device':
        case 'fifo':
          place(header.type === 'fifo' ? 'fifo' : header.type === 'block-device' ? 'blk' : 'chr', {
            rdev: { major: header.devmajor ?? 0, minor: header.devminor ?? 0 },
          });
          files++;
          return void stream.resume();
        default:
          stream.resume();
      }
    };

    await forEachTarEntry(source, handle);

    // The symlink targets of large links were only kept for resolving names.
    const dropLargeTargets = (d: ErofsNode): void => {
      for (const c of d.children!.values()) {
        if (c.kind === 'dir') dropLargeTargets(c);
        else if (c.kind === 'symlink' && c.block !== undefined) c.inline = undefined;
      }
    };
    dropLargeTargets(tree.root);
    const imageBytes = writeErofs(fd, tree.root, data);
    ftruncateSync(fd, imageBytes);
    return { files, bytes, whiteouts, opaqueDirs: opaque.size, opaquePaths: [], imageBytes };
  } finally {
    closeSync(fd);
  }
}
