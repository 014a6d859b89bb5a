/**
 * A client of the distribution API v2 for one registry: manifests and blobs, with anonymous,
 * Basic and Bearer-token authentication. Plain http only for loopback registries and those
 * the config lists in `insecureRegistries`.
 *
 * Credentials stay inside this object: error messages name the registry and the status,
 * never a header.
 */

import { CorralError } from '../errors.ts';
import { basicHeader, parseChallenge, type Challenge, type Credentials } from './auth.ts';
import { checkDigest, sha256Digest } from './digest.ts';
import { MANIFEST_ACCEPT } from './manifest.ts';
import { isDigest, isLoopbackRegistry, registryApiHost } from './reference.ts';

/** Options of a {@link RegistryClient}. */
export interface RegistryClientOptions {
  /** Credentials, or a function resolving them when a registry first asks (lazy: an unset
   * passwordEnv only fails a pull that needs it). */
  readonly credentials?: Credentials | (() => Credentials | undefined) | undefined;
  /** Registries (host[:port]) that may be spoken to over plain http. Loopback always may. */
  readonly insecureRegistries?: readonly string[] | undefined;
  readonly signal?: AbortSignal | undefined;
  /** Budget of one manifest/token request. Default 30 000 ms. */
  readonly requestTimeoutMs?: number | undefined;
}

/** A fetched, digest-checked manifest. */
export interface FetchedManifest {
  readonly bytes: Buffer;
  readonly contentType: string | null;
  readonly digest: string;
}

const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;

/**
 * @example
 * const c = new RegistryClient('127.0.0.1:5000', { credentials });
 * const m = await c.manifest('library/python', '3.12');
 */
export class RegistryClient {
  readonly registry: string;
  readonly #base: string;
  readonly #opts: RegistryClientOptions;
  /** Authorization header per scope, once a challenge was answered. */
  readonly #auth = new Map<string, string>();
  #basicOk = false;

  constructor(registry: string, options: RegistryClientOptions = {}) {
    this.registry = registry;
    this.#opts = options;
    this.#base = `${this.#schemeFor(registry)}://${registryApiHost(registry)}`;
  }

  /** Fetches a manifest or index by tag or digest and checks its digest. */
  async manifest(repository: string, reference: string): Promise<FetchedManifest> {
    const res = await this.#request(`/v2/${repository}/manifests/${reference}`, repository, { headers: { accept: MANIFEST_ACCEPT } }, true);
    const len = Number(res.headers.get('content-length') ?? 0);
    if (len > MAX_MANIFEST_BYTES) {
      await res.body?.cancel();
      throw new CorralError('E_REGISTRY', `registry ${this.registry}: manifest ${repository}:${reference} is larger than ${MAX_MANIFEST_BYTES} bytes`);
    }
    const bytes = Buffer.from(await res.arrayBuffer());
    if (bytes.length > MAX_MANIFEST_BYTES) throw new CorralError('E_REGISTRY', `registry ${this.registry}: manifest too large`);
    const digest = sha256Digest(bytes);
    if (isDigest(reference)) checkDigest(`manifest ${repository}@${reference}`, reference, digest);
    const announced = res.headers.get('docker-content-digest');
    if (announced && announced.startsWith('sha256:')) checkDigest(`manifest ${repository}:${reference} (Docker-Content-Digest)`, announced, digest);
    return { bytes, contentType: res.headers.get('content-type'), digest };
  }

  /** Starts a blob download; the caller streams `body` and checks the digest. */
  async blob(repository: string, digest: string, signal?: AbortSignal): Promise<Response> {
    const res = await this.#request(`/v2/${repository}/blobs/${digest}`, repository, {}, false, signal);
    if (!res.body) throw new CorralError('E_REGISTRY', `registry ${this.registry}: blob ${digest} has no body`);
    return res;
  }

  #schemeFor(registry: string): 'http' | 'https' {
    if (isLoopbackRegistry(registry) || this.#opts.insecureRegistries?.includes(registry)) return 'http';
    return 'https';
  }

