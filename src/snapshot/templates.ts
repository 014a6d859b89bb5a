/**
 * Templates: a VM booted once per machine shape and saved right after its agent came up,
 * so later sandboxes of that shape start by restoring it instead of booting a kernel.
 *
 * A template is a directory `<stateDir>/templates/<key>/` holding the guest RAM (`mem`, the
 * file the template VM ran with as shared memory), the device state (`state`, a migration
 * stream written with `x-ignore-shared`, so RAM is not in it), the upper disk as it was at
 * the save (`upper.ext4`: clones copy it, since the saved guest has it mounted) and
 * `meta.json`. The key hashes every input: kernel, initramfs, image layers, qemu, upper
 * template (identity by path, size and mtime), memory, cpus and accel; a change in any of
 * them gives a new key, and so a new template.
 */

import { createHash, randomUUID } from 'node:crypto';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { copyFile, mkdir, readFile, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { Database } from 'lmdb';
import { sharedRoot } from '../store/lmdbEnv.ts';
import type { AgentHello } from '../agent/AgentClient.ts';
import { processAlive } from '../runtime/process.ts';
import { createOverlay } from '../runtime/rootfs.ts';
import { isMissing } from '../runtime/errno.ts';
import { qcow2Backing } from '../vm/qcow2.ts';

export { qcow2Backing };

/** What a finished template holds. */
export interface Template {
  readonly key: string;
  readonly dir: string;
  readonly memFile: string;
  readonly stateFile: string;
  readonly upper: string;
  readonly hello: AgentHello;
  readonly buildMs: number;
  readonly builtAt: number;
  /**
   * The RAM file's ctime (ns) once built. A jailed clone's qemu holds that file read-only
   * (native/jail/ropen.c); an unjailed one can write it (qemu 7.2 opens it read-write even
   * for its private mapping: see the README's threat model). A write moves its ctime, which
   * no one can set back, so a changed one means someone wrote it ({@link templateTampered}).
   */
  readonly memCtimeNs?: string;
}

/** The inputs that shape a template. */
export interface TemplateInputs {
  readonly files: readonly string[];
  readonly memoryMib: number;
  readonly cpus: number;
  readonly accel: string;
  /** The VM's command line with per-VM paths blanked. */
  readonly argv?: readonly string[];
}

/** A stable hash of the inputs; files count by path, size and mtime. */
export function templateKey(inputs: TemplateInputs): string {
  const h = createHash('sha256');
  for (const f of inputs.files) {
    const st = statSync(f);
    h.update(`${f}\0${st.size}\0${st.mtimeMs}\0`);
  }
  h.update(`${inputs.memoryMib}\0${inputs.cpus}\0${inputs.accel}\0${(inputs.argv ?? []).join('\0')}\0v2`);
  return h.digest('hex').slice(0, 16);
}

export function templatesDir(stateDir: string): string {
  return join(stateDir, 'templates');
}

function paths(dir: string, key: string) {
  return { key, dir, memFile: join(dir, 'mem'), stateFile: join(dir, 'state'), upper: join(dir, 'upper.ext4'), meta: join(dir, 'meta.json') };
}

/** The template of `key` if it was built, else undefined. */
export function findTemplate(stateDir: string, key: string): Template | undefined {
  const p = paths(join(templatesDir(stateDir), key), key);
  if (!existsSync(p.meta)) return undefined;
  const meta = JSON.parse(readFileSync(p.meta, 'utf8')) as { hello: AgentHello; buildMs: number; builtAt: number; memCtimeNs?: string };
  return { key, dir: p.dir, memFile: p.memFile, stateFile: p.stateFile, upper: p.upper, ...meta };
}

const building = new Map<string, Promise<Template>>();

/**
 * Returns the template of `key`, building it with `build` if there is none. One build at a
 * time per key: concurrent callers in this process share the promise, other processes wait
 * on a lock directory (taken over if its owner died).
 */
export function ensureTemplate(
  stateDir: string,
  key: string,
  build: (p: { dir: string; memFile: string; stateFile: string; upper: string }) => Promise<{ hello: AgentHello }>,
): Promise<Template> {
  const found = findTemplate(stateDir, key);
  if (found) return Promise.resolve(found);
  let p = building.get(key);
  if (!p) {
    p = buildLocked(stateDir, key, build).finally(() => building.delete(key));
    building.set(key, p);
  }
  return p;
}

async function buildLocked(
  stateDir: string,
  key: string,
  build: (p: { dir: string; memFile: string; stateFile: string; upper: string }) => Promise<{ hello: AgentHello }>,
): Promise<Template> {
  const root = templatesDir(stateDir);
  await mkdir(root, { recursive: true, mode: 0o700 });
  const lock = join(root, `${key}.lock`);
  for (;;) {
    try {
      await mkdir(lock);
      await writeFile(join(lock, 'pid'), String(process.pid));
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const done = findTemplate(stateDir, key);
      if (done) return done;
      const owner = Number(await readFile(join(lock, 'pid'), 'utf8').catch(() => '0'));
      if (owner && !processAlive(owner)) await rm(lock, { recursive: true, force: true });
      else await new Promise((r) => setTimeout(r, 50));
    }
  }
  try {
    const done = findTemplate(stateDir, key);
    if (done) return done;
    // Half-built templates of builders that died (we hold the lock: nobody else is building).
    for (const f of await readdir(root)) {
      if (f.startsWith(`${key}.tmp-`)) await rm(join(root, f), { recursive: true, force: true });
    }
    const tmp = join(root, `${key}.tmp-${process.pid}-${Date.now()}`);
    await mkdir(tmp, { mode: 0o700 });
    const p = paths(tmp, key);
    const t0 = performance.now();
    try {
      const { hello } = await build(p);
      const buildMs = performance.now() - t0;
      const memCtimeNs = statSync(p.memFile, { bigint: true }).ctimeNs.toString();
      await writeFile(p.meta, JSON.stringify({ hello, buildMs, builtAt: Date.now(), memCtimeNs }));
      await rename(tmp, join(root, key));
      const bytes = await dirBytes(join(root, key));
      await withIndex(stateDir, (db) => db.put(key, { key, builtAt: Date.now(), buildMs, bytes }));
    } catch (err) {
      await rm(tmp, { recursive: true, force: true });
      throw err;
    }
    return findTemplate(stateDir, key)!;
  } finally {
    await rm(lock, { recursive: true, force: true });
  }
}

/**
 * Whether the template's RAM file was written since it was built (its ctime moved): what
 * clones would map is then not what the template saved. False for templates built before
 * the ctime was recorded.
 */
export function templateTampered(tpl: Template): boolean {
  if (tpl.memCtimeNs === undefined) return false;
  return statSync(tpl.memFile, { bigint: true }).ctimeNs.toString() !== tpl.memCtimeNs;
}

/**
 * Removes a template that must not be restored again (its RAM file was tampered with):
 * the next create of its shape builds it anew. Running clones keep their mapping.
 */
export async function discardTemplate(stateDir: string, tpl: Template): Promise<void> {
  await rm(tpl.dir, { recursive: true, force: true });
  await withIndex(stateDir, (db) => db.remove(tpl.key));
}

/** A template as the store's index lists it. */
export interface TemplateRecord {
  readonly key: string;
  readonly builtAt: number;
  readonly buildMs: number;
  readonly bytes: number;
}

/** Runs `fn` on the `templates` database of the state dir's LMDB environment (any thread). */
async function withIndex<T>(stateDir: string, fn: (db: Database<TemplateRecord, string>) => T | Promise<T>): Promise<T> {
  const root = sharedRoot(stateDir);
  const result = await fn(root.openDB<TemplateRecord, string>({ name: 'templates' }));
  await root.flushed;
  return result;
}

/** Every template in the index. */
export function listTemplates(stateDir: string): Promise<TemplateRecord[]> {
  return withIndex(stateDir, (db) => [...db.getRange()].map((e) => e.value));
}

/**
 * Removes the templates no sandbox or snapshot depends on (their upper disks are qcow2
 * overlays on a template's upper): they are rebuilt on demand. Returns how many went.
 */
export async function pruneTemplates(stateDir: string): Promise<{ templates: number; bytes: number }> {
  const root = templatesDir(stateDir);
  if (!existsSync(root)) return { templates: 0, bytes: 0 };
  const used = new Set<string>();
  for (const base of [join(stateDir, 'sandboxes'), join(stateDir, 'snapshots')]) {
    if (!existsSync(base)) continue;
    for (const d of await readdir(base)) {
      const backing = qcow2Backing(join(base, d, 'upper.qcow2'));
      if (backing) used.add(basename(dirname(backing)));
    }
  }
  // Snapshots that hold only the pages their guest changed restore over a template's RAM.
  const snaps = join(stateDir, 'snapshots');
  for (const d of existsSync(snaps) ? await readdir(snaps) : []) {
    const meta = await readFile(join(snaps, d, 'meta.json'), 'utf8').catch((err: unknown) => (isMissing(err) ? undefined : Promise.reject(err)));
    const key = meta === undefined ? undefined : (JSON.parse(meta) as { ram?: { template?: string } }).ram?.template;
    if (key) used.add(key);
  }
  // Spare VMs waiting for a create (src/snapshot/spares.ts): the sandbox that takes one keeps
  // its overlay, backed by the template's upper.
  const spares = join(stateDir, 'spares');
  for (const pid of existsSync(spares) ? await readdir(spares) : []) {
    for (const f of await readdir(join(spares, pid)).catch((err: unknown) => (isMissing(err) ? [] : Promise.reject(err)))) {
      const backing = f.endsWith('.qcow2') ? qcow2Backing(join(spares, pid, f)) : undefined;
      if (backing) used.add(basename(dirname(backing)));
    }
  }
  let templates = 0;
  let bytes = 0;
  for (const f of await readdir(root)) {
    // Locks and half-built dirs belong to builds that may be under way.
    if (f.includes('.lock') || f.includes('.tmp-') || used.has(f)) continue;
    bytes += await dirBytes(join(root, f));
    await rm(join(root, f), { recursive: true, force: true });
    await withIndex(stateDir, (db) => db.remove(f));
    templates++;
  }
  return { templates, bytes };
}

async function dirBytes(dir: string): Promise<number> {
  let total = 0;
  for (const f of await readdir(dir).catch(() => [] as string[])) total += statSync(join(dir, f)).blocks * 512;
  return total;
}

/**
 * Gives a clone its upper disk: a qcow2 overlay whose backing file is the template's upper.
 * The first clone of a template makes a pristine overlay next to it (one qemu-img run);
 * every clone after that copies that ~200 KB file, which is much cheaper than a process.
 */
export async function cloneOverlay(tpl: Template, to: string): Promise<void> {
  const seed = join(tpl.dir, 'overlay.qcow2');
  if (!existsSync(seed)) await createOverlay(tpl.upper, seed);
  const tmp = `${to}.${process.pid}-${randomUUID().slice(0, 8)}.tmp`;
  await copyFile(seed, tmp);
  await rename(tmp, to);
}
