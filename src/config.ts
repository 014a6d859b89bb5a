/**
 * A sandbox's configuration as plain, JSON-serialisable data, and its validation.
 *
 * The builder produces it (`builder.build()`), `Sandbox.create(config)` consumes it, the
 * store persists it. Validation errors name the option (or field path) and what is allowed.
 */

import { InvalidOptionError } from './errors.ts';
import { IMAGE_CONFIG_KEYS, normalizeImageFields, type ImageConfigFields } from './image/imageOptions.ts';
import type { AccelOption } from './vm/accel.ts';
import { GUEST_CONFIG_KEYS, normalizeGuestFields, type GuestConfigFields } from './guestenv/guestConfig.ts';

/**
 * The complete description of a sandbox. Image fields (`image`, `pullPolicy`,
 * `registryAuth`, `insecureRegistries`, `disk`) are described in src/image/imageOptions.ts.
 */
export interface SandboxConfig extends ImageConfigFields, GuestConfigFields {
  readonly name: string;
  /** Image reference; `corral/base` is the default local image built by setup. */
  readonly image: string;
  readonly memoryMib: number;
  readonly cpus: number;
  /** Absolute path; created if missing. */
  readonly workdir: string;
  /** Shell used by `sandbox.shell()`. */
  readonly shell: string;
  readonly env: Readonly<Record<string, string>>;
  readonly labels: Readonly<Record<string, string>>;
  readonly accel: AccelOption;
  /** How long boot may take before it fails. */
  readonly bootTimeoutMs: number;
  /** How long a graceful stop may take before it escalates to kill. */
  readonly stopTimeoutMs: number;
  /** Host-enforced lifetime: past it the sandbox drains. */
  readonly maxDurationMs?: number;
  /** Host-enforced idle limit: this long with no exec running drains the sandbox (or pauses it: {@link idleAction}). */
  readonly idleTimeoutMs?: number;
  /** What the idle limit does: `stop` (default) drains the sandbox; `pause` freezes it until a call needs the guest. */
  readonly idleAction?: 'stop' | 'pause';
  /**
   * A shell command started in the background as the guest comes up (E2B's template start
   * command: a server, a warmed interpreter): in the template, so that a sandbox restored
   * from it has it running already, and after a cold boot or a start.
   */
  readonly startCmd?: string;
  /** A shell command that succeeds once {@link startCmd}'s work is ready; polled until it does (bootTimeoutMs bounds it). */
  readonly readyCmd?: string;
  /** Verbosity of the sandbox's runtime log (stderr of the hosting process). */
  readonly logLevel: LogLevel;
  /**
   * Start by restoring a template of this shape (booted once, saved after the agent came
   * up) instead of a cold boot. Default true.
   */
  readonly template?: boolean;
  /** Start from this snapshot (memory + upper disk) of another sandbox: what ran there runs on. */
  readonly fromSnapshot?: string;
}

/** Runtime log verbosity. */
export type LogLevel = 'error' | 'warn' | 'info' | 'debug' | 'trace';
export const LOG_LEVELS: readonly LogLevel[] = ['error', 'warn', 'info', 'debug', 'trace'];

export const LIMITS = {
  nameMaxLength: 63,
  memoryMib: { min: 64, max: 64 * 1024 },
  cpus: { min: 1, max: 64 },
  envNameMaxLength: 256,
  envValueMaxBytes: 128 * 1024,
  envMaxEntries: 1024,
  timeoutMs: { min: 100, max: 24 * 3600 * 1000 },
  policyMs: { min: 100, max: 30 * 24 * 3600 * 1000 },
} as const;

export const DEFAULTS = {
  image: 'corral/base',
  memoryMib: 256,
  cpus: 1,
  workdir: '/',
  shell: '/bin/sh',
  accel: 'auto' as AccelOption,
  bootTimeoutMs: 60_000,
  stopTimeoutMs: 10_000,
  logLevel: 'warn' as LogLevel,
} as const;

const NAME_RE = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/;
const ENV_NAME_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;
const LABEL_RE = /^[A-Za-z0-9]([A-Za-z0-9._\/-]*[A-Za-z0-9])?$/;