  #signal(timeout: boolean, extra?: AbortSignal): AbortSignal | undefined {
    const signals: AbortSignal[] = [];
    if (this.#opts.signal) signals.push(this.#opts.signal);
    if (extra) signals.push(extra);
    if (timeout) signals.push(AbortSignal.timeout(this.#opts.requestTimeoutMs ?? 30_000));
    return signals.length === 0 ? undefined : signals.length === 1 ? signals[0] : AbortSignal.any(signals);
  }

  async #fetch(url: string, init: RequestInit, timeout: boolean, extra?: AbortSignal): Promise<Response> {
    try {
      return await fetch(url, { ...init, redirect: 'follow', signal: this.#signal(timeout, extra) ?? null });
    } catch (err) {
      if (this.#opts.signal?.aborted || extra?.aborted) throw new CorralError('E_ABORTED', `request to registry ${this.registry} aborted`, { cause: err });
      const e = err as Error & { cause?: { code?: string; message?: string } };
      const why = e.name === 'TimeoutError' ? 'timed out' : (e.cause?.code ?? e.cause?.message ?? e.message);
      // A registry that speaks plain http answers a TLS hello with garbage.
      const tls = url.startsWith('https:') && /SSL|TLS|EPROTO/i.test(`${e.cause?.code ?? ''} ${e.cause?.message ?? ''}`);
      const hint = tls ? ` (corral speaks plain http only to loopback registries and those listed in insecureRegistries)` : '';
      throw new CorralError('E_REGISTRY', `cannot reach registry ${this.registry} (${new URL(url).origin}): ${why}${hint}`, { cause: err });
    }
  }

  async #request(path: string, repository: string, init: RequestInit, timeout: boolean, signal?: AbortSignal): Promise<Response> {
    const scope = `repository:${repository}:pull`;
    const what = `${repository} (${path.split('/').slice(-2).join(' ')})`;
    for (let attempt = 0; ; attempt++) {
      const headers = new Headers(init.headers);
      const auth = this.#auth.get(scope) ?? this.#auth.get('*');
      if (auth) headers.set('authorization', auth);
      const res = await this.#fetch(`${this.#base}${path}`, { ...init, headers }, timeout, signal);
      if (res.ok) return res;
      await res.body?.cancel().catch(() => {});
      if (res.status === 401 && attempt === 0) {
        await this.#answer(parseChallenge(res.headers.get('www-authenticate')), scope);
        continue;
      }
      if (res.status === 401) {
        throw new CorralError('E_REGISTRY_AUTH', `authentication to registry ${this.registry} failed: ${this.#auth.size > 0 ? 'the credentials were refused' : 'it needs credentials (registryAuth)'}`, {
          details: { registry: this.registry, status: 401 },
        });
      }
      if (res.status === 403) {
        throw new CorralError('E_REGISTRY_AUTH', `registry ${this.registry} denied access to ${repository}`, { details: { registry: this.registry, status: 403 } });
      }
      if (res.status === 404) {
        throw new CorralError('E_IMAGE_NOT_FOUND', `registry ${this.registry} has no ${what}`, { details: { registry: this.registry, status: 404 } });
      }
      throw new CorralError('E_REGISTRY', `registry ${this.registry} answered ${res.status} ${res.statusText} for ${what}`, { details: { registry: this.registry, status: res.status } });
    }
  }

  /** Answers a 401 challenge: Basic with the credentials, or a Bearer token from the realm. */
  async #answer(ch: Challenge | undefined, scope: string): Promise<void> {
    const c = this.#opts.credentials;
    const creds = typeof c === 'function' ? c() : c;
    if (!ch) throw new CorralError('E_REGISTRY_AUTH', `registry ${this.registry} answered 401 without a WWW-Authenticate challenge`);
    if (ch.scheme === 'basic') {
      if (!creds) throw new CorralError('E_REGISTRY_AUTH', `authentication to registry ${this.registry} failed: it needs credentials (registryAuth)`, { details: { registry: this.registry } });
      if (this.#basicOk) throw new CorralError('E_REGISTRY_AUTH', `authentication to registry ${this.registry} failed: the credentials were refused`);
      this.#basicOk = true;
      this.#auth.set('*', basicHeader(creds));
      return;
    }
    if (ch.scheme !== 'bearer') throw new CorralError('E_REGISTRY_AUTH', `registry ${this.registry} asks for unsupported auth scheme ${ch.scheme}`);
    const realm = ch.params.realm;
    if (!realm) throw new CorralError('E_REGISTRY_AUTH', `registry ${this.registry}: Bearer challenge without a realm`);
    let url: URL;
    try {
      url = new URL(realm);
    } catch (err) {
      throw new CorralError('E_REGISTRY_AUTH', `registry ${this.registry}: bad token realm`, { cause: err });
    }
    if (url.protocol !== 'https:' && !(url.protocol === 'http:' && (isLoopbackRegistry(url.host) || this.#opts.insecureRegistries?.includes(url.host)))) {
      throw new CorralError('E_REGISTRY_AUTH', `registry ${this.registry}: token realm ${url.origin} is not https (allow it with insecureRegistries)`);
    }
    if (ch.params.service) url.searchParams.set('service', ch.params.service);
    url.searchParams.set('scope', ch.params.scope ?? scope);
    const headers = new Headers({ accept: 'application/json' });
    if (creds) headers.set('authorization', basicHeader(creds));
    const res = await this.#fetch(url.toString(), { headers }, true);
    if (res.status === 401 || res.status === 403) {
      await res.body?.cancel().catch(() => {});
      throw new CorralError('E_REGISTRY_AUTH', `authentication to registry ${this.registry} failed: the token service refused ${creds ? 'the credentials' : 'anonymous access'}`, {
        details: { registry: this.registry, status: res.status },
      });
    }
    if (!res.ok) {
      await res.body?.cancel().catch(() => {});
      throw new CorralError('E_REGISTRY_AUTH', `registry ${this.registry}: token service answered ${res.status}`, { details: { registry: this.registry, status: res.status } });
    }
    const body = (await res.json().catch(() => ({}))) as { token?: unknown; access_token?: unknown };
    const token = typeof body.token === 'string' ? body.token : typeof body.access_token === 'string' ? body.access_token : undefined;
    if (!token) throw new CorralError('E_REGISTRY_AUTH', `registry ${this.registry}: the token service returned no token`);
    this.#auth.set(scope, `Bearer ${token}`);
  }
}
