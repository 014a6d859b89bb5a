/**
 * Image roots seen from inside real VMs (TCG here): an OCI image from a loopback registry,
 * layers stacked by the guest agent, pinning across a restart, and disk-image roots.
 * Cold boots (`.template(false)`): templates are tested elsewhere and would add a boot per
 * image here. Sandboxes are shared between checks where one VM can answer several.
 */

import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CorralError, Sandbox, type SandboxEvent } from '../../src/index.ts';
import type { Supervisor } from '../../src/supervisor/Supervisor.ts';
import { testSupervisor, uniqueName } from '../helpers/sandbox.ts';
import { startRegistry, testImages, type TestRegistry } from './helpers/registry.ts';

const images = testImages();
let reg: TestRegistry;
let bearer: TestRegistry;
let sup: Supervisor;
const events: SandboxEvent[] = [];
const tmp = mkdtempSync(join(tmpdir(), 'corral-test-vmimg-'));

beforeAll(async () => {
  [reg, bearer] = await Promise.all([startRegistry('basic'), startRegistry('token')]);
  await Promise.all([
    bearer.push(join(images.dir, 'busybox'), 'test/bearer', 'v1'),
    reg.push(join(images.dir, 'python'), 'python', '3.12'),
    reg.push(join(images.dir, 'multilayer'), 'test/multilayer', 'v1'),
    reg.push(join(images.dir, 'busybox'), 'test/moving', 'v1'),
  ]);
  process.env.CORRAL_TEST_REGISTRY_PASSWORD = reg.password;
  sup = testSupervisor();
  sup.events$.subscribe((e) => events.push(e));
});

afterAll(async () => {
  await sup?.close();
  await Promise.all([reg?.close(), bearer?.close()]);
  rmSync(tmp, { recursive: true, force: true });
});

const auth = () => ({ kind: 'basic' as const, username: reg.user, passwordEnv: 'CORRAL_TEST_REGISTRY_PASSWORD' });

describe('OCI images in the guest', () => {
  it('runs python3 from a Debian image pulled from a private registry, with pull progress on the bus', async () => {
    const name = uniqueName('py');
    await using sb = await Sandbox.builder(name).supervisor(sup).template(false).image(`${reg.host}/python:3.12`).registryAuth(auth()).memory(256).create();
    const r = await sb.exec('python3', ['-c', 'print(6*7)']);
    expect(r.stdout).toBe('42\n');
    const mine = events.filter((e) => e.name === name).map((e) => e.type);
    expect(mine).toEqual(expect.arrayContaining(['image.pull.started', 'image.pull.progress', 'image.pull.done']));
    expect(mine.indexOf('image.pull.done')).toBeLessThan(mine.indexOf('sandbox.started'));
    expect(JSON.stringify(events.filter((e) => e.name === name))).not.toContain(reg.password);
  });

  it('stacks layers: whiteouts and opaque dirs hold, two sandboxes share layers but not writes', async () => {
    const config = Sandbox.builder(uniqueName('ml')).template(false).image(`${reg.host}/test/multilayer:v1`).registryAuth(auth()).build();
    // the config survives JSON and boots as it is
    const a = await Sandbox.create(JSON.parse(JSON.stringify(config)), { supervisor: sup });
    expect(a.config).toEqual(config);
    const b = await Sandbox.builder(uniqueName('ml')).supervisor(sup).template(false).image(`${reg.host}/test/multilayer:v1`).registryAuth(auth()).create();
    try {
      const r = await a.shell('test ! -e /etc/deleteme && echo gone; ls /data/old; cat /marker /data/keep /data/hard; readlink /data/link; echo $IMAGE_VAR; pwd');
      expect(r.stdout).toBe('gone\nc\nmultilayer\nkeep2\nkeep2\n/data/keep\nfrom-image\n/data\n');
      // the layers are the same read-only devices, the writes go to each one's upper
      expect((await a.shell('cat /sys/block/vda/ro /sys/block/vdb/ro; ls /sys/block')).stdout).toBe('1\n1\nvda\nvdb\nvdc\n');
      await a.shell('echo mine > /data/keep; rm /data/old/c');
      expect((await b.shell('cat /data/keep; ls /data/old')).stdout).toBe('keep2\nc\n');
      expect((await a.shell('cat /data/keep; ls /data/old | wc -l')).stdout).toBe('mine\n0\n');
      const pinA = sup.store.getSandbox(a.name) as unknown as { image?: { digest: string } };
      const pinB = sup.store.getSandbox(b.name) as unknown as { image?: { digest: string } };
      expect(pinA.image?.digest).toMatch(/^sha256:/);
      expect(pinA.image?.digest).toBe(pinB.image?.digest);
    } finally {
      await a.stop();
      await b.stop();
    }
  });

  it('keeps using the pinned digest after the tag moved upstream, and .replace() starts afresh', async () => {
    const name = uniqueName('pin');
    const build = () => Sandbox.builder(name).supervisor(sup).template(false).image(`${reg.host}/test/moving:v1`).registryAuth(auth());
    const sb = await build().create();
    expect((await sb.shell('cat /marker')).stdout).toBe('busybox\n');
    await sb.stop();
    await reg.push(join(images.dir, 'multilayer'), 'test/moving', 'v1');
    const again = await Sandbox.start(name, { supervisor: sup });
    try {
      expect((await again.shell('cat /marker')).stdout).toBe('busybox\n');
    } finally {
      await again.stop();
    }
    // without replace: a clear conflict; with it: a fresh sandbox that resolves the tag again
    await expect(build().create()).rejects.toMatchObject({ code: 'E_SANDBOX_EXISTS' });
    const fresh = await build().pullPolicy('always').replace().create();
    try {
      expect((await fresh.shell('cat /marker')).stdout).toBe('multilayer\n');
    } finally {
      await fresh.stop();
    }
  });
});