/** Throws unless `name` is a valid sandbox name. */
export function validateName(name: unknown, option = 'name'): string {
  if (typeof name !== 'string' || name.length === 0 || name.length > LIMITS.nameMaxLength || !NAME_RE.test(name)) {
    throw new InvalidOptionError(
      option,
      `1-${LIMITS.nameMaxLength} characters of a-z, 0-9 and "-", starting and ending with a letter or digit`,
      name,
    );
  }
  return name;
}

export function validateInt(value: unknown, option: string, range: { min: number; max: number }, unit = ''): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < range.min || value > range.max) {
    throw new InvalidOptionError(option, `an integer from ${range.min} to ${range.max}${unit}`, value);
  }
  return value;
}

export function validateAbsolutePath(value: unknown, option: string): string {
  if (typeof value !== 'string' || !value.startsWith('/') || value.includes('\0') || value.split('/').includes('..') || value.length > 4096) {
    throw new InvalidOptionError(option, 'an absolute path without ".." segments or NUL bytes', value);
  }
  return value;
}

export function validateEnvName(name: unknown, option = 'env'): string {
  if (typeof name !== 'string' || name.length > LIMITS.envNameMaxLength || !ENV_NAME_RE.test(name)) {
    throw new InvalidOptionError(`${option} name`, 'letters, digits and "_", not starting with a digit', name);
  }
  return name;
}

export function validateEnvValue(name: string, value: unknown, option = 'env'): string {
  if (typeof value !== 'string' || value.includes('\0') || Buffer.byteLength(value) > LIMITS.envValueMaxBytes) {
    throw new InvalidOptionError(`${option}.${name}`, `a string without NUL bytes, at most ${LIMITS.envValueMaxBytes} bytes`, value);
  }
  return value;
}

export function validateEnv(env: unknown, option: string): Record<string, string> {
  if (env === undefined) return {};
  if (typeof env !== 'object' || env === null || Array.isArray(env)) throw new InvalidOptionError(option, 'an object of NAME: value strings', env);
  const entries = Object.entries(env);
  if (entries.length > LIMITS.envMaxEntries) throw new InvalidOptionError(option, `at most ${LIMITS.envMaxEntries} variables`, entries.length);
  const out: Record<string, string> = {};
  for (const [k, v] of entries) out[validateEnvName(k, option)] = validateEnvValue(k, v, option);
  return out;
}

function validateLabels(labels: unknown): Record<string, string> {
  if (labels === undefined) return {};
  if (typeof labels !== 'object' || labels === null || Array.isArray(labels)) throw new InvalidOptionError('labels', 'an object of key: value strings', labels);
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(labels)) {
    if (!LABEL_RE.test(k) || k.length > 128) throw new InvalidOptionError(`labels.${k}`, 'a key of letters, digits, ".", "_", "/", "-" (max 128)', k);
    if (typeof v !== 'string' || v.length > 1024) throw new InvalidOptionError(`labels.${k}`, 'a string of at most 1024 characters', v);
    out[k] = v;
  }
  return out;
}

/** Validates an image reference's shape (what it points at is checked at create). */
export function validateImage(image: unknown): string {
  if (typeof image !== 'string' || image.length === 0 || image.length > 1024 || /[\s\0]/.test(image)) {
    throw new InvalidOptionError('image', 'an image reference such as "corral/base" or "registry/repo:tag"', image);
  }
  return image;
}

/**
 * Checks every field of a config (from the builder, or parsed from JSON) and fills defaults.
 * Throws an InvalidOptionError naming the first bad field.
 *
 * @example
 * const config = normalizeConfig(JSON.parse(text));
 */
