/**
 * Pulls against a real registry (Debian's docker-registry on loopback, with htpasswd Basic
 * auth or Bearer tokens from the helpers' token server), real LMDB and the real image pool.
 * No VM here: what the guest sees of these layers is in vm.test.ts.
 */

import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { lookup } from 'node:dns/promises';
import { createServer as createHttpServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { hostname, tmpdir } from 'node:os';
import { PassThrough } from 'node:stream';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ImagePullEventBody } from '../../src/bus/events.ts';
import { CorralError } from '../../src/errors.ts';
import { Image } from '../../src/image/Image.ts';
import { ImageIndex } from '../../src/image/ImageIndex.ts';
import { resolveImage } from '../../src/image/pull.ts';
import { pullProgress } from '../../src/cli/pullProgress.ts';
import { deriveLayout, registryBlobPath, startRegistry, testImages, type TestRegistry } from './helpers/registry.ts';

const images = testImages();
const layout = (n: string) => join(images.dir, n);
let open: TestRegistry;
let basic: TestRegistry;
let token: TestRegistry;
const dirs: string[] = [];

function stateDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'corral-test-images-'));
  dirs.push(d);
  return d;
}

async function rejection(p: Promise<unknown>): Promise<CorralError> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(CorralError);
    return err as CorralError;
  }
  throw new Error('expected a rejection');
}

beforeAll(async () => {
  [open, basic, token] = await Promise.all([startRegistry('none'), startRegistry('basic'), startRegistry('token')]);
  await Promise.all([
    open.push(layout('busybox'), 'test/busybox', 'v1'),
    open.push(layout('multilayer'), 'test/multilayer', 'v1'),
    open.push(layout('multiarch'), 'test/multiarch', 'v1'),
    basic.push(layout('busybox'), 'test/busybox', 'v1'),
    token.push(layout('busybox'), 'test/busybox', 'v1'),
  ]);
});

