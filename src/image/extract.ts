/**
 * A safe extractor of one image layer (a tar stream) into an empty directory, on
 * `tar-stream`.
 *
 * - Nothing is written outside the root: entry names are resolved component by component,
 *   and a symlink met on the way is followed *inside* the root (as if chrooted), so neither
 *   `../x` nor a symlink to `/etc` followed by `link/passwd` escapes.
 * - Symlink targets are kept as they are (absolute ones too): they are resolved in the guest.
 * - OCI whiteouts become overlayfs whiteouts: `.wh.name` → a 0/0 character device `name`,
 *   `.wh..wh..opq` → the `trusted.overlay.opaque=y` xattr on its directory.
 * - Owners, modes (setuid included), mtimes, devices, fifos, hard links and PAX xattrs are kept.
 *
 * It runs as root in an image worker thread (CPU and syscall heavy): node has no mknod or
 * setxattr, so devices, whiteouts and xattrs are applied in two batched child processes at
 * the end (`sh` running mknod, `setfattr --restore`).
 */

import { spawn } from 'node:child_process';
import { closeSync, fchmodSync, fchownSync, futimesSync, lchownSync, lstatSync, lutimesSync, chmodSync, linkSync, mkdirSync, openSync, readlinkSync, rmSync, symlinkSync, unlinkSync, writeSync, utimesSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import type { Readable } from 'node:stream';
import type tar from 'tar-stream';
import { components, entryName, fail, forEachTarEntry, MAX_SYMLINK_HOPS, OPAQUE, WH } from './tarEntries.ts';
import { CorralError } from '../errors.ts';
import { ifMissing } from '../runtime/errno.ts';

/** What an extraction produced. */
export interface ExtractStats {
  readonly files: number;
  readonly bytes: number;
  readonly whiteouts: number;
  readonly opaqueDirs: number;
  /** The opaque directories, relative to the root (src/image/squash.ts needs them: node cannot read xattrs). */
  readonly opaquePaths: readonly string[];
}


/**
 * Host paths this extraction created or checked as real directories (not symlinks), so that
 * resolving `a/b/c/file` does not lstat `a`, `a/b`, `a/b/c` again for every entry (lstat was
 * the largest cost of an unpack). Sound because, while the tar is read, every change to the
 * tree is made by this module: whatever removes or replaces a path calls {@link forget}.
 * It is dropped before the deferred work (the mknod script changes the tree behind it).
 */
type KnownDirs = Set<string>;

function forget(dirs: KnownDirs | undefined, path: string): void {
  if (!dirs?.delete(path)) return;
  const prefix = `${path}/`;
  for (const d of dirs) if (d.startsWith(prefix)) dirs.delete(d);
}

/**
 * Resolves `name` (a path inside the layer) to a host path under `root`, following symlinks
 * of the parent components within the root. The last component is not followed.
 */
export function resolveInRoot(root: string, name: string, followLast = false, dirs?: KnownDirs): string {
  const pending = components(name);
  if (pending.length === 0) return root;
  const last = followLast ? '.' : pending.pop()!;
  let done: string[] = [];
  let hops = 0;
  while (pending.length > 0) {
    const c = pending.shift()!;
    if (c === '..') {
      done.pop();
      continue;
    }
    const host = join(root, ...done, c);
    if (dirs?.has(host)) {
      done.push(c);
      continue;
    }
    // Missing: created later as a directory.
    const st = ifMissing(() => lstatSync(host), undefined);
    const isLink = st?.isSymbolicLink() ?? false;
    if (st?.isDirectory()) dirs?.add(host);
    if (!isLink) {
      done.push(c);
      continue;
    }
    if (++hops > MAX_SYMLINK_HOPS) fail(`too many symlinks resolving ${name}`);
    const target = readlinkSync(host);
    if (target.startsWith('/')) done = [];
    pending.unshift(...components(target));
  }
  if (last === '..') done.pop();
  return last === '.' || last === '..' ? join(root, ...done) : join(root, ...done, last);
}

/** A directory, not a symlink to one. */
function isDir(path: string): boolean {
  return ifMissing(() => lstatSync(path).isDirectory(), false);
}

function exists(path: string): boolean {
  return ifMissing(() => (lstatSync(path), true), false);
}

/** Removes whatever is at `path` unless it is a directory and `keepDir`. */
function clear(path: string, keepDir: boolean, dirs?: KnownDirs): void {
  const st = ifMissing(() => lstatSync(path), undefined);
  if (!st) return;
  if (st.isDirectory()) {
    if (keepDir) return;
    forget(dirs, path);
    rmSync(path, { recursive: true, force: true });
  } else {
    unlinkSync(path);
  }
}

/** `path` (resolved inside the root: no symlink on the way) becomes a directory. */
function mkdirp(path: string, root: string, dirs?: KnownDirs): void {
  if (path === root || dirs?.has(path)) return;
  try {
    // The common case, a new directory under an existing one, in one syscall.
    mkdirSync(path, { mode: 0o755 });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') {
      if (lstatSync(path).isDirectory()) return void dirs?.add(path);
      unlinkSync(path);
      mkdirSync(path, { mode: 0o755 });
    } else if (code === 'ENOENT') {
      mkdirSync(path, { recursive: true, mode: 0o755 });
    } else {
      throw err;
    }
  }
  dirs?.add(path);
}

