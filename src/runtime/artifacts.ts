/**
 * Where corral keeps things: the build cache written by scripts/setup.sh (kernel, agent,
 * initramfs, base image), the state dir (LMDB, sandbox disks) and short-lived run dirs
 * (sockets). Every path can be moved by an environment variable.
 */

import { runtimeVar } from './actorEnv.ts';
import { readFileSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { CorralError } from '../errors.ts';

/** The build cache: `CORRAL_CACHE_DIR`, else `~/.cache/corral`. */
export function cacheDir(): string {
  return runtimeVar('CORRAL_CACHE_DIR') || join(runtimeVar('XDG_CACHE_HOME') || join(homedir(), '.cache'), 'corral');
}

/** The default state dir: `CORRAL_STATE_DIR`, else `~/.local/state/corral`. */
export function defaultStateDir(): string {
  return process.env.CORRAL_STATE_DIR || join(process.env.XDG_STATE_HOME || join(homedir(), '.local', 'state'), 'corral');
}

/** A root filesystem image built by setup. */
export interface BuiltImage {
  readonly rootfs: string;
  readonly fstype: string;
  readonly config?: string;
}

/** One guest kernel setup provides (`kernels.debian`, `kernels.custom`; see src/runtime/kernel.ts). */
export interface KernelEntry {
  readonly kernel: string;
  readonly initramfs: string;
  readonly version: string;
  /** Boot it with microvm's ACPI on (its virtio-mmio devices come through ACPI). */
  readonly acpi: boolean;
  readonly minMemoryMib: number;
  readonly config?: string;
  /** The Debian package it came from, "name version". */
  readonly package?: string;
}

/** What setup built, read from `<cache>/artifacts.json`. */
export interface Artifacts {
  /** The kernel runtimes without a kernel choice boot (with acpi=off): the custom one when built. */
  readonly kernel: string;
  readonly initramfs: string;
  /** Every kernel there is; absent in a manifest written before the choice existed. */
  readonly kernels?: Readonly<Partial<Record<'debian' | 'custom', KernelEntry>>>;
  readonly agent: string;
  readonly upperTemplate: string;
  readonly qemu: string;
  readonly images: Readonly<Record<string, BuiltImage>>;
  readonly kernelVersion?: string;
  readonly hashes?: Readonly<Record<string, string>>;
}

let cached: { path: string; mtimeMs: number; artifacts: Artifacts } | undefined;

/**
 * Reads the artifacts manifest; throws E_SETUP_MISSING with the fix if setup never ran. Read
 * again when setup rewrote it (a custom kernel built in the background is used from then on).
 */
export function loadArtifacts(): Artifacts {
  const path = join(cacheDir(), 'artifacts.json');
  let text: string;
  let mtimeMs: number;
  try {
    mtimeMs = statSync(path).mtimeMs;
    if (cached?.path === path && cached.mtimeMs === mtimeMs) return cached.artifacts;
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new CorralError('E_SETUP_MISSING', `no ${path}: run \`bash scripts/setup.sh\` (or \`npm run setup\`) first`, { cause: err });
  }
  const artifacts = JSON.parse(text) as Artifacts;
  for (const key of ['kernel', 'initramfs', 'upperTemplate', 'qemu'] as const) {
    if (typeof artifacts[key] !== 'string') throw new CorralError('E_SETUP_MISSING', `${path} has no "${key}": re-run scripts/setup.sh`);
  }
  cached = { path, mtimeMs, artifacts };
  return artifacts;
}
