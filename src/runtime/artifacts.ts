/**
 * Where corral keeps things: the build cache written by scripts/setup.sh (kernel, agent,
 * initramfs, base image), the state dir (LMDB, sandbox disks) and short-lived run dirs
 * (sockets). Every path can be moved by an environment variable.
 */

import { runtimeVar } from './actorEnv.ts';
import { readFileSync } from 'node:fs';
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

/** What setup built, read from `<cache>/artifacts.json`. */
export interface Artifacts {
  readonly kernel: string;
  readonly initramfs: string;
  readonly agent: string;
  readonly upperTemplate: string;
  readonly qemu: string;
  readonly images: Readonly<Record<string, BuiltImage>>;
  readonly kernelVersion?: string;
  readonly hashes?: Readonly<Record<string, string>>;
}

let cached: { path: string; artifacts: Artifacts } | undefined;

/** Reads the artifacts manifest; throws E_SETUP_MISSING with the fix if setup never ran. */
export function loadArtifacts(): Artifacts {
  const path = join(cacheDir(), 'artifacts.json');
  if (cached?.path === path) return cached.artifacts;
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new CorralError('E_SETUP_MISSING', `no ${path}: run \`bash scripts/setup.sh\` (or \`npm run setup\`) first`, { cause: err });
  }
  const artifacts = JSON.parse(text) as Artifacts;
  for (const key of ['kernel', 'initramfs', 'upperTemplate', 'qemu'] as const) {
    if (typeof artifacts[key] !== 'string') throw new CorralError('E_SETUP_MISSING', `${path} has no "${key}": re-run scripts/setup.sh`);
  }
  cached = { path, artifacts };
  return artifacts;
}