afterAll(async () => {
  await Promise.all([open?.close(), basic?.close(), token?.close()]);
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe('pulling', () => {
  it('pulls a multi-layer image (gzip + zstd), verifies it, reports progress and caches layer images', async () => {
    const sd = stateDir();
    const events: ImagePullEventBody[] = [];
    const img = await resolveImage(`${open.host}/test/multilayer:v1`, { stateDir: sd, onEvent: (e) => events.push(e) });
    expect(img.layers).toHaveLength(2);
    for (const l of img.layers) expect(existsSync(l.path)).toBe(true);
    expect(img.defaults.env.IMAGE_VAR).toBe('from-image');
    expect(img.defaults.workdir).toBe('/data');
    const types = events.map((e) => e.type);
    expect(types[0]).toBe('image.pull.started');
    expect(types.at(-1)).toBe('image.pull.done');
    const progress = events.filter((e): e is Extract<ImagePullEventBody, { type: 'image.pull.progress' }> => e.type === 'image.pull.progress');
    expect(progress.filter((p) => p.phase === 'done')).toHaveLength(2);
    for (const p of progress) expect(p.bytesDone).toBeLessThanOrEqual(p.bytesTotal);
    // Nothing left behind in the scratch dir.
    expect(readdirSync(join(sd, 'images', 'tmp'))).toEqual([]);
    const listed = await Image.list({ stateDir: sd });
    expect(listed.map((i) => i.tags)).toEqual([[`${open.host}/test/multilayer:v1`]]);
  });

  it('pulls Docker v2 manifests and manifest lists', async () => {
    const sd = stateDir();
    const keep = () => {};
    const manifest = await open.push(deriveLayout(layout('busybox'), join(sd, 'docker'), keep, { docker: true }), 'test/docker', 'v1');
    const list = await open.push(deriveLayout(layout('busybox'), join(sd, 'docker-list'), keep, { docker: true, list: true }), 'test/docker-list', 'v1');
    const one = await resolveImage(`${open.host}/test/docker:v1`, { stateDir: sd });
    expect(one.digest).toBe(manifest);
    expect(one.layers).toHaveLength(1);
    // the list resolves to its linux/amd64 entry, that same manifest
    const listed = await resolveImage(`${open.host}/test/docker-list:v1`, { stateDir: sd });
    expect(list).not.toBe(manifest);
    expect(listed.digest).toBe(manifest);
    expect(listed.defaults.cmd).toEqual(['/bin/sh']);
  });

  it('draws a progress bar from the pull events (corral pull, the demo)', async () => {
    const out = new PassThrough();
    let text = '';
    out.setEncoding('utf8').on('data', (d: string) => (text += d));
    await resolveImage(`${open.host}/test/busybox:v1`, { stateDir: stateDir(), onEvent: pullProgress(out as unknown as NodeJS.WriteStream) });
    // not a terminal: the forced lines only (start, each layer done), then the summary
    const lines = text.trim().split('\n');
    expect(lines[0]).toMatch(new RegExp(`^pulling ${open.host}/test/busybox:v1 \\(1 layers, 0 cached, [\\d.]+ MiB\\)$`));
    expect(lines).toContainEqual(expect.stringMatching(/^\[#{30}\] 100% [\d.]+ MiB \/ [\d.]+ MiB {2}layers 1\/1$/));
    expect(lines.at(-1)).toMatch(new RegExp(`^pulled ${open.host}/test/busybox:v1@sha256:[0-9a-f]{64} \\(1 layers`));
  });

  it('deduplicates concurrent pulls of the same image', async () => {
    const sd = stateDir();
    let started = 0;
    const onEvent = (e: ImagePullEventBody) => void (e.type === 'image.pull.started' && started++);
    const [a, b] = await Promise.all([
      resolveImage(`${open.host}/test/busybox:v1`, { stateDir: sd, onEvent }),
      resolveImage(`${open.host}/test/busybox:v1`, { stateDir: sd, onEvent }),
    ]);
    expect(a.digest).toBe(b.digest);
    expect(started).toBe(1);
  });

  it('follows each pull policy', async () => {
    const sd = stateDir();
    const ref = `${open.host}/test/busybox:v1`;
    const never = await rejection(resolveImage(ref, { stateDir: sd, policy: 'never' }));
    expect(never.code).toBe('E_IMAGE_NOT_CACHED');
    expect(never.message).toMatch(/not in the local cache.*"never"/);
    const first = await resolveImage(ref, { stateDir: sd, policy: 'if-missing' });
    expect(first.pulled).toBe(true);
    expect((await resolveImage(ref, { stateDir: sd, policy: 'if-missing' })).pulled).toBe(false);
    expect((await resolveImage(ref, { stateDir: sd, policy: 'never' })).digest).toBe(first.digest);
    // always: asks the registry again (layers already cached are not downloaded again)
    const events: ImagePullEventBody[] = [];
    const again = await resolveImage(ref, { stateDir: sd, policy: 'always', onEvent: (e) => events.push(e) });
    expect(again.pulled).toBe(true);
    expect(events[0]).toMatchObject({ type: 'image.pull.started', cachedLayers: 1, bytesTotal: 0 });
  });

  it('re-resolves a moved tag only when asked to, and keeps a pinned digest', async () => {
    const sd = stateDir();
    const ref = `${open.host}/test/moving:v1`;
    const d1 = await open.push(layout('busybox'), 'test/moving', 'v1');
    expect((await resolveImage(ref, { stateDir: sd })).digest).toBe(d1);
    const d2 = await open.push(layout('multilayer'), 'test/moving', 'v1');
    expect((await resolveImage(ref, { stateDir: sd })).digest).toBe(d1); // if-missing: cached tag
    expect((await resolveImage(ref, { stateDir: sd, policy: 'always', pinnedDigest: d1 })).digest).toBe(d1);
    expect((await resolveImage(ref, { stateDir: sd, policy: 'always' })).digest).toBe(d2);
  });

  it('selects the host platform from a multi-platform index, and says when none matches', async () => {
    const sd = stateDir();
    const img = await resolveImage(`${open.host}/test/multiarch:v1`, { stateDir: sd });
    expect((await Image.inspect(`${open.host}/test/multiarch:v1`, { stateDir: sd })).platform).toBe('linux/amd64');
    expect(img.layers).toHaveLength(1);
    const err = await rejection(resolveImage(`${open.host}/test/multiarch:v1`, { stateDir: sd, policy: 'always', platform: { os: 'linux', architecture: 's390x' } }));
    expect(err.code).toBe('E_IMAGE_PLATFORM');
    expect(err.message).toContain('linux/s390x');
    expect(err.message).toContain('linux/amd64, linux/arm64');
  });

  it('rejects a corrupted blob and leaves nothing half-written', async () => {
    const sd = stateDir();
    const d = await open.push(layout('busybox'), 'test/corrupt', 'v1');
    const idx = JSON.parse(readFileSync(join(layout('busybox'), 'blobs/sha256', d.slice(7)), 'utf8')) as { layers: { digest: string }[] };
    const blob = registryBlobPath(open.storageDir, idx.layers[0]!.digest);
    const good = readFileSync(blob);
    const bad = Buffer.from(good);
    const mid = bad.length >> 1;
    bad[mid] = bad[mid]! ^ 0xff;
    writeFileSync(blob, bad);
    try {
      const err = await rejection(resolveImage(`${open.host}/test/corrupt:v1`, { stateDir: sd }));
      expect(err.code).toBe('E_IMAGE_DIGEST');
      expect(err.message).toContain(idx.layers[0]!.digest);
      expect(readdirSync(join(sd, 'images', 'layers'))).toEqual([]);
      expect(readdirSync(join(sd, 'images', 'tmp'))).toEqual([]);
      expect(await Image.list({ stateDir: sd })).toEqual([]);
    } finally {
      writeFileSync(blob, good);
    }
  });
  it('rejects a large blob corrupted in its middle (the archive breaks while it still streams) with E_IMAGE_DIGEST', async () => {
    const sd = stateDir();
    const d = await open.push(layout('python'), 'test/corrupt-big', 'v1');
    const digest = (JSON.parse(readFileSync(join(layout('python'), 'blobs/sha256', d.slice(7)), 'utf8')) as { layers: { digest: string }[] }).layers[0]!.digest;
    const blob = registryBlobPath(open.storageDir, digest);
    const good = readFileSync(blob);
    const bad = Buffer.from(good);
    // Far more than is buffered between the registry and the unpack: the rest is still on its way.
    for (let i = 0; i < 64; i++) bad[(bad.length >> 2) + i] = bad[(bad.length >> 2) + i]! ^ 0xa5;
    writeFileSync(blob, bad);
    try {
      const err = await rejection(resolveImage(`${open.host}/test/corrupt-big:v1`, { stateDir: sd }));
      expect(err.code).toBe('E_IMAGE_DIGEST');
      expect(err.message).toContain(digest);
      expect(readdirSync(join(sd, 'images', 'layers'))).toEqual([]);
      expect(readdirSync(join(sd, 'images', 'tmp'))).toEqual([]);
    } finally {
      writeFileSync(blob, good);
    }
  });

  it('fails with E_REGISTRY when the registry breaks off a layer it is streaming, and leaves nothing half-written', async () => {
    const sd = stateDir();
    const d = await open.push(layout('busybox'), 'test/cut', 'v1');
    const layer = (JSON.parse(readFileSync(join(layout('busybox'), 'blobs/sha256', d.slice(7)), 'utf8')) as { layers: { digest: string }[] }).layers[0]!.digest;
    // A proxy in front of the registry that sends half of that blob, then closes the connection.
    const proxy = createHttpServer((req, res) => {
      void (async () => {
        const up = await fetch(`http://${open.host}${req.url}`, { method: req.method, headers: { accept: String(req.headers.accept ?? '*/*') } });
        const body = Buffer.from(await up.arrayBuffer());
        const headers: Record<string, string> = {};
        up.headers.forEach((v, k) => void (k !== 'content-encoding' && k !== 'transfer-encoding' && (headers[k] = v)));
        res.writeHead(up.status, headers);
        if (req.url?.endsWith(`/blobs/${layer}`)) {
          res.write(body.subarray(0, body.length >> 1), () => res.socket?.destroy());
        } else {
          res.end(body);
        }
      })();
    });
    await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
    try {
      const host = `127.0.0.1:${(proxy.address() as AddressInfo).port}`;
      const err = await rejection(resolveImage(`${host}/test/cut:v1`, { stateDir: sd }));
      expect(err.code).toBe('E_REGISTRY');
      expect(err.message).toContain(layer);
      expect(err.message).toContain('the connection broke');
      expect(readdirSync(join(sd, 'images', 'layers'))).toEqual([]);
      expect(readdirSync(join(sd, 'images', 'tmp'))).toEqual([]);
      expect(await Image.list({ stateDir: sd })).toEqual([]);
    } finally {
      proxy.closeAllConnections();
      await new Promise((r) => proxy.close(r));
    }
  });

  it('rejects a manifest whose bytes are not the digest it is pinned by or announced with, and caches nothing', async () => {
    const sd = stateDir();
    const d = await open.push(layout('busybox'), 'test/bad-manifest', 'v1');
    // The registry stores a manifest as a blob: change one hex digit of the config digest in
    // it (same length, still valid JSON), so the registry serves it under the old digest.
    const file = registryBlobPath(open.storageDir, d);
    const good = readFileSync(file, 'utf8');
    const m = JSON.parse(good) as { config: { digest: string } };
    const hex = m.config.digest.slice(7);
    const swapped = `sha256:${hex[0] === '0' ? '1' : '0'}${hex.slice(1)}`;
    writeFileSync(file, good.replace(m.config.digest, swapped));
    try {
      for (const ref of [`${open.host}/test/bad-manifest@${d}`, `${open.host}/test/bad-manifest:v1`]) {
        const err = await rejection(resolveImage(ref, { stateDir: sd }));
        expect(err.code).toBe('E_IMAGE_DIGEST');
        expect(err.message).toContain('manifest test/bad-manifest');
        expect(err.message).toContain(d);
      }
      expect(readdirSync(join(sd, 'images', 'layers'))).toEqual([]);
      expect(readdirSync(join(sd, 'images', 'tmp'))).toEqual([]);
      expect(await Image.list({ stateDir: sd })).toEqual([]);
    } finally {
      writeFileSync(file, good);
    }
  });

  it('rejects a layer whose unpacked content is not its diff_id, and leaves no scratch or layer image behind', async () => {
    const sd = stateDir();
    const layoutDir = deriveLayout(layout('busybox'), join(sd, 'bad-diffid'), (c) => {
      c.rootfs.diff_ids[0] = `sha256:${'0'.repeat(64)}`;
    });
    await open.push(layoutDir, 'test/bad-diffid', 'v1');
    const err = await rejection(resolveImage(`${open.host}/test/bad-diffid:v1`, { stateDir: sd }));
    expect(err.code).toBe('E_IMAGE_DIGEST');
    expect(err.message).toContain('(uncompressed)');
    expect(readdirSync(join(sd, 'images', 'layers'))).toEqual([]);
    expect(readdirSync(join(sd, 'images', 'tmp'))).toEqual([]);
    // the unpack scratch (src/image/scratch.ts) is gone too
    expect(readdirSync('/dev/shm').filter((n) => n.startsWith(`corral-unpack-${process.pid}-`))).toEqual([]);
    expect(await Image.list({ stateDir: sd })).toEqual([]);
  });
});

describe('plain http', () => {
  it('is refused for a registry that is not loopback by name unless it is listed as insecure', async (ctx) => {
    // The machine's own hostname names the loopback registry without being a loopback
    // address literal, as a LAN registry would (skipped where it does not resolve to 127.0.0.1).
    const { address } = await lookup(hostname(), { family: 4 }).catch(() => ({ address: '' }));
    if (address !== '127.0.0.1') return ctx.skip(`${hostname()} resolves to ${address || 'nothing'}, not 127.0.0.1`);
    const registry = `${hostname()}:${open.host.split(':')[1]}`;
    const ref = `${registry}/test/busybox:v1`;
    const err = await rejection(resolveImage(ref, { stateDir: stateDir() }));
    expect(err.code).toBe('E_REGISTRY');
    expect(err.message).toContain(`cannot reach registry ${registry} (https://${registry})`);
    expect(err.message).toContain('insecureRegistries');
    expect((await resolveImage(ref, { stateDir: stateDir(), insecureRegistries: [registry] })).layers).toHaveLength(1);
    // loopback by address: plain http without asking (every other test here)
    expect((await resolveImage(`${open.host}/test/busybox:v1`, { stateDir: stateDir() })).layers).toHaveLength(1);
  });
});

describe('registry auth', () => {
  it('pulls with Basic credentials and names the registry when they are wrong or missing', async () => {
    const ref = `${basic.host}/test/busybox:v1`;
    expect((await resolveImage(ref, { stateDir: stateDir(), credentials: { username: basic.user, password: basic.password } })).layers).toHaveLength(1);
    const wrong = await rejection(resolveImage(ref, { stateDir: stateDir(), credentials: { username: basic.user, password: 'wrong' } }));
    expect(wrong.code).toBe('E_REGISTRY_AUTH');
    expect(wrong.message).toBe(`authentication to registry ${basic.host} failed: the credentials were refused`);
    const none = await rejection(resolveImage(ref, { stateDir: stateDir() }));
    expect(none.code).toBe('E_REGISTRY_AUTH');
    expect(none.message).toContain('needs credentials');
  });

  it('follows the Bearer token flow (realm, service, scope)', async () => {
    const ref = `${token.host}/test/busybox:v1`;
    const before = token.tokenRequests;
    expect((await resolveImage(ref, { stateDir: stateDir(), credentials: { username: token.user, password: token.password } })).layers).toHaveLength(1);
    expect(token.tokenRequests).toBeGreaterThan(before);
    const wrong = await rejection(resolveImage(ref, { stateDir: stateDir(), credentials: { username: token.user, password: 'nope' } }));
    expect(wrong.code).toBe('E_REGISTRY_AUTH');
    expect(wrong.message).toContain(token.host);
    expect(wrong.message).not.toContain('nope');
  });
});

describe('the image cache', () => {
  it('inspects, refuses to remove a pinned image, removes and prunes', async () => {
    const sd = stateDir();
    const img = await resolveImage(`${open.host}/test/busybox:v1`, { stateDir: sd });
    const idx = ImageIndex.open(sd);
    // a sandbox record pinned to it (as the worker writes it)
    const { open: lmdbOpen } = await import('lmdb');
    const root = lmdbOpen({ path: join(sd, 'store.lmdb'), maxDbs: 16, compression: false });
    await root.openDB({ name: 'sandboxes' }).put('pinned-one', { name: 'pinned-one', status: 'stopped' });
    await idx.pin('pinned-one', { ref: img.ref, digest: img.digest, pinnedAt: Date.now() });
    const info = await Image.inspect(`${open.host}/test/busybox:v1`, { stateDir: sd });
    expect(info.usedBy).toEqual(['pinned-one']);
    expect(info.layers[0]!.imageBytes).toBeGreaterThan(0);
    const inUse = await rejection(Image.remove(`${open.host}/test/busybox:v1`, { stateDir: sd }));
    expect(inUse.code).toBe('E_IMAGE_IN_USE');
    await root.openDB({ name: 'sandboxes' }).remove('pinned-one');
    await root.close();
    await idx.close();
    await Image.remove(`${open.host}/test/busybox:v1`, { stateDir: sd });
    expect(await Image.list({ stateDir: sd })).toEqual([]);
    expect(readdirSync(join(sd, 'images', 'layers'))).toEqual([]);
    expect((await Image.prune({ stateDir: sd })).images).toBe(0);
    expect((await rejection(Image.inspect(`${open.host}/test/busybox:v1`, { stateDir: sd }))).code).toBe('E_IMAGE_NOT_FOUND');
  });
});
