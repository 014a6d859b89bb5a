/**
 * An in-process secret registry: a password given to `.registryAuth({ password })` is kept
 * here and the config holds only an opaque handle (`corral-secret:<uuid>`), so a built config
 * can be printed, stored or sent without the password in it.
 *
 * Handles are valid in the process that registered them. The supervisor hands the values a
 * config refers to to the sandbox worker in memory (workerData), never through argv, env,
 * events or logs. A config meant to outlive the process should use `passwordEnv` instead.
 */

import { randomUUID } from 'node:crypto';

const PREFIX = 'corral-secret:';
const secrets = new Map<string, string>();

/**
 * Stores a secret and returns its handle.
 *
 * @example
 * const handle = registerSecret(process.env.REGISTRY_PASSWORD!);
 */
export function registerSecret(value: string): string {
  const handle = `${PREFIX}${randomUUID()}`;
  secrets.set(handle, value);
  return handle;
}

/** True if `value` has the shape of a secret handle. */
export function isSecretHandle(value: unknown): value is string {
  return typeof value === 'string' && value.startsWith(PREFIX) && value.length === PREFIX.length + 36;
}

/** The secret behind a handle, if this process registered it. */
export function lookupSecret(handle: string): string | undefined {
  return secrets.get(handle);
}

/** Forgets a secret. */
export function forgetSecret(handle: string): void {
  secrets.delete(handle);
}

/**
 * The secrets a config refers to, as a handle → value map (for the sandbox worker).
 * Handles this process does not know are left out: the worker reports them when used.
 */
export function secretsFor(config: { readonly registryAuth?: unknown }): Record<string, string> {
  const out: Record<string, string> = {};
  const auth = config.registryAuth as { secret?: unknown } | undefined;
  if (auth && isSecretHandle(auth.secret)) {
    const v = secrets.get(auth.secret);
    if (v !== undefined) out[auth.secret] = v;
  }
  return out;
}
