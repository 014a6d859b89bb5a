/**
 * An uncompressed erofs image written by corral itself, from a file tree held in memory
 * whose file contents were already streamed into the image (src/image/tarErofs.ts feeds it
 * a layer's tar). It replaces "unpack to a directory, then `mkfs.erofs` it" for layer
 * images: no file is created, read back and removed on the host.
 *
 * Layout (4 KiB blocks): block 0 holds the superblock (at byte 1024); file data follows from
 * block 1 in the order it arrived, each file on a block boundary; then the blocks of large
 * directories; then the metadata area: every inode (64-byte extended form, so owner, mode,
 * nanosecond mtime and 32-bit ids are kept), its inline xattrs and, for data of at most
 * {@link INLINE_MAX_BYTES}, the data itself in the same block ("tail packing"). Directory
 * entries are sorted by name in each block, "." and ".." included, as the kernel's lookup
 * (a binary search) needs. Whiteouts are 0/0 character devices and opaque directories carry
 * `trusted.overlay.opaque=y`, as overlayfs reads them.
 *
 * The format is the kernel's (fs/erofs/erofs_fs.h); `fsck.erofs --extract` reads what this
 * writes, and the image tests boot from it.
 */

import { writeSync } from 'node:fs';
import { CorralError } from '../errors.ts';

export const BLOCK_BYTES = 4096;
/** Data this size or smaller goes inline after its inode; larger data gets blocks of its own. */
export const INLINE_MAX_BYTES = 2048;

const SUPER_OFFSET = 1024;
const MAGIC = 0xe0f5e1e2;
const FEATURE_COMPAT_MTIME = 0x2;
const INODE_BYTES = 64;
const DIRENT_BYTES = 12;
const XATTR_HEADER_BYTES = 12;
const NAME_MAX = 255;
const LAYOUT_FLAT_PLAIN = 0;
const LAYOUT_FLAT_INLINE = 2;

/** xattr name prefixes erofs stores as an index (erofs_fs.h EROFS_XATTR_INDEX_*). */
const XATTR_PREFIXES: readonly [string, number][] = [
  ['system.posix_acl_access', 2],
  ['system.posix_acl_default', 3],
  ['user.', 1],
  ['trusted.', 4],
  ['security.', 6],
];

const S_IFMT = { dir: 0o040000, file: 0o100000, symlink: 0o120000, chr: 0o020000, blk: 0o060000, fifo: 0o010000 } as const;
const FILE_TYPE = { file: 1, dir: 2, chr: 3, blk: 4, fifo: 5, symlink: 7 } as const;

export type NodeKind = keyof typeof S_IFMT;

/** One inode of the tree. Several directory entries may share one (hard links). */
export interface ErofsNode {
  readonly kind: NodeKind;
  /** Permission bits (0o7777). */
  mode: number;
  uid: number;
  gid: number;
  /** Modification time, in whole seconds since the epoch and the nanoseconds beyond. */
  mtimeS: number;
  mtimeNs: number;
  /** Directories: the entries, by name (no "." or ".."). */
  readonly children?: Map<string, ErofsNode>;
  /** Files and symlinks: the byte size of the content. */
  size: number;
  /** Content of at most INLINE_MAX_BYTES, stored after the inode. */
  inline?: Buffer | undefined;
  /** Larger content: its first block in the image (written already). */
  block?: number | undefined;
  /** Devices: major/minor. */
  rdev?: { major: number; minor: number } | undefined;
  /** Extended attributes, full names (`trusted.overlay.opaque`). */
  xattrs?: Map<string, Buffer> | undefined;
}

/** A new directory node. */
export function dirNode(mode = 0o755, uid = 0, gid = 0, mtimeS = 0, mtimeNs = 0): ErofsNode {
  return { kind: 'dir', mode, uid, gid, mtimeS, mtimeNs, size: 0, children: new Map() };
}

function fail(msg: string): never {
  throw new CorralError('E_IMAGE_LAYER', msg);
}

function alignUp(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}

function xattrEntries(node: ErofsNode): Buffer[] {
  const out: Buffer[] = [];
  for (const [name, value] of node.xattrs ?? []) {
    const p = XATTR_PREFIXES.find(([prefix]) => name.startsWith(prefix));
    if (!p) fail(`extended attribute ${JSON.stringify(name)}: erofs stores only user., trusted., security. and POSIX ACL attributes`);
    const suffix = Buffer.from(name.slice(p[0].length), 'utf8');
    if (suffix.length > 255 || value.length > 0xffff) fail(`extended attribute ${JSON.stringify(name)} is too large for erofs`);
    const e = Buffer.alloc(alignUp(4 + suffix.length + value.length, 4));
    e.writeUInt8(suffix.length, 0);
    e.writeUInt8(p[1], 1);
    e.writeUInt16LE(value.length, 2);
    suffix.copy(e, 4);
    value.copy(e, 4 + suffix.length);
    out.push(e);
  }
  return out;
}

/** Linux's new_encode_dev. */
function encodeDev(major: number, minor: number): number {
  return ((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & ~0xff) << 12)) >>> 0;
}

