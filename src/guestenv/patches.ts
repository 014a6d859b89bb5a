/**
 * Patches: changes to the guest's root filesystem that the builder's `.patch(p => …)`
 * describes, applied by the agent to the sandbox's own writable layer before any user code
 * runs. The image's read-only layers are shared and never touched, so a second sandbox of
 * the same image does not see them. Applied once per sandbox: a restart keeps its upper
 * disk, patches included (append would otherwise append twice).
 */

import { lstatSync, readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import type { SetupOp } from '../agent/setupOps.ts';
import { InvalidOptionError } from '../errors.ts';
import { guestPath, hostDir } from './paths.ts';

/** One patch in a sandbox config. */
export type PatchConfig =
  | { readonly op: 'text'; readonly path: string; readonly content: string; readonly mode: number }
  | { readonly op: 'append'; readonly path: string; readonly content: string }
  | { readonly op: 'mkdir'; readonly path: string; readonly mode: number }
  | { readonly op: 'copyDir'; readonly from: string; readonly path: string }
  | { readonly op: 'symlink'; readonly target: string; readonly path: string }
  | { readonly op: 'remove'; readonly path: string };

export const PATCH_LIMITS = {
  maxPatches: 1024,
  maxTextBytes: 16 * 1024 * 1024,
  /** Everything copyDir copies, all patches together. */
  maxCopyBytes: 256 * 1024 * 1024,
  maxCopyEntries: 100_000,
} as const;

function mode(value: unknown, option: string, fallback: number): number {
  const m = value ?? fallback;
  if (typeof m !== 'number' || !Number.isInteger(m) || m < 0 || m > 0o7777) throw new InvalidOptionError(option, 'a permission mode from 0 to 0o7777', m);
  return m;
}

function text(value: unknown, option: string): string {
  if (typeof value !== 'string' || Buffer.byteLength(value) > PATCH_LIMITS.maxTextBytes) {
    throw new InvalidOptionError(option, `a string of at most ${PATCH_LIMITS.maxTextBytes} bytes`, value);
  }
  return value;
}

function symlinkTarget(value: unknown, option: string): string {
  if (typeof value !== 'string' || value.length === 0 || value.length > 4095 || value.includes('\0')) {
    throw new InvalidOptionError(option, 'a non-empty link target without NUL bytes', value);
  }
  return value;
}

/** Checks one patch; returns it normalised (absolute host paths, trimmed guest paths). */
export function normalizePatch(raw: unknown, option: string): PatchConfig {
  if (typeof raw !== 'object' || raw === null) throw new InvalidOptionError(option, 'a patch object', raw);
  const p = raw as Record<string, unknown>;
  switch (p.op) {
    case 'text':
      return { op: 'text', path: guestPath(p.path, `${option}.path`), content: text(p.content, `${option}.content`), mode: mode(p.mode, `${option}.mode`, 0o644) };
    case 'append':
      return { op: 'append', path: guestPath(p.path, `${option}.path`), content: text(p.content, `${option}.content`) };
    case 'mkdir':
      return { op: 'mkdir', path: guestPath(p.path, `${option}.path`), mode: mode(p.mode, `${option}.mode`, 0o755) };
    case 'copyDir':
      return { op: 'copyDir', from: hostDir(p.from, `${option}.from`), path: guestPath(p.path, `${option}.path`) };
    case 'symlink':
      return { op: 'symlink', target: symlinkTarget(p.target, `${option}.target`), path: guestPath(p.path, `${option}.path`) };
    case 'remove':
      return { op: 'remove', path: guestPath(p.path, `${option}.path`) };
    default:
      throw new InvalidOptionError(`${option}.op`, 'one of "text", "append", "mkdir", "copyDir", "symlink", "remove"', p.op);
  }
}

/** Checks a config's `patches` list. */
export function normalizePatches(raw: unknown): PatchConfig[] {
  if (raw === undefined) return [];
  if (!Array.isArray(raw)) throw new InvalidOptionError('patches', 'an array of patch objects', raw);
  if (raw.length > PATCH_LIMITS.maxPatches) throw new InvalidOptionError('patches', `at most ${PATCH_LIMITS.maxPatches} patches`, raw.length);
  return raw.map((p, i) => normalizePatch(p, `patches[${i}]`));
}

/**
 * The `p` of `.patch(p => …)`. Each call adds one patch; they apply in the order given.
 *
 * @example
 * .patch((p) => p.text('/etc/app.conf', 'debug=1\n').mkdir('/srv/x').copyDir('./assets', '/srv/assets')
 *   .symlink('/usr/bin/python3', '/usr/bin/py').append('/etc/hosts', '10.0.0.1 db\n').remove('/etc/motd'))
 */
export class PatchBuilder {
  readonly #patches: PatchConfig[] = [];

  /** Writes a file (replacing it), with `mode` (default 0o644); parent directories are made. */
  text(path: string, content: string, options: { mode?: number } = {}): this {
    return this.#add({ op: 'text', path, content, mode: options.mode });
  }

  /** Appends to a file (made if missing). */
  append(path: string, content: string): this {
    return this.#add({ op: 'append', path, content });
  }

  /** Makes a directory and its parents (default mode 0o755). */
  mkdir(path: string, options: { mode?: number } = {}): this {
    return this.#add({ op: 'mkdir', path, mode: options.mode });
  }

  /** Copies a host directory's tree (files, dirs, symlinks as links, modes) to `guestPath`. */
  copyDir(hostPath: string, guestPath: string): this {
    return this.#add({ op: 'copyDir', from: hostPath, path: guestPath });
  }

  /** Makes `linkPath` a symlink to `target` (replacing a file there). */
  symlink(target: string, linkPath: string): this {
    return this.#add({ op: 'symlink', target, path: linkPath });
  }

  /** Removes a file or a directory tree (nothing to remove is fine). */
  remove(path: string): this {
    return this.#add({ op: 'remove', path });
  }

  /** @internal */
  toConfig(): PatchConfig[] {
    return [...this.#patches];
  }

  #add(raw: Record<string, unknown>): this {
    this.#patches.push(normalizePatch(raw, `patch.${String(raw.op)}`));
    return this;
  }
}

/**
 * The setup ops of a patch list; copyDir sources are read from the host now. Throws an
 * InvalidOptionError if a copy is past {@link PATCH_LIMITS}.
 */
export function patchOps(patches: readonly PatchConfig[]): SetupOp[] {
  const ops: SetupOp[] = [];
  const budget = { bytes: 0, entries: 0 };
  for (const p of patches) {
    switch (p.op) {
      case 'text':
        ops.push({ op: 'write', path: p.path, mode: p.mode, data: Buffer.from(p.content) });
        break;
      case 'append':
        ops.push({ op: 'write', path: p.path, mode: 0o644, append: true, data: Buffer.from(p.content) });
        break;
      case 'mkdir':
        ops.push({ op: 'mkdir', path: p.path, mode: p.mode });
        break;
      case 'symlink':
        ops.push({ op: 'symlink', target: p.target, path: p.path });
        break;
      case 'remove':
        ops.push({ op: 'remove', path: p.path });
        break;
      case 'copyDir':
        copyTree(p.from, p.path, ops, budget);
        break;
    }
  }
  return ops;
}

/** Walks a host tree without following symlinks (they are copied as links). */
function copyTree(from: string, to: string, ops: SetupOp[], budget: { bytes: number; entries: number }): void {
  const st = lstatSync(from);
  if (++budget.entries > PATCH_LIMITS.maxCopyEntries) throw new InvalidOptionError('patch.copyDir', `at most ${PATCH_LIMITS.maxCopyEntries} entries`, from);
  if (st.isDirectory()) {
    ops.push({ op: 'mkdir', path: to, mode: st.mode & 0o7777 });
    for (const name of readdirSync(from).sort()) copyTree(join(from, name), `${to}/${name}`, ops, budget);
  } else if (st.isSymbolicLink()) {
    ops.push({ op: 'symlink', target: readlinkSync(from), path: to });
  } else if (st.isFile()) {
    budget.bytes += st.size;
    if (budget.bytes > PATCH_LIMITS.maxCopyBytes) throw new InvalidOptionError('patch.copyDir', `at most ${PATCH_LIMITS.maxCopyBytes / 1024 / 1024} MiB in all`, from);
    ops.push({ op: 'write', path: to, mode: st.mode & 0o7777, data: readFileSync(from) });
  }
  // Sockets, fifos and devices are not copied: they mean nothing in another machine.
}
