/**
 * corral's errors: one base class, a stable `code` per failure kind.
 *
 * Codes are part of the public API (listed in the README): callers branch on `err.code`,
 * never on the message. Errors that cross a worker or socket boundary are rebuilt from
 * `{ name, code, message }` by {@link serializeError}/{@link deserializeError}.
 */

export const ErrorCodes = {
  E_INVALID_OPTION: 'an option given to the builder or an API call is not allowed',
  E_SANDBOX_NOT_FOUND: 'no sandbox with that name',
  E_SANDBOX_EXISTS: 'a sandbox with that name already exists',
  E_ILLEGAL_STATE: 'the command is not allowed in the sandbox\'s current state',
  E_SETUP_MISSING: 'the runtime artifacts (kernel, agent, images) are not built: run the setup script',
  E_IMAGE_NOT_FOUND: 'the image is not known locally',
  E_IMAGE_NOT_CACHED: 'the image is not in the local cache and the pull policy is never',
  E_IMAGE_DIGEST: 'a manifest or blob did not match its digest',
  E_IMAGE_PLATFORM: 'the image has no manifest for the host platform',
  E_IMAGE_LAYER: 'a layer could not be unpacked (bad archive, unsafe entry, tool failure)',
  E_IMAGE_IN_USE: 'the image is used by a sandbox and cannot be removed',
  E_REGISTRY: 'the registry answered with an error or could not be reached',
  E_REGISTRY_AUTH: 'the registry refused the credentials (or needs some)',
  E_DISK_BUSY: 'the disk image is the root of another running sandbox',
  E_BOOT_FAILED: 'the VM did not come up',
  E_VM_CRASHED: 'the VM process ended unexpectedly',
  E_WORKER_CRASHED: 'the worker thread hosting the sandbox ended unexpectedly (its VM ended with it)',
  E_PROTOCOL: 'the guest sent something the host does not accept',
  E_AGENT: 'the guest agent reported an error',
  E_EXEC_START: 'the command could not be started in the guest',
  E_EXEC_NOT_FOUND: 'no running exec with that id',
  E_FS: 'a file operation in the guest failed (details.errno names the errno: ENOENT, EISDIR…; details.path the path)',
  E_NO_COMMAND: 'no command was given and the image has no entrypoint or cmd',
  E_TIMEOUT: 'the operation did not finish in time',
  E_ABORTED: 'the operation was aborted by its signal',
  E_CLOSED: 'the object was closed',
  E_QMP: 'qemu\'s QMP interface returned an error',
  E_STORE: 'the state store could not be read or written',
  E_SNAPSHOT_NOT_FOUND: 'no snapshot with that name',
  E_SNAPSHOT_EXISTS: 'a snapshot with that name already exists',
  E_SNAPSHOT: 'a snapshot could not be taken or restored',
  E_SNAPSHOT_CORRUPT: 'a snapshot archive does not match its manifest, or is not one',
  E_SNAPSHOT_INCOMPATIBLE: 'a snapshot needs a kernel, initramfs or image this host does not have as it was',
  E_VOLUME_NOT_FOUND: 'no named volume with that name',
  E_VOLUME_IN_USE: 'the named volume is mounted by a running sandbox and cannot be removed',
  E_UNAUTHORIZED: 'the API server needs a valid token (Authorization: Bearer …)',
  E_ROUTE_NOT_FOUND: 'the API server has no such route',
  E_USAGE: 'the command line is not valid (corral CLI)',
  E_NO_CAPACITY: 'the supervisor is at a limit it was given (maxSandboxes, memoryHeadroomMib), or no cluster node matching the placement has room: no new sandbox now',
  E_NODE_LOST: 'the cluster node that ran the sandbox stopped answering (its heartbeat stopped): the sandbox is stopped',
  E_SANDBOX_MOVED: 'the sandbox was moved to another cluster node (details.node): a handle follows it; a command that ran across the move runs on there, no longer followed',
  E_CLUSTER: 'the cluster (NATS) refused the connection or a request, or could not be reached',
} as const;

/** A stable error code. */
export type ErrorCode = keyof typeof ErrorCodes;

/**
 * Base class of every error corral throws on purpose.
 *
 * @example
 * try { await sb.exec('x'); } catch (e) { if (e instanceof CorralError && e.code === 'E_ILLEGAL_STATE') … }
 */
export class CorralError<C extends ErrorCode = ErrorCode> extends Error {
  override name = 'CorralError';
  constructor(readonly code: C, message: string, options?: ErrorOptions & { details?: Record<string, unknown> }) {
    super(message, options);
    if (options?.details) this.details = options.details;
  }
  /** Extra machine-readable facts (state name, option name, exit detail…). */
  details?: Record<string, unknown>;
}

/** Shorthand used across the code base. */
export function corralError<C extends ErrorCode>(code: C, message: string, options?: ErrorOptions & { details?: Record<string, unknown> }): CorralError<C> {
  return new CorralError(code, message, options);
}

/** A plain, structured-cloneable picture of an error. */
export interface SerializedError {
  readonly name: string;
  readonly message: string;
  readonly code?: string;
  readonly details?: Record<string, unknown>;
  readonly stack?: string;
  readonly cause?: SerializedError;
}

/** Flattens an error so it survives postMessage / JSON with its name, code and cause. */
export function serializeError(err: unknown, depth = 0): SerializedError {
  if (err instanceof Error) {
    const out: { -readonly [K in keyof SerializedError]: SerializedError[K] } = {
      name: err.name,
      message: err.message,
    };
    if (err.stack !== undefined) out.stack = err.stack;
    const code = (err as { code?: unknown }).code;
    if (typeof code === 'string') out.code = code;
    const details = (err as { details?: unknown }).details;
    if (details && typeof details === 'object') out.details = details as Record<string, unknown>;
    if (err.cause !== undefined && depth < 4) out.cause = serializeError(err.cause, depth + 1);
    return out;
  }
  return { name: 'Error', message: String(err) };
}

/** Rebuilds an error from {@link serializeError}'s output; corral codes come back as CorralError. */
export function deserializeError(s: SerializedError): Error {
  const cause = s.cause ? deserializeError(s.cause) : undefined;
  const opts = cause ? { cause } : undefined;
  let err: Error;
  if (s.code && s.code in ErrorCodes) {
    err = new CorralError(s.code as ErrorCode, s.message, { ...opts, ...(s.details ? { details: s.details } : {}) });
  } else if (s.name === 'TypeError') {
    err = new TypeError(s.message, opts);
  } else if (s.name === 'RangeError') {
    err = new RangeError(s.message, opts);
  } else {
    err = new Error(s.message, opts);
    err.name = s.name;
    if (s.code) (err as { code?: string }).code = s.code;
  }
  if (s.stack) err.stack = s.stack;
  return err;
}

/** An option error: a TypeError/RangeError whose message names the option and what is allowed. */
export class InvalidOptionError extends CorralError<'E_INVALID_OPTION'> {
  override name = 'InvalidOptionError';
  constructor(readonly option: string, allowed: string, got: unknown) {
    super('E_INVALID_OPTION', `invalid option ${option}: ${allowed} (got ${describe(got)})`, { details: { option, allowed } });
  }
}

function describe(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v.length > 80 ? `${v.slice(0, 77)}...` : v);
  if (typeof v === 'number' || typeof v === 'boolean' || v === null || v === undefined) return String(v);
  try {
    return JSON.stringify(v)?.slice(0, 80) ?? typeof v;
  } catch {
    return typeof v;
  }
}
