/**
 * Image references: what `.image(…)` accepts, parsed and normalised the way Docker does.
 *
 * - `python:3.12` → registry `docker.io`, repository `library/python`, tag `3.12`
 * - `127.0.0.1:5000/team/app@sha256:…` → that registry, repository, digest
 * - `corral/base` (a local image built by setup) is recognised by the caller, not here.
 * - Disk images (`./alpine.raw`, `/images/u.qcow2`) are recognised by {@link isDiskImagePath}.
 */

import { InvalidOptionError } from '../errors.ts';

/** A parsed OCI image reference. */
export interface ImageReference {
  /** Registry host[:port] as written (`docker.io` for Docker Hub). */
  readonly registry: string;
  /** Repository path, e.g. `library/python`. */
  readonly repository: string;
  /** Tag, if any (`latest` when neither tag nor digest is given). */
  readonly tag: string | undefined;
  /** `sha256:<hex>` if the reference pins a digest. */
  readonly digest: string | undefined;
  /** The full normalised form: `registry/repository[:tag][@digest]`. */
  readonly canonical: string;
  /** `registry/repository`. */
  readonly name: string;
}

export const DOCKER_HUB = 'docker.io';
/** The host that serves Docker Hub's registry API. */
export const DOCKER_HUB_API = 'registry-1.docker.io';

const DIGEST_RE = /^sha256:[a-f0-9]{64}$/;
const TAG_RE = /^[\w][\w.-]{0,127}$/;
const COMPONENT_RE = /^[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*$/;
const DISK_EXT_RE = /\.(qcow2|raw|img|vmdk)$/i;

/** True for values that name a disk image file rather than an OCI reference. */
export function isDiskImagePath(value: string): boolean {
  return value.startsWith('/') || value.startsWith('./') || value.startsWith('../') || DISK_EXT_RE.test(value);
}

/** True if `digest` is a well-formed `sha256:<64 hex>`. */
export function isDigest(digest: unknown): digest is string {
  return typeof digest === 'string' && DIGEST_RE.test(digest);
}

/**
 * Parses an OCI reference. Throws an InvalidOptionError naming `option` when malformed.
 *
 * @example
 * parseReference('python:3.12').canonical // 'docker.io/library/python:3.12'
 */
export function parseReference(ref: string, option = 'image'): ImageReference {
  const bad = (why: string): never => {
    throw new InvalidOptionError(option, `an image reference [registry/]repository[:tag][@sha256:…] (${why})`, ref);
  };
  if (typeof ref !== 'string' || ref.length === 0 || ref.length > 1024 || /[\s\0]/.test(ref)) bad('empty or has spaces');
  let rest = ref;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!isDigest(digest)) bad('the digest must be sha256:<64 lowercase hex digits>');
  }
  let tag: string | undefined;
  const lastSlash = rest.lastIndexOf('/');
  const colon = rest.lastIndexOf(':');
  if (colon > lastSlash) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG_RE.test(tag)) bad(`bad tag "${tag}"`);
  }
  let registry = DOCKER_HUB;
  let repository = rest;
  const slash = rest.indexOf('/');
  if (slash >= 0) {
    const first = rest.slice(0, slash);
    // Docker's rule: the first component is a registry if it has a "." or ":" or is localhost.
    if (first.includes('.') || first.includes(':') || first === 'localhost') {
      registry = first;
      repository = rest.slice(slash + 1);
    }
  }
  if (registry === 'index.docker.io' || registry === DOCKER_HUB_API) registry = DOCKER_HUB;
  if (registry === DOCKER_HUB && !repository.includes('/')) repository = `library/${repository}`;
  if (!/^[A-Za-z0-9.-]+(:[0-9]{1,5})?$/.test(registry) && !/^\[[0-9a-fA-F:]+\](:[0-9]{1,5})?$/.test(registry)) bad(`bad registry "${registry}"`);
  if (repository.length === 0 || repository.length > 255 || !repository.split('/').every((c) => COMPONENT_RE.test(c))) {
    bad(`bad repository "${repository}": lowercase components separated by "/"`);
  }
  if (tag === undefined && digest === undefined) tag = 'latest';
  const name = `${registry}/${repository}`;
  const canonical = `${name}${tag !== undefined ? `:${tag}` : ''}${digest !== undefined ? `@${digest}` : ''}`;
  return { registry, repository, tag, digest, canonical, name };
}

/** The host the registry API is served from (Docker Hub's differs from its name). */
export function registryApiHost(registry: string): string {
  return registry === DOCKER_HUB ? DOCKER_HUB_API : registry;
}

/** True for registries on the loopback interface (plain http allowed without opting in). */
export function isLoopbackRegistry(registry: string): boolean {
  const host = registry.startsWith('[') ? registry.slice(1, registry.indexOf(']')) : registry.replace(/:[0-9]+$/, '');
  return host === 'localhost' || host === '::1' || /^127(\.[0-9]{1,3}){3}$/.test(host);
}