/** Creates a regular file for writing, replacing whatever was at `path` (never following it). */
function createFile(path: string, dirs: KnownDirs): number {
  try {
    // O_CREAT|O_EXCL: fails on anything already there, a symlink included.
    return openSync(path, 'wx', 0o600);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
  clear(path, false, dirs);
  return openSync(path, 'wx', 0o600);
}

/** Quotes a path for sh. */
function shq(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** getfattr-dump quoting: anything unusual as \ooo. */
function dumpq(s: string): string {
  let out = '';
  for (const b of Buffer.from(s)) {
    const ch = String.fromCharCode(b);
    out += /[A-Za-z0-9._\/+@:,~-]/.test(ch) ? ch : `\\${b.toString(8).padStart(3, '0')}`;
  }
  return out;
}

function run(cmd: string, args: string[], input: string, cwd: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd, stdio: ['pipe', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err = (err + d).slice(-2000)));
    child.once('error', (e) => reject(new CorralError('E_IMAGE_LAYER', `${cmd} could not run: ${e.message}${cmd === 'setfattr' ? ' (Debian package attr; run scripts/setup.sh)' : ''}`, { cause: e })));
    child.once('exit', (code) => (code === 0 ? resolve() : reject(new CorralError('E_IMAGE_LAYER', `${cmd} failed (exit ${code}): ${err.trim()}`))));
    child.stdin.end(input);
  });
}

interface Special {
  /** The entry's name in the layer: resolved again when the special is made (see below). */
  readonly name: string;
  readonly kind: 'c' | 'b' | 'p';
  readonly major: number;
  readonly minor: number;
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
  readonly mtime: Date;
}

/**
 * Extracts a tar stream into `root` (an existing, empty directory).
 *
 * @example
 * await extractLayer(createReadStream('layer.tar'), '/tmp/unpack/root');
 */
