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
  /** The empty upper-disk template it is copied from. */
  readonly upperTemplate: string;
  /** Environment defaults from the image config. */
  readonly imageEnv: Record<string, string>;
}

export interface PrepareOptions {
  /** Create the upper disk from the empty template if missing. Default true. */
  readonly createUpper?: boolean;
}

/** Copies a disk image atomically, keeping it sparse (fs.copyFile would write every zero). */
export async function copySparse(from: string, to: string): Promise<void> {
  const tmp = `${to}.${process.pid}.tmp`;
  await run('cp', ['--sparse=always', from, tmp]);
  await rename(tmp, to);
}

/**
 * Makes `to` a qcow2 overlay whose backing file is the raw disk `backing`: instant, and the
 * sandbox's writes stay in its own small file. `backing` must never change afterwards.
 */
export async function createOverlay(backing: string, to: string): Promise<void> {
  const tmp = `${to}.${process.pid}.tmp`;
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', backing, tmp]);
  await rename(tmp, to);
}

/** Whether a sandbox already has an upper disk (it was created before: a restart). */
export function hasUpper(stateDir: string, name: string): boolean {
  const dir = sandboxDir(stateDir, name);
  return existsSync(join(dir, 'upper.ext4')) || existsSync(join(dir, 'upper.qcow2'));
}

/** The directory holding one sandbox's persistent files (upper disk). */
export function sandboxDir(stateDir: string, name: string): string {
  return join(stateDir, 'sandboxes', name);
}

/**
 * Resolves the image and makes sure the sandbox has an upper disk (a sparse copy of the
 * setup-built empty ext4 template; an existing one is kept, so a restart sees old writes).
 */
export async function prepareRoot(config: SandboxConfig, stateDir: string, options: PrepareOptions = {}): Promise<PreparedRoot> {
  const a = loadArtifacts();
  const image = a.images[config.image];
  if (!image) {
    throw new CorralError('E_IMAGE_NOT_FOUND', `image "${config.image}" is not available locally (known: ${Object.keys(a.images).join(', ') || 'none'})`, {
      details: { image: config.image },
    });
  }
  const dir = sandboxDir(stateDir, config.name);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  // A restored sandbox's upper is a qcow2 overlay on its template's; a cold one a raw copy.
  const overlay = join(dir, 'upper.qcow2');
  const upper = existsSync(overlay) ? overlay : join(dir, 'upper.ext4');
  if (options.createUpper !== false && !existsSync(upper)) await copySparse(a.upperTemplate, upper);
  return {
    // CORRAL_QEMU swaps the VM binary (the tests' hostile fake guest uses it).
    qemu: process.env.CORRAL_QEMU || a.qemu,
    kernel: a.kernel,
    initramfs: a.initramfs,
    lower: { path: image.rootfs, fstype: image.fstype },
    upper,
    upperTemplate: a.upperTemplate,
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
