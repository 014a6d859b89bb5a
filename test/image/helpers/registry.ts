/**
 * Test fixtures for the image tests: Debian's docker-registry (CNCF distribution 2.8) on a
 * free loopback port with a generated config (never the packaged one: it listens on all
 * interfaces), optional htpasswd Basic auth or Bearer tokens from a ~50-line token server,
 * and a small push client (the registry's upload API) for the OCI layouts built by
 * scripts/test-images.sh. Everything is stopped and removed by `close()`.
 */

import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createHash, createSign, randomBytes, X509Certificate } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo, type Server } from 'node:net';
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';

const ROOT = new URL('../../../', import.meta.url).pathname;

/** What scripts/test-images.sh built. Builds it (cached) if missing. */
export interface TestImages {
  readonly dir: string;
  readonly disks: { readonly raw: string; readonly qcow2: string; readonly vmdk: string };
}

export function testImages(): TestImages {
  const cache = process.env.CORRAL_CACHE_DIR || join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'corral');
  const manifest = join(cache, 'test-images.json');
  if (!existsSync(manifest)) execFileSync('bash', [join(ROOT, 'scripts/test-images.sh')], { stdio: ['ignore', 'inherit', 'inherit'] });
  return JSON.parse(readFileSync(manifest, 'utf8')) as TestImages;
}