export function normalizeConfig(raw: unknown): SandboxConfig {
  if (typeof raw !== 'object' || raw === null) throw new InvalidOptionError('config', 'an object', raw);
  const c = raw as Partial<Record<keyof SandboxConfig, unknown>>;
  const known = new Set<string>([
    'name', 'image', 'memoryMib', 'cpus', 'workdir', 'shell', 'env', 'labels', 'accel',
    'bootTimeoutMs', 'stopTimeoutMs', 'maxDurationMs', 'idleTimeoutMs', 'idleAction', 'startCmd', 'readyCmd', 'logLevel', 'template', 'fromSnapshot',
    ...IMAGE_CONFIG_KEYS,
    ...GUEST_CONFIG_KEYS,
  ]);
  if (c.template !== undefined && typeof c.template !== 'boolean') throw new InvalidOptionError('template', 'true or false', c.template);
  if (c.fromSnapshot !== undefined) validateName(c.fromSnapshot, 'fromSnapshot');
  const logLevel = c.logLevel ?? DEFAULTS.logLevel;
  if (!LOG_LEVELS.includes(logLevel as LogLevel)) throw new InvalidOptionError('logLevel', `one of ${LOG_LEVELS.map((l) => `"${l}"`).join(', ')}`, logLevel);
  for (const k of Object.keys(c)) {
    if (!known.has(k)) throw new InvalidOptionError(k, `a known option (${[...known].join(', ')})`, k);
  }
  if (c.idleAction !== undefined && c.idleAction !== 'stop' && c.idleAction !== 'pause') throw new InvalidOptionError('idleAction', 'one of "stop", "pause"', c.idleAction);
  for (const k of ['startCmd', 'readyCmd'] as const) {
    const v = c[k];
    if (v !== undefined && (typeof v !== 'string' || v.trim() === '' || v.length > 16 * 1024)) throw new InvalidOptionError(k, 'a non-empty shell command of at most 16 KiB', v);
  }
  if (c.readyCmd !== undefined && c.startCmd === undefined) throw new InvalidOptionError('readyCmd', 'set together with startCmd (it says when the start command is ready)', c.readyCmd);
  const accel = c.accel ?? DEFAULTS.accel;
  if (accel !== 'auto' && accel !== 'kvm' && accel !== 'tcg') throw new InvalidOptionError('accel', 'one of "auto", "kvm", "tcg"', accel);
  return {
    name: validateName(c.name),
    ...normalizeImageFields(c, validateImage(c.image ?? DEFAULTS.image)),
    memoryMib: validateInt(c.memoryMib ?? DEFAULTS.memoryMib, 'memoryMib', LIMITS.memoryMib, ' MiB'),
    cpus: validateInt(c.cpus ?? DEFAULTS.cpus, 'cpus', LIMITS.cpus),
    workdir: validateAbsolutePath(c.workdir ?? DEFAULTS.workdir, 'workdir'),
    shell: validateAbsolutePath(c.shell ?? DEFAULTS.shell, 'shell'),
    env: validateEnv(c.env, 'env'),
    labels: validateLabels(c.labels),
    accel,
    bootTimeoutMs: validateInt(c.bootTimeoutMs ?? DEFAULTS.bootTimeoutMs, 'bootTimeoutMs', LIMITS.timeoutMs, ' ms'),
    stopTimeoutMs: validateInt(c.stopTimeoutMs ?? DEFAULTS.stopTimeoutMs, 'stopTimeoutMs', LIMITS.timeoutMs, ' ms'),
    ...(c.maxDurationMs !== undefined ? { maxDurationMs: validateInt(c.maxDurationMs, 'maxDurationMs', LIMITS.policyMs, ' ms') } : {}),
    ...(c.idleTimeoutMs !== undefined ? { idleTimeoutMs: validateInt(c.idleTimeoutMs, 'idleTimeoutMs', LIMITS.policyMs, ' ms') } : {}),
    ...(c.idleAction !== undefined ? { idleAction: c.idleAction as 'stop' | 'pause' } : {}),
    ...(c.startCmd !== undefined ? { startCmd: c.startCmd as string } : {}),
    ...(c.readyCmd !== undefined ? { readyCmd: c.readyCmd as string } : {}),
    logLevel: logLevel as LogLevel,
    ...(c.template !== undefined ? { template: c.template as boolean } : {}),
    ...(c.fromSnapshot !== undefined ? { fromSnapshot: c.fromSnapshot as string } : {}),
    ...normalizeGuestFields(c),
  };
}
