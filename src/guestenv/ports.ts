/**
 * Port publishing: `.port(hostPort, guestPort)` makes a TCP server in the guest reachable
 * at `127.0.0.1:hostPort` on the host. qemu's user networking listens there (host loopback
 * only, never other interfaces) and forwards each connection to the guest's port. Replies
 * pass the network policy as established traffic, so even `none` + ports works: the guest
 * serves, but cannot open connections of its own.
 */

import { InvalidOptionError } from '../errors.ts';

/** One published port in a config. */
export interface PortConfig {
  readonly hostPort: number;
  readonly guestPort: number;
}

export const MAX_PORTS = 64;

function port(value: unknown, option: string): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > 65535) {
    throw new InvalidOptionError(option, 'a TCP port from 1 to 65535', value);
  }
  return value;
}

/** Checks one mapping. */
export function validatePort(hostPort: unknown, guestPort: unknown, option = 'port'): PortConfig {
  return { hostPort: port(hostPort, `${option}.hostPort`), guestPort: port(guestPort, `${option}.guestPort`) };
}

/** Checks a config's `ports`: valid numbers, each host port once. */
export function normalizePorts(raw: unknown): PortConfig[] {
  if (raw === undefined) return [];
  if (!Array.isArray(raw) || raw.length > MAX_PORTS) throw new InvalidOptionError('ports', `an array of at most ${MAX_PORTS} { hostPort, guestPort }`, raw);
  const out = raw.map((p: unknown, i) => {
    if (typeof p !== 'object' || p === null) throw new InvalidOptionError(`ports[${i}]`, 'an object { hostPort, guestPort }', p);
    const o = p as Record<string, unknown>;
    return validatePort(o.hostPort, o.guestPort, `ports[${i}]`);
  });
  const seen = new Set<number>();
  for (const p of out) {
    if (seen.has(p.hostPort)) throw new InvalidOptionError('port', `each host port once (${p.hostPort} is published twice)`, p.hostPort);
    seen.add(p.hostPort);
  }
  return out;
}
