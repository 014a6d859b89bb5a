/**
 * Chooses how to run guest CPUs: KVM where it can really boot a Linux guest, TCG otherwise.
 *
 * `/dev/kvm` existing is not enough. On this workplace's machines it is provided by
 * `kvm_pvm` (software nested virtualisation) and an ordinary Linux guest dies under it with
 * "KVM internal error … emulation failure" after crawling for seconds. So: an explicit
 * choice wins (`CORRAL_ACCEL` or the builder's `accel`), then no `/dev/kvm` → TCG, then the
 * PVM module → TCG, then a CPU without vmx/svm → TCG, else KVM.
 */

import { runtimeVar } from '../runtime/actorEnv.ts';
import { accessSync, constants, existsSync, readFileSync } from 'node:fs';
import type { Accel } from '../bus/events.ts';
import { InvalidOptionError } from '../errors.ts';

/** The accel option: a fixed choice or detection. */
export type AccelOption = Accel | 'auto';

/** The chosen accelerator and why. */
export interface AccelChoice {
  readonly accel: Accel;
  readonly reason: string;
}

let detected: AccelChoice | undefined;

/** Validates an accel option value. */
export function parseAccel(value: string, option = 'accel'): AccelOption {
  if (value === 'kvm' || value === 'tcg' || value === 'auto') return value;
  throw new InvalidOptionError(option, 'one of "auto", "kvm", "tcg"', value);
}

/**
 * Resolves the accelerator for a VM.
 *
 * @example
 * resolveAccel('auto') // → { accel: 'tcg', reason: '/dev/kvm is kvm_pvm (…)' } on these machines
 */
export function resolveAccel(option: AccelOption = 'auto'): AccelChoice {
  const env = runtimeVar('CORRAL_ACCEL');
  if (option === 'auto' && env) option = parseAccel(env, 'CORRAL_ACCEL');
  if (option === 'kvm') return { accel: 'kvm', reason: 'requested' };
  if (option === 'tcg') return { accel: 'tcg', reason: 'requested' };
  return (detected ??= detect());
}

function detect(): AccelChoice {
  if (!existsSync('/dev/kvm')) return { accel: 'tcg', reason: 'no /dev/kvm' };
  try {
    accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
  } catch {
    return { accel: 'tcg', reason: '/dev/kvm is not accessible' };
  }
  if (existsSync('/sys/module/kvm_pvm')) {
    return { accel: 'tcg', reason: '/dev/kvm is kvm_pvm (PVM cannot boot an ordinary Linux guest)' };
  }
  let cpuinfo = '';
  try {
    cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
  } catch {
    /* fall through: assume usable */
  }
  if (cpuinfo && !/^flags\s*:.*\b(vmx|svm)\b/m.test(cpuinfo)) {
    return { accel: 'tcg', reason: 'the CPU shows no vmx/svm flag' };
  }
  return { accel: 'kvm', reason: '/dev/kvm with hardware virtualisation' };
}

/**
 * The host TSC frequency in kHz, for the guest's `tsc_early_khz=`: without it some TCG boots
 * hang in PIT calibration. Read from the kernel log when allowed, else from /proc/cpuinfo.
 */
export function hostTscKhz(): number | undefined {
  try {
    const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
    const m = /^cpu MHz\s*:\s*([\d.]+)/m.exec(cpuinfo);
    if (m) return Math.round(Number(m[1]) * 1000);
  } catch {
    /* no cpuinfo: leave it to the guest */
  }
  return undefined;
}
