/**
 * Parsers for the values of the CLI's options that the SDK takes as numbers or enums: each
 * error names the flag as typed (`--idle-timeout`, not the config field `idleTimeoutMs`)
 * and the values it allows, with E_INVALID_OPTION (exit code 2).
 */

import { constants } from 'node:os';
import { LIMITS, type SandboxConfig } from '../config.ts';
import { CorralError, InvalidOptionError } from '../errors.ts';

/** The options of `create` beyond those `run` shares (parseArgs config). */
export const CREATE_OPTS = {
  port: { type: 'string', multiple: true, short: 'p' },
  'idle-timeout': { type: 'string' },
  'idle-action': { type: 'string' },
  'max-duration': { type: 'string' },
  'start-cmd': { type: 'string' },
  'ready-cmd': { type: 'string' },
  'from-snapshot': { type: 'string' },
} as const;

const POLICY_SECONDS = `a number of seconds from ${LIMITS.policyMs.min / 1000} to ${LIMITS.policyMs.max / 1000}`;

/**
 * A lifetime or idle limit in seconds (`--max-duration 600`, `--idle-timeout 0.5`), as ms
 * within the range the config takes.
 *
 * @example
 * policyMs('30', '--idle-timeout'); // 30000
 */
export function policyMs(v: unknown, flag: string): number {
  const n = typeof v === 'string' && v.trim() !== '' ? Number(v) : NaN;
  const ms = Math.round(n * 1000);
  if (!Number.isFinite(n) || ms < LIMITS.policyMs.min || ms > LIMITS.policyMs.max) throw new InvalidOptionError(flag, POLICY_SECONDS, v);
  return ms;
}

/** A TCP port typed on the command line (1-65535). */
function tcpPort(v: string, flag: string, whole: string): number {
  const n = /^\d{1,5}$/.test(v) ? Number(v) : NaN;
  if (!(n >= 1 && n <= 65535)) throw new InvalidOptionError(flag, 'two TCP ports from 1 to 65535 joined by ":" (HOSTPORT:GUESTPORT)', whole);
  return n;
}

/**
 * `HOSTPORT:GUESTPORT`, as `--port` and `publish` take it (docker's `-p` without an address:
 * corral publishes on host loopback only).
 *
 * @example
 * portPair('18080:8080', '--port'); // { hostPort: 18080, guestPort: 8080 }
 */
export function portPair(v: unknown, flag: string): { hostPort: number; guestPort: number } {
  const parts = typeof v === 'string' ? v.split(':') : [];
  if (parts.length !== 2) throw new InvalidOptionError(flag, 'two TCP ports from 1 to 65535 joined by ":" (HOSTPORT:GUESTPORT)', v);
  return { hostPort: tcpPort(parts[0]!, flag, v as string), guestPort: tcpPort(parts[1]!, flag, v as string) };
}

/**
 * A host port alone (`unpublish NAME HOSTPORT`).
 *
 * @example
 * hostPort('18080', 'HOSTPORT'); // 18080
 */
export function hostPort(v: unknown, what: string): number {
  const n = typeof v === 'string' && /^\d{1,5}$/.test(v) ? Number(v) : NaN;
  if (!(n >= 1 && n <= 65535)) throw new InvalidOptionError(what, 'a TCP port from 1 to 65535', v);
  return n;
}

/**
 * The config fields of `create`'s own options: published ports, idle and lifetime limits,
 * the template's start and ready commands, the snapshot to start from. Only the ones given.
 *
 * @example
 * createFields({ 'idle-timeout': '30', 'idle-action': 'pause' }); // { idleTimeoutMs: 30000, idleAction: 'pause' }
 */
export function createFields(v: Record<string, unknown>): Partial<SandboxConfig> {
  const action = v['idle-action'];
  if (action !== undefined && action !== 'pause' && action !== 'stop') throw new InvalidOptionError('--idle-action', 'one of pause, stop', action);
  if (action !== undefined && v['idle-timeout'] === undefined) throw new CorralError('E_USAGE', '--idle-action says what --idle-timeout does: give --idle-timeout S too');
  for (const flag of ['start-cmd', 'ready-cmd'] as const) {
    const cmd = v[flag];
    if (cmd !== undefined && (typeof cmd !== 'string' || cmd.trim() === '')) throw new InvalidOptionError(`--${flag}`, 'a non-empty shell command', cmd);
  }
  if (v['ready-cmd'] !== undefined && v['start-cmd'] === undefined) throw new CorralError('E_USAGE', '--ready-cmd says when --start-cmd is ready: give --start-cmd CMD too');
  const ports = ((v.port as string[] | undefined) ?? []).map((p) => portPair(p, '--port'));
  return {
    ...(ports.length ? { ports } : {}),
    ...(v['idle-timeout'] !== undefined ? { idleTimeoutMs: policyMs(v['idle-timeout'], '--idle-timeout') } : {}),
    ...(action !== undefined ? { idleAction: action } : {}),
    ...(v['max-duration'] !== undefined ? { maxDurationMs: policyMs(v['max-duration'], '--max-duration') } : {}),
    ...(typeof v['start-cmd'] === 'string' ? { startCmd: v['start-cmd'] } : {}),
    ...(typeof v['ready-cmd'] === 'string' ? { readyCmd: v['ready-cmd'] } : {}),
    // Checked against the snapshots the state dir has by the create (E_SNAPSHOT_NOT_FOUND).
    ...(typeof v['from-snapshot'] === 'string' ? { fromSnapshot: v['from-snapshot'] } : {}),
  };
}

/**
 * A signal for `exec-kill --signal`: a name (`TERM`, `SIGTERM`, `term`) or a number from 1
 * to 64, as the guest's Linux numbers them (the host's table: both are Linux).
 *
 * @example
 * signalNumber('TERM'); // 15
 */
export function signalNumber(v: unknown): number {
  const allowed = 'a signal name (KILL, TERM, INT, HUP, QUIT, USR1, USR2, …) or a number from 1 to 64';
  if (typeof v !== 'string') throw new InvalidOptionError('--signal', allowed, v);
  if (/^\d+$/.test(v)) {
    const n = Number(v);
    if (n >= 1 && n <= 64) return n;
    throw new InvalidOptionError('--signal', allowed, v);
  }
  const name = v.toUpperCase().startsWith('SIG') ? v.toUpperCase() : `SIG${v.toUpperCase()}`;
  const n = (constants.signals as Record<string, number | undefined>)[name];
  if (n === undefined) throw new InvalidOptionError('--signal', allowed, v);
  return n;
}

/**
 * A non-negative integer typed on the command line (`--since SEQ`), or an exec id (≥ 1).
 *
 * @example
 * integerArg('12', 'ID', 1); // 12
 */
export function integerArg(v: unknown, what: string, min: number, allowed: string): number {
  const n = typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : NaN;
  if (!Number.isSafeInteger(n) || n < min) throw new InvalidOptionError(what, allowed, v);
  return n;
}