interface Placed {
  node: ErofsNode;
  nid: number;
  ino: number;
  nlink: number;
  xattrs: Buffer[];
  xattrBytes: number;
  /** Directories: their entry blocks, serialised once nids are known. */
  dirents?: { name: Buffer; node: ErofsNode }[][];
  dirSize?: number;
  layout: number;
}

/**
 * Writes an erofs image to `fd`. The caller streams file data first, through {@link DataArea},
 * then calls {@link writeErofs} with the tree once.
 *
 * @example
 * const data = new DataArea(fd); node.block = data.begin(); data.write(chunk); …
 * writeErofs(fd, root, data);
 */
export class DataArea {
  readonly #fd: number;
  /** Next free byte (block-aligned between files). */
  #pos = BLOCK_BYTES;

  constructor(fd: number) {
    this.#fd = fd;
  }

  /** Starts a file's content at the next block; returns that block's number. */
  begin(): number {
    this.#pos = alignUp(this.#pos, BLOCK_BYTES);
    return this.#pos / BLOCK_BYTES;
  }

  write(chunk: Uint8Array): void {
    let off = 0;
    while (off < chunk.length) off += writeSync(this.#fd, chunk, off, chunk.length - off, this.#pos + off);
    this.#pos += chunk.length;
  }

  /** Bytes used so far (the end of the last write). */
  get end(): number {
    return this.#pos;
  }
}

function sortedEntries(children: Map<string, ErofsNode>, self: ErofsNode, parent: ErofsNode): { name: Buffer; node: ErofsNode }[] {
  const list = [
    { name: Buffer.from('.'), node: self },
    { name: Buffer.from('..'), node: parent },
  ];
  for (const [name, node] of children) {
    const b = Buffer.from(name, 'utf8');
    if (b.length > NAME_MAX) fail(`file name longer than ${NAME_MAX} bytes: ${name.slice(0, 64)}…`);
    list.push({ name: b, node });
  }
  return list.sort((a, b) => Buffer.compare(a.name, b.name));
}

/** Splits sorted entries into directory blocks; returns the blocks and the directory's size. */
function packDirents(entries: { name: Buffer; node: ErofsNode }[]): { blocks: { name: Buffer; node: ErofsNode }[][]; size: number } {
  const blocks: { name: Buffer; node: ErofsNode }[][] = [];
  let cur: { name: Buffer; node: ErofsNode }[] = [];
  let used = 0;
  for (const e of entries) {
    const need = DIRENT_BYTES + e.name.length;
    if (used + need > BLOCK_BYTES) {
      blocks.push(cur);
      cur = [];
      used = 0;
    }
    cur.push(e);
    used += need;
  }
  blocks.push(cur);
  return { blocks, size: (blocks.length - 1) * BLOCK_BYTES + used };
}

function serializeDirBlock(entries: { name: Buffer; node: ErofsNode }[], nidOf: (n: ErofsNode) => number, bytes: number): Buffer {
  const b = Buffer.alloc(bytes);
  let nameOff = entries.length * DIRENT_BYTES;
  entries.forEach((e, i) => {
    const o = i * DIRENT_BYTES;
    b.writeBigUInt64LE(BigInt(nidOf(e.node)), o);
    b.writeUInt16LE(nameOff, o + 8);
    b.writeUInt8(FILE_TYPE[e.node.kind], o + 10);
    e.name.copy(b, nameOff);
    nameOff += e.name.length;
  });
  return b;
}

/**
 * Lays out and writes the directories, the metadata area and the superblock of the image
 * whose file data `data` holds, and returns its size in bytes (the file is that long).
 *
 * @example
 * const bytes = writeErofs(fd, root, data);
 */
export function writeErofs(fd: number, root: ErofsNode, data: DataArea): number {
  // Every inode once, in depth-first order from the root (nids close to their directory).
  const placed = new Map<ErofsNode, Placed>();
  const order: Placed[] = [];
  const visit = (node: ErofsNode, parent: ErofsNode): void => {
    const known = placed.get(node);
    if (known) {
      known.nlink++;
      return;
    }
    const xattrs = xattrEntries(node);
    const p: Placed = { node, nid: 0, ino: order.length + 1, nlink: 1, xattrs, xattrBytes: xattrs.length ? XATTR_HEADER_BYTES + xattrs.reduce((s, e) => s + e.length, 0) : 0, layout: LAYOUT_FLAT_PLAIN };
    placed.set(node, p);
    order.push(p);
    if (node.kind === 'dir') {
      const { blocks, size } = packDirents(sortedEntries(node.children!, node, parent));
      p.dirents = blocks;
      p.dirSize = size;
      p.nlink = 2;
      for (const child of node.children!.values()) {
        if (child.kind === 'dir') p.nlink++;
        visit(child, node);
      }
    }
  };
  visit(root, root);

  // Large directories: blocks after the file data. Small content of any kind: inline.
  let next = alignUp(data.end, BLOCK_BYTES);
  const dirBlocks: { at: number; p: Placed }[] = [];
  for (const p of order) {
    const n = p.node;
    if (n.kind === 'dir') {
      if (p.dirSize! <= INLINE_MAX_BYTES && INODE_BYTES + p.xattrBytes + p.dirSize! <= BLOCK_BYTES) {
        p.layout = LAYOUT_FLAT_INLINE;
      } else {
        n.block = next / BLOCK_BYTES;
        dirBlocks.push({ at: next, p });
        next += p.dirents!.length * BLOCK_BYTES;
      }
    } else if (n.inline && n.inline.length > 0) {
      if (INODE_BYTES + p.xattrBytes + n.inline.length > BLOCK_BYTES) {
        // Too much xattr to share a block with its data: give the data a block.
        n.block = next / BLOCK_BYTES;
        writeAll(fd, n.inline, next);
        next += BLOCK_BYTES;
        n.inline = undefined;
      } else {
        p.layout = LAYOUT_FLAT_INLINE;
      }
    }
  }

  // The metadata area: each inode with its xattrs and inline data inside one block.
  const metaBlock = next / BLOCK_BYTES;
  let off = 32; // nid 0 left unused
  for (const p of order) {
    const tail = p.layout === LAYOUT_FLAT_INLINE ? (p.node.kind === 'dir' ? p.dirSize! : p.node.inline!.length) : 0;
    const unit = INODE_BYTES + p.xattrBytes + tail;
    if (Math.floor(off / BLOCK_BYTES) !== Math.floor((off + unit - 1) / BLOCK_BYTES) && unit <= BLOCK_BYTES) off = alignUp(off, BLOCK_BYTES);
    p.nid = off / 32;
    off = alignUp(off + unit, 32);
  }
  const rootNid = placed.get(root)!.nid;
  if (rootNid > 0xffff) fail('erofs: the root inode does not fit the superblock');
  const nidOf = (n: ErofsNode) => placed.get(n)!.nid;

  for (const { at, p } of dirBlocks) {
    p.dirents!.forEach((entries, i) => writeAll(fd, serializeDirBlock(entries, nidOf, BLOCK_BYTES), at + i * BLOCK_BYTES));
  }

  const meta = Buffer.alloc(alignUp(off, BLOCK_BYTES));
  for (const p of order) {
    const n = p.node;
    const o = p.nid * 32;
    const size = n.kind === 'dir' ? p.dirSize! : n.size;
    meta.writeUInt16LE(1 | (p.layout << 1), o);
    meta.writeUInt16LE(p.xattrBytes ? (p.xattrBytes - XATTR_HEADER_BYTES) / 4 + 1 : 0, o + 2);
    meta.writeUInt16LE(S_IFMT[n.kind] | (n.kind === 'symlink' ? 0o777 : n.mode & 0o7777), o + 4);
    meta.writeBigUInt64LE(BigInt(size), o + 8);
    const u = n.kind === 'chr' || n.kind === 'blk' ? encodeDev(n.rdev?.major ?? 0, n.rdev?.minor ?? 0) : (n.block ?? 0);
    meta.writeUInt32LE(u, o + 16);
    meta.writeUInt32LE(p.ino, o + 20);
    meta.writeUInt32LE(n.uid >>> 0, o + 24);
    meta.writeUInt32LE(n.gid >>> 0, o + 28);
    meta.writeBigInt64LE(BigInt(Math.trunc(n.mtimeS)), o + 32);
    meta.writeUInt32LE(n.mtimeNs >>> 0, o + 40);
    meta.writeUInt32LE(p.nlink, o + 44);
    let x = o + INODE_BYTES;
    if (p.xattrBytes) {
      x += XATTR_HEADER_BYTES; // name filter 0, no shared xattrs
      for (const e of p.xattrs) {
        e.copy(meta, x);
        x += e.length;
      }
    }
    if (p.layout === LAYOUT_FLAT_INLINE) {
      if (n.kind === 'dir') serializeDirBlock(p.dirents![0]!, nidOf, p.dirSize!).copy(meta, x);
      else n.inline!.copy(meta, x);
    }
  }
  writeAll(fd, meta, metaBlock * BLOCK_BYTES);

  const total = metaBlock * BLOCK_BYTES + meta.length;
  const sb = Buffer.alloc(128);
  sb.writeUInt32LE(MAGIC, 0);
  sb.writeUInt32LE(FEATURE_COMPAT_MTIME, 8);
  sb.writeUInt8(12, 12); // 4 KiB blocks
  sb.writeUInt16LE(rootNid, 14);
  sb.writeBigUInt64LE(BigInt(order.length), 16);
  sb.writeUInt32LE(total / BLOCK_BYTES, 36);
  sb.writeUInt32LE(metaBlock, 40);
  writeAll(fd, sb, SUPER_OFFSET);
  return total;
}

function writeAll(fd: number, buf: Uint8Array, position: number): void {
  let off = 0;
  while (off < buf.length) off += writeSync(fd, buf, off, buf.length - off, position + off);
}