async function freePort(): Promise<number> {
  const s: Server = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

export type RegistryAuthMode = 'none' | 'basic' | 'token';

export interface TestRegistry {
  /** host:port, e.g. 127.0.0.1:41234 */
  readonly host: string;
  readonly storageDir: string;
  readonly user: string;
  readonly password: string;
  /** Pushes an OCI layout (scripts/test-images.sh) as repo:tag; returns the top manifest digest. */
  push(layout: string, repo: string, tag: string): Promise<string>;
  /** Requests the token server answered (token mode). */
  readonly tokenRequests: number;
  close(): Promise<void>;
}

/** Starts a registry. `auth`: none, basic (htpasswd) or token (Bearer). */
export async function startRegistry(auth: RegistryAuthMode = 'none'): Promise<TestRegistry> {
  const dir = mkdtempSync(join(tmpdir(), 'corral-test-registry-'));
  const port = await freePort();
  const user = 'tester';
  const password = randomBytes(9).toString('base64url');
  let authYaml = '';
  let tokenServer: HttpServer | undefined;
  let tokenRequests = 0;
  let signToken: ((scope: string) => string) | undefined;
  if (auth === 'basic') {
    execFileSync('htpasswd', ['-Bbc', join(dir, 'htpasswd'), user, password], { stdio: 'ignore' });
    authYaml = `auth:\n  htpasswd:\n    realm: corral-test\n    path: ${join(dir, 'htpasswd')}\n`;
  } else if (auth === 'token') {
    execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem'), '-days', '1', '-subj', '/CN=corral-test-token'], { stdio: 'ignore' });
    const key = readFileSync(join(dir, 'key.pem'));
    const certDer = new X509Certificate(readFileSync(join(dir, 'cert.pem'))).raw.toString('base64');
    const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url');
    signToken = (scope: string) => {
      const now = Math.floor(Date.now() / 1000);
      const access = scope
        .split(' ')
        .filter(Boolean)
        .map((s) => {
          const [type, ...rest] = s.split(':');
          const actions = rest.pop()!.split(',');
          return { type, name: rest.join(':'), actions };
        });
      const head = b64({ alg: 'RS256', typ: 'JWT', x5c: [certDer] });
      const body = b64({ iss: 'corral-test', sub: user, aud: 'corral-test', exp: now + 300, nbf: now - 10, iat: now, jti: randomBytes(8).toString('hex'), access });
      const sig = createSign('RSA-SHA256').update(`${head}.${body}`).sign(key).toString('base64url');
      return `${head}.${body}.${sig}`;
    };
    const expected = `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
    tokenServer = createHttpServer((req, res) => {
      tokenRequests++;
      const url = new URL(req.url ?? '/', 'http://x');
      if (url.pathname !== '/token' || req.headers.authorization !== expected) {
        res.writeHead(401, { 'content-type': 'application/json' }).end('{"errors":[{"code":"UNAUTHORIZED"}]}');
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ token: signToken!(url.searchParams.get('scope') ?? ''), expires_in: 300 }));
    });
    await new Promise<void>((r) => tokenServer!.listen(0, '127.0.0.1', r));
    const tport = (tokenServer.address() as AddressInfo).port;
    authYaml = `auth:\n  token:\n    realm: http://127.0.0.1:${tport}/token\n    service: corral-test\n    issuer: corral-test\n    rootcertbundle: ${join(dir, 'cert.pem')}\n`;
  }
  const storageDir = join(dir, 'storage');
  writeFileSync(
    join(dir, 'config.yml'),
    `version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: ${storageDir}\n  delete:\n    enabled: true\n  cache:\n    blobdescriptor: inmemory\nhttp:\n  addr: 127.0.0.1:${port}\n  secret: ${randomBytes(16).toString('hex')}\n${authYaml}`,
  );
  const child: ChildProcess = spawn('/usr/bin/docker-registry', ['serve', join(dir, 'config.yml')], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-4000)));
  const host = `127.0.0.1:${port}`;
  const t0 = Date.now();
  for (;;) {
    if (child.exitCode !== null) throw new Error(`docker-registry exited ${child.exitCode}: ${stderr}`);
    try {
      const r = await fetch(`http://${host}/v2/`);
      await r.body?.cancel();
      if (r.status === 200 || r.status === 401) break;
    } catch {
      /* not up yet */
    }
    if (Date.now() - t0 > 10_000) throw new Error(`docker-registry did not answer within 10 s: ${stderr}`);
    await new Promise((r) => setTimeout(r, 20));
  }

  const authFor = async (repo: string): Promise<string | undefined> => {
    if (auth === 'basic') return `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
    if (auth === 'token') return `Bearer ${signToken!(`repository:${repo}:pull,push`)}`;
    return undefined;
  };

  const push = async (layout: string, repo: string, tag: string): Promise<string> => {
    const authz = await authFor(repo);
    const headers = (extra: Record<string, string> = {}) => ({ ...(authz ? { authorization: authz } : {}), ...extra });
    const blobPath = (d: string) => join(layout, 'blobs', 'sha256', d.slice(7));
    const pushBlob = async (digest: string) => {
      const head = await fetch(`http://${host}/v2/${repo}/blobs/${digest}`, { method: 'HEAD', headers: headers() });
      if (head.status === 200) return;
      const start = await fetch(`http://${host}/v2/${repo}/blobs/uploads/`, { method: 'POST', headers: headers() });
      await start.body?.cancel();
      if (start.status !== 202) throw new Error(`upload start ${start.status}`);
      const loc = new URL(start.headers.get('location')!, `http://${host}`);
      loc.searchParams.set('digest', digest);
      const put = await fetch(loc, { method: 'PUT', headers: headers({ 'content-type': 'application/octet-stream' }), body: readFileSync(blobPath(digest)) });
      await put.body?.cancel();
      if (put.status !== 201) throw new Error(`blob put ${put.status}`);
    };
    const pushManifest = async (desc: { mediaType: string; digest: string }, reference: string) => {
      const doc = JSON.parse(readFileSync(blobPath(desc.digest), 'utf8')) as { manifests?: { mediaType: string; digest: string }[]; config?: { digest: string }; layers?: { digest: string }[] };
      if (doc.manifests) for (const m of doc.manifests) await pushManifest(m, m.digest);
      else for (const b of [doc.config!, ...doc.layers!]) await pushBlob(b.digest);
      const put = await fetch(`http://${host}/v2/${repo}/manifests/${reference}`, { method: 'PUT', headers: headers({ 'content-type': desc.mediaType }), body: readFileSync(blobPath(desc.digest)) });
      const text = await put.text();
      if (put.status !== 201) throw new Error(`manifest put ${put.status}: ${text}`);
    };
    const index = JSON.parse(readFileSync(join(layout, 'index.json'), 'utf8')) as { manifests: { mediaType: string; digest: string }[] };
    const top = index.manifests[0]!;
    await pushManifest(top, tag);
    return top.digest;
  };

  return {
    host,
    storageDir,
    user,
    password,
    push,
    get tokenRequests() {
      return tokenRequests;
    },
    async close() {
      if (child.exitCode === null) {
        child.kill('SIGTERM');
        await new Promise((r) => child.once('exit', r));
      }
      if (tokenServer) await new Promise((r) => tokenServer!.close(r));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** The registry's file for a blob (to corrupt it). */
export function registryBlobPath(storageDir: string, digest: string): string {
  const hex = digest.slice(7);
  return join(storageDir, 'docker/registry/v2/blobs/sha256', hex.slice(0, 2), hex, 'data');
}

/** sha256 of a file. */
export function fileDigest(path: string): string {
  return `sha256:${createHash('sha256').update(readFileSync(path)).digest('hex')}`;
}

/** Options of {@link deriveLayout}. */
export interface DeriveOptions {
  /** Docker v2 media types (manifest, config, gzip layers) instead of OCI ones. */
  readonly docker?: boolean;
  /** Wrap the manifest in a Docker manifest list (`docker`) or an OCI index for linux/amd64. */
  readonly list?: boolean;
}

const DOCKER = {
  manifest: 'application/vnd.docker.distribution.manifest.v2+json',
  list: 'application/vnd.docker.distribution.manifest.list.v2+json',
  config: 'application/vnd.docker.container.image.v1+json',
  layer: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
};

/**
 * A copy of a single-image OCI layout (scripts/test-images.sh) with its config changed by
 * `edit` (e.g. an Entrypoint, or a wrong diff_id), written to `dest`: new config, manifest and
 * index; the layer blobs are the source's (symlinked). Built at test time in milliseconds,
 * so variants need no new image in the cached test-image build.
 */
export function deriveLayout(src: string, dest: string, edit: (config: Record<string, any>) => void, options: DeriveOptions = {}): string {
  const blobs = join(dest, 'blobs', 'sha256');
  mkdirSync(blobs, { recursive: true });
  const read = (d: string) => readFileSync(join(src, 'blobs', 'sha256', d.slice(7)));
  const put = (bytes: Buffer) => {
    const hex = createHash('sha256').update(bytes).digest('hex');
    writeFileSync(join(blobs, hex), bytes);
    return { digest: `sha256:${hex}`, size: bytes.length };
  };
  const index = JSON.parse(readFileSync(join(src, 'index.json'), 'utf8')) as { manifests: { digest: string; mediaType: string }[] };
  const manifest = JSON.parse(read(index.manifests[0]!.digest).toString('utf8')) as {
    mediaType: string;
    config: { mediaType: string; digest: string; size: number };
    layers: { mediaType: string; digest: string }[];
  };
  if (!manifest.layers) throw new Error(`${src} is not a single-image layout`);
  for (const l of manifest.layers) {
    const to = join(blobs, l.digest.slice(7));
    if (!existsSync(to)) symlinkSync(join(src, 'blobs', 'sha256', l.digest.slice(7)), to);
    if (options.docker) {
      if (!l.mediaType.endsWith('+gzip')) throw new Error(`Docker v2 layers here are gzip only (${l.mediaType})`);
      l.mediaType = DOCKER.layer;
    }
  }
  const config = JSON.parse(read(manifest.config.digest).toString('utf8')) as Record<string, any>;
  edit(config);
  manifest.config = { ...manifest.config, ...(options.docker ? { mediaType: DOCKER.config } : {}), ...put(Buffer.from(JSON.stringify(config))) };
  if (options.docker) manifest.mediaType = DOCKER.manifest;
  let top = { mediaType: manifest.mediaType, ...put(Buffer.from(JSON.stringify(manifest))) };
  if (options.list) {
    const mediaType = options.docker ? DOCKER.list : 'application/vnd.oci.image.index.v1+json';
    const list = { schemaVersion: 2, mediaType, manifests: [{ ...top, platform: { architecture: 'amd64', os: 'linux' } }] };
    top = { mediaType, ...put(Buffer.from(JSON.stringify(list))) };
  }
  writeFileSync(join(dest, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  writeFileSync(join(dest, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [top] }));
  return dest;
}
