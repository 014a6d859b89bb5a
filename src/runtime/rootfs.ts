/**
 * Turns a sandbox config into the files its VM boots from: kernel, initramfs, the read-only
 * image (lower layer) and the sandbox's own writable upper disk.
 */

import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { SandboxConfig } from '../config.ts';
import { CorralError } from '../errors.ts';
import { loadArtifacts } from './artifacts.ts';

const run = promisify(execFile);

/** Everything the VM needs on disk. */
export interface PreparedRoot {
  readonly qemu: string;
  readonly kernel: string;
  readonly initramfs: string;
  readonly lower: { readonly path: string; readonly fstype: string };
  readonly upper: string;
  /** Environment defaults from the image config. */
  readonly imageEnv: Record<string, string>;
}

/** The directory holding one sandbox's persistent files (upper disk). */
export function sandboxDir(stateDir: string, name: string): string {
  return join(stateDir, 'sandboxes', name);
}

/**
 * Resolves the image and makes sure the sandbox has an upper disk (a sparse copy of the
 * setup-built empty ext4 template; an existing one is kept, so a restart sees old writes).
 */
export async function prepareRoot(config: SandboxConfig, stateDir: string): Promise<PreparedRoot> {
  const a = loadArtifacts();
  const image = a.images[config.image];
  if (!image) {
    throw new CorralError('E_IMAGE_NOT_FOUND', `image "${config.image}" is not available locally (known: ${Object.keys(a.images).join(', ') || 'none'})`, {
      details: { image: config.image },
    });
  }
  const dir = sandboxDir(stateDir, config.name);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const upper = join(dir, 'upper.ext4');
  if (!existsSync(upper)) {
    const tmp = `${upper}.${process.pid}.tmp`;
    // cp keeps the 1 GiB template sparse; fs.copyFile would write every zero.
    await run('cp', ['--sparse=always', a.upperTemplate, tmp]);
    await rename(tmp, upper);
  }
  return {
    // CORRAL_QEMU swaps the VM binary (the tests' hostile fake guest uses it).
    qemu: process.env.CORRAL_QEMU || a.qemu,
    kernel: a.kernel,
    initramfs: a.initramfs,
    lower: { path: image.rootfs, fstype: image.fstype },
    upper,
    imageEnv: image.config ? readImageEnv(image.config) : {},
  };
}

function readImageEnv(path: string): Record<string, string> {
  try {
    const cfg = JSON.parse(readFileSync(path, 'utf8')) as { env?: string[]; Env?: string[]; config?: { Env?: string[] } };
    const list = cfg.env ?? cfg.Env ?? cfg.config?.Env ?? [];
    const out: Record<string, string> = {};
    for (const kv of list) {
      const i = kv.indexOf('=');
      if (i > 0) out[kv.slice(0, i)] = kv.slice(i + 1);
    }
    return out;
  } catch {
    return {};
  }
}
