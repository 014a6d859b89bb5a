/**
 * Which guest kernel a VM boots, and how.
 *
 * setup (scripts/setup.sh) records each kernel it has in `artifacts.json` under `kernels`:
 * `debian`, Debian's packaged linux-image-amd64 (always there: nothing to compile; its
 * drivers are modules in its initramfs; its virtio-mmio devices come through ACPI; it needs
 * ≥ 128 MiB of guest RAM), and `custom`, the small kernel built from linux-source with
 * native/kernel/corral.config (built on request or in the background after the demo; boots
 * faster; no ACPI, its devices come on the command line). `CORRAL_KERNEL=debian|custom|auto`
 * chooses; `auto` (the default) takes the custom kernel once it is there.
 *
 * Templates are keyed on the kernel's and initramfs's files (src/snapshot/templates.ts) and
 * on the command line (acpi on or off), so sandboxes of one kernel never restore another's.
 */

import { existsSync } from 'node:fs';
import { CorralError, InvalidOptionError } from '../errors.ts';
import { runtimeVar } from './actorEnv.ts';
import type { Artifacts, KernelEntry } from './artifacts.ts';
import { loadArtifacts } from './artifacts.ts';

/** The kernels setup can provide. */
export type KernelName = 'debian' | 'custom';

/** A kernel choice: one of the kernels, or `auto` (custom if built, else Debian's). */
export type KernelChoice = KernelName | 'auto';

/** The values `CORRAL_KERNEL` accepts. */
export const KERNEL_CHOICES: readonly KernelChoice[] = ['debian', 'custom', 'auto'];

/** The kernel a VM boots, with what its command line needs. */
export interface GuestKernel {
  readonly name: KernelName;
  /** The uncompressed vmlinux, booted through PVH. */
  readonly kernel: string;
  readonly initramfs: string;
  /** `uname -r` of the guest. */
  readonly version: string;
  /** microvm's ACPI: on for a kernel that finds its virtio-mmio devices through it. */
  readonly acpi: boolean;
  /** The least guest RAM it boots with, MiB. */
  readonly minMemoryMib: number;
}

/**
 * Validates a kernel choice.
 *
 * @example
 * parseKernelChoice(process.env.CORRAL_KERNEL) // 'auto' when unset
 */
export function parseKernelChoice(value: string | undefined, option = 'CORRAL_KERNEL'): KernelChoice {
  if (value === undefined || value === '') return 'auto';
  if ((KERNEL_CHOICES as readonly string[]).includes(value)) return value as KernelChoice;
  throw new InvalidOptionError(option, `one of ${KERNEL_CHOICES.map((c) => `"${c}"`).join(', ')}`, value);
}

/** The kernels a manifest lists (one written before `kernels` existed lists its one custom kernel). */
export function manifestKernels(a: Artifacts): Partial<Record<KernelName, KernelEntry>> {
  if (a.kernels) return a.kernels;
  return { custom: { kernel: a.kernel, initramfs: a.initramfs, version: a.kernelVersion ?? 'unknown', acpi: false, minMemoryMib: 64 } };
}

/**
 * The kernel `choice` picks from the manifest `a`; E_SETUP_MISSING, with the command that
 * provides it, if that kernel is not there.
 *
 * @example
 * resolveKernel(loadArtifacts(), 'auto').name // 'custom' once `npm run setup -- --kernel custom` ran
 */
export function resolveKernel(a: Artifacts, choice: KernelChoice): GuestKernel {
  const kernels = manifestKernels(a);
  const usable = (e: KernelEntry | undefined): e is KernelEntry => e !== undefined && existsSync(e.kernel) && existsSync(e.initramfs);
  const name: KernelName = choice === 'auto' ? (usable(kernels.custom) ? 'custom' : 'debian') : choice;
  const entry = kernels[name];
  if (!usable(entry)) {
    const fix = name === 'custom' ? '`npm run setup -- --kernel custom` (~5 min)' : '`npm run setup`';
    throw new CorralError('E_SETUP_MISSING', `the ${name} guest kernel is not built${choice === 'auto' ? ' (CORRAL_KERNEL=auto found no kernel at all)' : ''}: run ${fix}`);
  }
  return { name, kernel: entry.kernel, initramfs: entry.initramfs, version: entry.version, acpi: entry.acpi, minMemoryMib: entry.minMemoryMib };
}

/**
 * The kernel for a VM created now: `CORRAL_KERNEL` (as the calling actor sees it) applied to
 * the cache's manifest.
 *
 * @example
 * const k = selectKernel(); // { name: 'debian', acpi: true, minMemoryMib: 128, … }
 */
export function selectKernel(): GuestKernel {
  return resolveKernel(loadArtifacts(), parseKernelChoice(runtimeVar('CORRAL_KERNEL')));
}

/**
 * "debian 6.1.0-57-amd64 (CORRAL_KERNEL=auto)": the kernel a create would boot now, for
 * benchmark and tool headers.
 *
 * @example
 * console.log(`corral boot bench — kernel ${kernelLabel()}`);
 */
export function kernelLabel(): string {
  const choice = parseKernelChoice(runtimeVar('CORRAL_KERNEL'));
  const k = resolveKernel(loadArtifacts(), choice);
  return `${k.name} ${k.version} (CORRAL_KERNEL=${choice})`;
}
