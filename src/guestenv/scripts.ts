/**
 * Scripts: named files the builder's `.script(name, body)` defines, written executable to
 * `/.msb/scripts/<name>` in the guest (the directory microsandbox uses, kept for its users)
 * before user code runs, with that directory appended to every exec's `PATH` so they are
 * callable by name.
 */

import { InvalidOptionError } from '../errors.ts';
import type { SetupOp } from '../agent/setupOps.ts';

/** Where scripts live in the guest. */
export const SCRIPTS_DIR = '/.msb/scripts';

export const SCRIPT_LIMITS = { maxScripts: 64, maxBytes: 256 * 1024 } as const;

const NAME_RE = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;

/** Checks one script's name and body. */
export function validateScript(name: unknown, body: unknown, option = 'script'): void {
  if (typeof name !== 'string' || !NAME_RE.test(name)) {
    throw new InvalidOptionError(`${option} name`, 'a file name of letters, digits, ".", "_" and "-" (max 128, not starting with "." or "-")', name);
  }
  if (typeof body !== 'string' || Buffer.byteLength(body) > SCRIPT_LIMITS.maxBytes) {
    throw new InvalidOptionError(`${option} ${name}`, `a string of at most ${SCRIPT_LIMITS.maxBytes} bytes`, body);
  }
}

/** Checks a config's `scripts` (name → body). */
export function normalizeScripts(raw: unknown): Record<string, string> {
  if (raw === undefined) return {};
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new InvalidOptionError('scripts', 'an object of name: body strings', raw);
  const entries = Object.entries(raw);
  if (entries.length > SCRIPT_LIMITS.maxScripts) throw new InvalidOptionError('scripts', `at most ${SCRIPT_LIMITS.maxScripts} scripts`, entries.length);
  const out: Record<string, string> = {};
  for (const [name, body] of entries) {
    validateScript(name, body, 'scripts');
    out[name] = body as string;
  }
  return out;
}

/** The setup ops that write the scripts (mode 0755). */
export function scriptOps(scripts: Readonly<Record<string, string>>): SetupOp[] {
  const names = Object.keys(scripts);
  if (names.length === 0) return [];
  return [
    { op: 'mkdir', path: SCRIPTS_DIR, mode: 0o755 },
    ...names.map((n): SetupOp => ({ op: 'write', path: `${SCRIPTS_DIR}/${n}`, mode: 0o755, data: Buffer.from(scripts[n]!) })),
  ];
}

/**
 * An exec environment with the scripts directory appended to `PATH` (appended: a script
 * never shadows a system command of the same name). Unchanged when there are no scripts.
 */
export function withScriptsPath(env: Record<string, string>, scripts: Readonly<Record<string, string>> | undefined): Record<string, string> {
  if (!scripts || Object.keys(scripts).length === 0) return env;
  const path = env.PATH ?? '';
  if (path.split(':').includes(SCRIPTS_DIR)) return env;
  return { ...env, PATH: path ? `${path}:${SCRIPTS_DIR}` : SCRIPTS_DIR };
}
