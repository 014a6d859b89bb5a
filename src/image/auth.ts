/**
 * Registry authentication: the config's reference to credentials, how it is resolved, and
 * the `WWW-Authenticate` challenge (Basic, or the Bearer token flow with realm/service/scope).
 *
 * Credentials are never put in a config, in argv, in events or in error messages: the
 * config holds a reference (an environment variable's name, or a handle into the in-process
 * secret registry, see secrets.ts), resolved only when a registry asks for them.
 */

import { CorralError, InvalidOptionError } from '../errors.ts';
import { isSecretHandle, registerSecret } from './secrets.ts';

/** How to authenticate to the registry of the sandbox's image, as stored in a config. */
export type RegistryAuthConfig =
  | { readonly kind: 'anonymous' }
  /** Basic credentials, password read from the environment variable `passwordEnv`. */
  | { readonly kind: 'basic'; readonly username: string; readonly passwordEnv: string }
  /** Basic credentials, password kept in this process's secret registry. */
  | { readonly kind: 'basic'; readonly username: string; readonly secret: string };

/** What `.registryAuth()` accepts: a config reference, or a password in clear (stored as a secret). */
export type RegistryAuthInput = RegistryAuthConfig | { readonly kind: 'basic'; readonly username: string; readonly password: string };

/** Resolved credentials. Never logged. */
export interface Credentials {
  readonly username: string;
  readonly password: string;
}

const ENV_NAME_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;

/**
 * Validates a registryAuth value (from the builder or parsed JSON); field paths in errors.
 * A clear-text `password` is accepted only when `allowPassword` (the builder) and is turned
 * into a secret handle.
 */
export function normalizeRegistryAuth(raw: unknown, allowPassword = false, option = 'registryAuth'): RegistryAuthConfig {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new InvalidOptionError(option, '{ kind: "anonymous" } or { kind: "basic", username, passwordEnv | secret }', raw);
  }
  const r = raw as Record<string, unknown>;
  if (r.kind === 'anonymous') {
    for (const k of Object.keys(r)) if (k !== 'kind') throw new InvalidOptionError(`${option}.${k}`, 'no other field with kind "anonymous"', k);
    return { kind: 'anonymous' };
  }
  if (r.kind !== 'basic') throw new InvalidOptionError(`${option}.kind`, 'one of "anonymous", "basic"', r.kind);
  const username = r.username;
  if (typeof username !== 'string' || username.length === 0 || username.length > 256 || /[\0:\n]/.test(username)) {
    throw new InvalidOptionError(`${option}.username`, 'a non-empty string without ":", NUL or newline (max 256)', username);
  }
  const sources = ['password', 'passwordEnv', 'secret'].filter((k) => r[k] !== undefined);
  for (const k of Object.keys(r)) {
    if (!['kind', 'username', 'password', 'passwordEnv', 'secret'].includes(k)) {
      throw new InvalidOptionError(`${option}.${k}`, 'a known field (kind, username, passwordEnv, secret)', k);
    }
  }
  if (sources.length !== 1) throw new InvalidOptionError(option, 'exactly one of passwordEnv, secret (or password, with the builder)', sources);
  if (r.password !== undefined) {
    // Never echo the value: the error shows its type only.
    if (!allowPassword) throw new InvalidOptionError(`${option}.password`, 'not in a config: use passwordEnv, or the builder (which stores it as a secret)', '<redacted>');
    if (typeof r.password !== 'string' || r.password.length === 0) throw new InvalidOptionError(`${option}.password`, 'a non-empty string', typeof r.password);
    return { kind: 'basic', username, secret: registerSecret(r.password) };
  }
  if (r.passwordEnv !== undefined) {
    if (typeof r.passwordEnv !== 'string' || !ENV_NAME_RE.test(r.passwordEnv)) {
      throw new InvalidOptionError(`${option}.passwordEnv`, 'an environment variable name', r.passwordEnv);
    }
    return { kind: 'basic', username, passwordEnv: r.passwordEnv };
  }
  if (!isSecretHandle(r.secret)) throw new InvalidOptionError(`${option}.secret`, 'a handle returned by registerSecret() ("corral-secret:<uuid>")', r.secret);
  return { kind: 'basic', username, secret: r.secret };
}

/**
 * Resolves a config's reference to credentials, or undefined for anonymous access.
 * `secrets` maps secret handles to values (handed over by the supervisor).
 */
export function resolveCredentials(auth: RegistryAuthConfig | undefined, secrets: Readonly<Record<string, string>> = {}, env: NodeJS.ProcessEnv = process.env): Credentials | undefined {
  if (!auth || auth.kind === 'anonymous') return undefined;
  if ('passwordEnv' in auth) {
    const password = env[auth.passwordEnv];
    if (password === undefined) {
      throw new CorralError('E_REGISTRY_AUTH', `registryAuth.passwordEnv: the environment variable ${auth.passwordEnv} is not set`);
    }
    return { username: auth.username, password };
  }
  const password = secrets[auth.secret];
  if (password === undefined) {
    throw new CorralError(
      'E_REGISTRY_AUTH',
      'registryAuth.secret: the handle is not known in this process (a password given to .registryAuth() lives only in the process that set it; use passwordEnv for configs that outlive it)',
    );
  }
  return { username: auth.username, password };
}

/** A parsed `WWW-Authenticate` challenge. */
export interface Challenge {
  readonly scheme: 'basic' | 'bearer' | string;
  readonly params: Readonly<Record<string, string>>;
}

/**
 * Parses `Bearer realm="https://auth/token",service="reg",scope="repository:x:pull"`.
 * Only the first challenge of the header is used.
 */
export function parseChallenge(header: string | null): Challenge | undefined {
  if (!header) return undefined;
  const m = /^\s*([A-Za-z]+)\s*(.*)$/s.exec(header);
  if (!m) return undefined;
  const params: Record<string, string> = {};
  const re = /([A-Za-z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*,?\s*/g;
  let p: RegExpExecArray | null;
  const rest = m[2] ?? '';
  while ((p = re.exec(rest)) !== null) {
    if (p[0].length === 0) break;
    params[p[1]!.toLowerCase()] = p[2] !== undefined ? p[2].replace(/\\(.)/g, '$1') : (p[3] ?? '');
  }
  return { scheme: m[1]!.toLowerCase(), params };
}

/** `Basic base64(user:password)`. */
export function basicHeader(c: Credentials): string {
  return `Basic ${Buffer.from(`${c.username}:${c.password}`).toString('base64')}`;
}
