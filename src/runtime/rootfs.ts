/**
 * Turns a sandbox config into the files its VM boots from: kernel, initramfs, the read-only
 * layer images (an OCI image's layers, pulled by policy, or `corral/base`) and the sandbox's
 * own writable upper disk — or a disk image as the whole root.
 */

import { runtimeVar } from './actorEnv.ts';
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { ImagePullEventBody } from '../bus/events.ts';
import type { SandboxConfig } from '../config.ts';
import { resolveRootImage } from '../image/rootImage.ts';
import type { ImageDefaults } from '../image/manifest.ts';
import type { DiskRoot, LayerDisk } from '../vm/qemuArgs.ts';
import { loadArtifacts } from './artifacts.ts';
import { InvalidOptionError } from '../errors.ts';
import { resolveKernel, parseKernelChoice, type GuestKernel, type KernelName } from './kernel.ts';

const run = promisify(execFile);

/** Everything the VM needs on disk. */
export interface PreparedRoot {
  readonly qemu: string;
  readonly kernel: string;
  readonly initramfs: string;
  /** The guest kernel these come from (CORRAL_KERNEL), with how to boot it. */
  readonly guestKernel: GuestKernel;
  /** Read-only layer images, topmost first (one for `corral/base`; none for a disk root). */
  readonly lower: readonly LayerDisk[];
  /** A disk-image root (then no lower and no upper is used). */
  readonly disk?: DiskRoot | undefined;
  readonly upper: string;
  /** The empty upper-disk template it is copied from. */
  readonly upperTemplate: string;
  /** Environment defaults from the image config. */
  readonly imageEnv: Record<string, string>;
  /** All image config defaults (env, cmd, entrypoint, workdir, user). */
  readonly imageDefaults: ImageDefaults;
  /** The pinned digest of an OCI image. */
  readonly imageDigest?: string | undefined;
}

export interface PrepareOptions {
  /** Create the upper disk from the empty template if missing. Default true. */
  readonly createUpper?: boolean;
  /** Image pull progress (`image.pull.*`), for the sandbox's event stream. */
  readonly onEvent?: ((e: ImagePullEventBody) => void) | undefined;
  /** Secret handle → value for `registryAuth.secret`. */
  readonly secrets?: Readonly<Record<string, string>> | undefined;
  readonly signal?: AbortSignal | undefined;
  /** This kernel instead of CORRAL_KERNEL's choice (a snapshot restores on the kernel it ran). */
  readonly kernel?: KernelName | undefined;
}

/** Copies a disk image atomically, keeping it sparse (fs.copyFile would write every zero). */
export async function copySparse(from: string, to: string): Promise<void> {
  const tmp = `${to}.${process.pid}-${randomUUID().slice(0, 8)}.tmp`; // threads of one process race too
  await run('cp', ['--sparse=always', from, tmp]);
  await rename(tmp, to);
}

/**
 * Makes `to` a qcow2 overlay whose backing file is the raw disk `backing`: instant, and the
 * sandbox's writes stay in its own small file. `backing` must never change afterwards.
 */
export async function createOverlay(backing: string, to: string): Promise<void> {
  const tmp = `${to}.${process.pid}-${randomUUID().slice(0, 8)}.tmp`; // threads of one process race too
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
  const kernel = resolveKernel(a, options.kernel ?? parseKernelChoice(runtimeVar('CORRAL_KERNEL')));
  if (config.memoryMib < kernel.minMemoryMib) {
    throw new InvalidOptionError('memory', `at least ${kernel.minMemoryMib} MiB with the ${kernel.name} guest kernel (${kernel.version}; CORRAL_KERNEL picks the kernel)`, config.memoryMib);
  }
  const image = await resolveRootImage(config, stateDir, a, options);
  const dir = sandboxDir(stateDir, config.name);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  // A restored sandbox's upper is a qcow2 overlay on its template's; a cold one a raw copy.
  const overlay = join(dir, 'upper.qcow2');
  const upper = existsSync(overlay) ? overlay : join(dir, 'upper.ext4');
  if (options.createUpper !== false && !image.disk && !existsSync(upper)) await copySparse(a.upperTemplate, upper);
  return {
    // CORRAL_QEMU swaps the VM binary (the tests' hostile fake guest uses it).
    qemu: runtimeVar('CORRAL_QEMU') || a.qemu,
    kernel: kernel.kernel,
    initramfs: kernel.initramfs,
    guestKernel: kernel,
    lower: image.lower,
    disk: image.disk,
    upper,
    upperTemplate: a.upperTemplate,
    imageEnv: { ...image.defaults.env },
    imageDefaults: image.defaults,
    imageDigest: image.digest,
  };
}