describe('a registry with Bearer token auth', () => {
  it('boots an image pulled with a token the token server issued for those credentials, and refuses wrong ones with E_REGISTRY_AUTH', async () => {
    const ref = `${bearer.host}/test/bearer:v1`;
    const asked = bearer.tokenRequests;
    const sb = await Sandbox.builder(uniqueName('bearer')).supervisor(sup).template(false).image(ref).registryAuth({ kind: 'basic', username: bearer.user, password: bearer.password }).create();
    try {
      expect((await sb.shell('cat /marker')).stdout).toBe('busybox\n');
      // the registry only serves a token the token server signed: it was asked
      expect(bearer.tokenRequests).toBeGreaterThan(asked);
    } finally {
      await sb.stop();
    }
    const wrongName = uniqueName('bearer-bad');
    const err = await Sandbox.builder(wrongName).supervisor(sup).template(false).image(ref).pullPolicy('always').registryAuth({ kind: 'basic', username: bearer.user, password: 'not-the-password' }).create().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CorralError);
    expect((err as CorralError).code).toBe('E_REGISTRY_AUTH');
    expect((err as CorralError).message).toContain(bearer.host);
    expect((err as CorralError).message).not.toContain('not-the-password');
    // the failed create is on record as a boot failure, and can be removed
    expect(sup.store.getSandbox(wrongName)).toMatchObject({ status: 'stopped', stopReason: 'boot-failed' });
    await Sandbox.remove(wrongName, { supervisor: sup });
    const noneName = uniqueName('bearer-none');
    const none = await Sandbox.builder(noneName).supervisor(sup).template(false).image(ref).pullPolicy('always').create().catch((e: unknown) => e);
    expect((none as CorralError).code).toBe('E_REGISTRY_AUTH');
    await Sandbox.remove(noneName, { supervisor: sup });
  });
});

/** The content of `path` in the ext4 filesystem of a disk image, read on the host (qemu-img to raw, debugfs). */
function readFromDisk(disk: string, format: 'raw' | 'qcow2' | 'vmdk', path: string): string {
  const raw = join(tmp, `readback-${format}.raw`);
  try {
    execFileSync('qemu-img', ['convert', '-f', format, '-O', 'raw', disk, raw]);
    return execFileSync('debugfs', ['-R', `cat ${path}`, raw], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  } finally {
    rmSync(raw, { force: true });
  }
}

describe('disk-image roots', () => {
  it.each(['raw', 'qcow2', 'vmdk'] as const)('boots a %s disk read-write (a write reaches the disk file) and refuses a second sandbox on it', async (format) => {
    const disk = join(tmp, `root.${format}`);
    copyFileSync(images.disks[format], disk);
    const image = (b: ReturnType<typeof Sandbox.builder>) => b.image(format === 'raw' ? (i) => i.disk(disk).fstype('ext4') : disk);
    const name = uniqueName(`disk-${format}`);
    const sb = await image(Sandbox.builder(name).supervisor(sup)).create();
    try {
      expect((await sb.shell('cat /marker; echo written > /persist; sync; grep " / " /proc/mounts | cut -d" " -f1,3')).stdout).toBe('disk\n/dev/vda ext4\n');
      await expect(image(Sandbox.builder(uniqueName('disk-busy')).supervisor(sup)).create()).rejects.toMatchObject({
        code: 'E_DISK_BUSY',
        message: expect.stringContaining(`is the root of running sandbox "${name}"`),
      });
    } finally {
      await sb.stop();
    }
    // The guest's write is in the disk file itself, read here by the host, not by the guest.
    expect(readFromDisk(disk, format, '/persist')).toBe('written\n');
  });
});