export async function extractLayer(source: Readable, root: string): Promise<ExtractStats> {
  // Work deferred to the end (devices, whiteouts, xattrs, directory mtimes) is kept by the
  // entry's *name* and resolved again inside the root when it is done: a later entry may have
  // turned a parent directory into a symlink (`a/dev` as a device, then `a` → `/`), and a
  // path resolved earlier would then be followed out of the root by mknod, rm -rf, setfattr
  // or utimes. Keyed by the path resolved at the time, so a later entry at the same place wins.
  const specials = new Map<string, Special>();
  const opaque = new Set<string>();
  const xattrs: { entry: string; name: string; value: string }[] = [];
  const dirTimes: { entry: string; mtime: Date }[] = [];
  const dirs: KnownDirs = new Set([root]);
  let files = 0;
  let bytes = 0;
  let whiteouts = 0;

  const handle = async (header: tar.Headers, stream: Readable): Promise<void> => {
    const name = header.name;
    const { base, parentName } = entryName(name);
    const mode = (header.mode ?? 0o644) & 0o7777;
    const uid = header.uid ?? 0;
    const gid = header.gid ?? 0;
    const mtime = header.mtime ?? new Date(0);

    if (base === OPAQUE) {
      const dir = resolveInRoot(root, parentName, true, dirs);
      mkdirp(dir, root, dirs);
      opaque.add(parentName);
      stream.resume();
      return;
    }
    if (base.startsWith(WH)) {
      if (base.startsWith(`${WH}${WH}`)) return void stream.resume(); // aufs metadata (.wh..wh.plnk…)
      const hidden = `${parentName}/${base.slice(WH.length)}`;
      const target = resolveInRoot(root, hidden, false, dirs);
      mkdirp(resolveInRoot(root, parentName, true, dirs), root, dirs);
      specials.delete(target);
      specials.set(target, { name: hidden, kind: 'c', major: 0, minor: 0, mode: 0, uid: 0, gid: 0, mtime });
      whiteouts++;
      stream.resume();
      return;
    }
    const path = resolveInRoot(root, name, false, dirs);
    if (path === root) {
      // "./" itself: only its metadata matters
      if (header.type === 'directory') dirTimes.push({ entry: '', mtime });
      stream.resume();
      return;
    }
    const parent = resolveInRoot(root, parentName, true, dirs);
    mkdirp(parent, root, dirs);
    specials.delete(path);
    for (const [k, v] of Object.entries((header as { pax?: Record<string, string> }).pax ?? {})) {
      if (k.startsWith('SCHILY.xattr.')) xattrs.push({ entry: name, name: k.slice('SCHILY.xattr.'.length), value: Buffer.from(v, 'latin1').toString('base64') });
    }
    switch (header.type) {
      case 'file':
      case 'contiguous-file': {
        const fd = createFile(path, dirs);
        try {
          // 'data' events: async iteration of tar-stream's entry streams costs ~2x here.
          await new Promise<void>((resolve, reject) => {
            stream.on('data', (chunk: Buffer) => {
              try {
                writeSync(fd, chunk);
                bytes += chunk.length;
              } catch (err) {
                stream.destroy(err as Error);
              }
            });
            stream.once('end', resolve);
            stream.once('error', reject);
          });
          // On the descriptor: no path walk, and chown before chmod (chown drops setuid).
          fchownSync(fd, uid, gid);
          fchmodSync(fd, mode);
          futimesSync(fd, mtime, mtime);
        } finally {
          closeSync(fd);
        }
        files++;
        return;
      }
      case 'directory':
        mkdirp(path, root, dirs);
        lchownSync(path, uid, gid);
        chmodSync(path, mode);
        dirTimes.push({ entry: name, mtime });
        stream.resume();
        return;
      case 'symlink':
        clear(path, false, dirs);
        symlinkSync(header.linkname ?? '', path);
        lchownSync(path, uid, gid);
        lutimesSync(path, mtime, mtime);
        files++;
        stream.resume();
        return;
      case 'link': {
        const target = resolveInRoot(root, header.linkname ?? '', false, dirs);
        clear(path, false, dirs);
        try {
          linkSync(target, path);
        } catch (err) {
          fail(`hard link ${name} → ${header.linkname}: ${(err as Error).message}`, err);
        }
        files++;
        stream.resume();
        return;
      }
      case 'character-device':
      case 'block-device':
      case 'fifo':
        clear(path, false, dirs);
        specials.set(path, {
          name,
          kind: header.type === 'fifo' ? 'p' : header.type === 'block-device' ? 'b' : 'c',
          major: header.devmajor ?? 0,
          minor: header.devminor ?? 0,
          mode,
          uid,
          gid,
          mtime,
        });
        files++;
        stream.resume();
        return;
      default:
        stream.resume();
    }
  };

  await forEachTarEntry(source, handle);

  // From here on the tree changes behind the cache (rm -rf in the mknod script).
  dirs.clear();
  // Devices, fifos and whiteouts: one sh running mknod for all of them, at paths resolved
  // now (nothing changes the tree between here and the mknod). One whose parent is no longer
  // a directory was removed by a later entry.
  const made: { path: string; s: Special }[] = [];
  for (const s of specials.values()) {
    const path = resolveInRoot(root, s.name);
    if (path !== root && isDir(dirname(path))) made.push({ path, s });
  }
  if (made.length > 0) {
    const script = made
      .map(({ path, s }) => `rm -rf ${shq(path)}; mknod ${s.kind === 'p' ? '' : `-m ${s.mode.toString(8)} `}${shq(path)} ${s.kind}${s.kind === 'p' ? '' : ` ${s.major} ${s.minor}`}`)
      .join('\n');
    await run('sh', ['-e'], `${script}\n`, root);
    for (const { path, s } of made) {
      // A later special can replace a parent of an earlier one (`a/x`, then a whiteout of
      // `a`): the earlier node is gone then, as in the layer's own order.
      if (!existsNoFollow(path)) continue;
      lchownSync(path, s.uid, s.gid);
      if (s.kind === 'p') chmodSync(path, s.mode);
    }
  }
  const opaqueDirs = [...opaque].map((n) => resolveInRoot(root, n, true)).filter(isDir);
  const attrs = xattrs.map((x) => ({ ...x, path: resolveInRoot(root, x.entry) })).filter((x) => x.path !== root && exists(x.path));
  if (opaqueDirs.length > 0 || attrs.length > 0) {
    const lines: string[] = [];
    for (const d of opaqueDirs) lines.push(`# file: ${dumpq(d)}`, 'trusted.overlay.opaque="y"', '');
    for (const x of attrs) lines.push(`# file: ${dumpq(x.path)}`, `${x.name}=0s${x.value}`, '');
    await run('setfattr', ['-h', '--restore=-'], `${lines.join('\n')}\n`, root);
  }
  // Directory mtimes last: creating their children changed them.
  for (let i = dirTimes.length - 1; i >= 0; i--) {
    const path = resolveInRoot(root, dirTimes[i]!.entry);
    if (isDir(path)) utimesSync(path, dirTimes[i]!.mtime, dirTimes[i]!.mtime);
  }
  return { files, bytes, whiteouts, opaqueDirs: opaqueDirs.length, opaquePaths: opaqueDirs.map((d) => relative(root, d)) };
}

/** Whether a path exists, without following a final symlink (a missing or non-dir parent: no). */
function existsNoFollow(path: string): boolean {
  return ifMissing(() => (lstatSync(path), true), false);
}
