/**
 * The guest-environment fields of a sandbox config (volumes, scripts, patches, network,
 * ports) and their validation, kept here so src/config.ts only spreads them in.
 */

import { InvalidOptionError } from '../errors.ts';
import { normalizeNetworkPolicy, type NetworkPolicyConfig } from './NetworkPolicy.ts';
import { isWithin } from './paths.ts';
import { normalizePatches, type PatchConfig } from './patches.ts';
import { normalizePorts, type PortConfig } from './ports.ts';
import { SCRIPTS_DIR, normalizeScripts } from './scripts.ts';
import { normalizeVolumes, type VolumeConfig } from './volumes.ts';

/** What shapes the guest's view beyond the image. Absent fields mean "none". */
export interface GuestConfigFields {
  readonly volumes?: readonly VolumeConfig[];
  /** name → body, written to /.msb/scripts/<name> (mode 0755), on PATH. */
  readonly scripts?: Readonly<Record<string, string>>;
  readonly patches?: readonly PatchConfig[];
  /** Absent: no network at all (no NIC), as with `NetworkPolicy.none()`. */
  readonly network?: NetworkPolicyConfig;
  readonly ports?: readonly PortConfig[];
}

export const GUEST_CONFIG_KEYS = ['volumes', 'scripts', 'patches', 'network', 'ports'] as const;

/** Checks the guest fields of a raw config; returns only the ones that are set. */
export function normalizeGuestFields(c: Partial<Record<(typeof GUEST_CONFIG_KEYS)[number], unknown>>): GuestConfigFields {
  const volumes = normalizeVolumes(c.volumes);
  const scripts = normalizeScripts(c.scripts);
  const patches = normalizePatches(c.patches);
  const network = c.network === undefined ? undefined : normalizeNetworkPolicy(c.network);
  const ports = normalizePorts(c.ports);
  if (Object.keys(scripts).length > 0) {
    const over = volumes.find((v) => isWithin(SCRIPTS_DIR, v.guestPath) || isWithin(v.guestPath, SCRIPTS_DIR));
    if (over) throw new InvalidOptionError('volume', `a guest path that does not hide ${SCRIPTS_DIR} (scripts are written there)`, over.guestPath);
  }
  return {
    ...(volumes.length ? { volumes } : {}),
    ...(Object.keys(scripts).length ? { scripts } : {}),
    ...(patches.length ? { patches } : {}),
    ...(network ? { network } : {}),
    ...(ports.length ? { ports } : {}),
  };
}

/** Whether the VM gets a NIC: a policy other than none, or published ports. */
export function hasNic(c: GuestConfigFields): boolean {
  return (c.network !== undefined && c.network.preset !== 'none') || (c.ports?.length ?? 0) > 0;
}

/**
 * The part of the device layout these fields decide (9p devices, NIC): a template and its
 * clones must agree on it, so it is an input of the template key.
 */
export function guestDeviceKey(c: GuestConfigFields): string {
  const shares = (c.volumes ?? []).filter((v) => v.kind !== 'tmpfs').length;
  const nic = hasNic(c);
  return shares === 0 && !nic ? '' : `9p=${shares};nic=${nic ? 1 : 0}`;
}

/**
 * The guest devices a VM was started with: how many 9p shares, whether a NIC. A VM restored
 * from a snapshot must be started with the same ones (qemu's migration checks the layout).
 */
export interface DeviceLayout {
  readonly shares: number;
  readonly nic: boolean;
}

/** The layout a config asks for (before any padding to a snapshot's layout). */
export function deviceLayout(c: GuestConfigFields): DeviceLayout {
  return { shares: (c.volumes ?? []).filter((v) => v.kind !== 'tmpfs').length, nic: hasNic(c) };
}

/**
 * The guest fields of a sandbox started from a snapshot: volumes, network, ports and scripts
 * of the new config where it sets them, else the snapshot source's; patches always the
 * source's (they are in the snapshot's disk already). The new config must fit the
 * snapshot's devices: at most as many bind/named volumes (missing ones are attached empty
 * and never mounted), and a NIC only if the snapshot has one (a snapshot's NIC with no
 * network asked for stays attached with everything refused).
 *
 * @example
 * snapshotGuestFields(meta.config, config, meta.devices) // → { volumes, network, … }
 */
export function snapshotGuestFields(source: GuestConfigFields, given: GuestConfigFields, layout: DeviceLayout, snapshot: string): GuestConfigFields {
  const pick = <K extends keyof GuestConfigFields>(k: K) => (given[k] !== undefined ? given[k] : source[k]);
  const merged: GuestConfigFields = { volumes: pick('volumes'), scripts: pick('scripts'), patches: source.patches, network: pick('network'), ports: pick('ports') };
  const wanted = deviceLayout(merged);
  if (wanted.shares > layout.shares) {
    throw new InvalidOptionError('volumes', `at most ${layout.shares} bind/named volumes when starting from snapshot "${snapshot}" (its VM had ${layout.shares} 9p devices; tmpfs volumes are not limited)`, wanted.shares);
  }
  if (wanted.nic && !layout.nic) {
    throw new InvalidOptionError('network', `no network or ports when starting from snapshot "${snapshot}": its VM had no NIC (snapshot a sandbox that has a network policy)`, merged.network?.preset ?? 'ports');
  }
  return Object.fromEntries(Object.entries(merged).filter(([, v]) => v !== undefined)) as GuestConfigFields;
}
