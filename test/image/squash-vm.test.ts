/**
 * A 7-layer image (scripts/test-images.sh: `squash`) pulled through a real loopback registry
 * and booted in a real VM (TCG here): the guest sees exactly the tree of the 7 layers applied
 * in order, from 2 read-only devices (layer 0 + the squashed layers 1-6) and its upper disk.
 * One sandbox serves the checks (with 3 bind volumes in the slots the squash leaves free);
 * the restart checks pinning. A re-pull shows the squash step on the events and the bar.
 */

import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ImagePullEventBody } from '../../src/bus/events.ts';
import { pullProgress } from '../../src/cli/pullProgress.ts';
import { Image, Sandbox } from '../../src/index.ts';
import { ImageIndex } from '../../src/image/ImageIndex.ts';
import { resolveImage } from '../../src/image/pull.ts';
import { squashPlan } from '../../src/image/squash.ts';
import type { Supervisor } from '../../src/supervisor/Supervisor.ts';
import { testSupervisor, uniqueName } from '../helpers/sandbox.ts';
import { startRegistry, testImages, type TestRegistry } from './helpers/registry.ts';

const images = testImages();
let reg: TestRegistry;
let sup: Supervisor;
let ref: string;
const tmp = mkdtempSync(join(tmpdir(), 'corral-test-squashvm-'));

beforeAll(async () => {
  reg = await startRegistry('none');
  await reg.push(join(images.dir, 'squash'), 'test/squash', 'v1');
  ref = `${reg.host}/test/squash:v1`;
  sup = testSupervisor();
});

afterAll(async () => {
  await sup?.close();
  await reg?.close();
  rmSync(tmp, { recursive: true, force: true });
});

/** The guest's view of what the 7 layers touched. */
const PROBE = [
  'cat /marker /data/over',
  'test ! -e /etc/zero-del && echo zero-del gone',
  'ls -A /data; ls -A /data/opq /data/d1 /data/sl /lnk0',
  'cat /data/opq/z /data/d1/a /data/sl/f /lnk0/g /data/h1',
  'stat -c "%F %h" /data/sl /lnk0 /data/h1',
  'test "$(stat -c %i /data/h1)" = "$(stat -c %i /data/h2)" && echo one inode',
  'ls /sys/block; cat /sys/block/vda/ro /sys/block/vdb/ro',
].join('; ');

const EXPECTED = [
  'squash',
  '6',
  'zero-del gone',
  'd1\nh1\nh2\nopq\nover\nsl',
  '/data/d1:\na\n\n/data/opq:\nz\n\n/data/sl:\nf\n\n/lnk0:\ng',
  'z\na\nf\ng\nhard',
  'directory 2\ndirectory 2\nregular file 2',
  'one inode',
  'vda\nvdb\nvdc\n1\n1',
].join('\n');

describe('an image of 7 layers', () => {
  it('boots from layer 0 + one squashed layer, the guest seeing the layers applied in order, also after a restart', async () => {
    const name = uniqueName('squash');
    // the 3 virtio slots the squash leaves free: 3 bind volumes (7 separate layers fit none)
    const vols = ['a', 'b', 'c'].map((v) => {
      const dir = join(tmp, v);
      mkdirSync(dir);
      writeFileSync(join(dir, 'v'), `${v}\n`);
      return dir;
    });
    const sb = await vols
      .reduce((b, dir, i) => b.volume(`/mnt/v${i}`, (v) => v.bind(dir)), Sandbox.builder(name).supervisor(sup).template(false).image(ref).memory(128))
      .create();
    try {
      expect((await sb.shell(PROBE)).stdout).toBe(`${EXPECTED}\n`);
      expect((await sb.shell('cat /mnt/v0/v /mnt/v1/v /mnt/v2/v')).stdout).toBe('a\nb\nc\n');
      const info = await Image.inspect(ref, { stateDir: sup.stateDir });
      expect(info.layers).toHaveLength(7);
      expect(info.squashed?.diffIds).toEqual(info.layers.slice(1).map((l) => l.diffId));
      expect(info.squashed?.imageBytes).toBeGreaterThan(0);
      await sb.stop();
      // the pinned digest: the same squashed layer
      const again = await Sandbox.start(name, { supervisor: sup });
      try {
        expect((await again.shell(PROBE)).stdout).toBe(`${EXPECTED}\n`);
      } finally {
        await again.stop();
      }
    } finally {
      await Sandbox.remove(name, { supervisor: sup }).catch(() => {});
    }
  });

  it('builds the squashed layer of an image cached before squashing existed, by policy, and remove() deletes it', async () => {
    const stateDir = sup.stateDir;
    const idx = ImageIndex.open(stateDir);
    try {
      const rec = idx.getImage(`${reg.host}/test/squash`, idx.getTag(ref)!)!;
      const plan = squashPlan(rec.layers.map((l) => l.diffId))!;
      // as a pull before this change left it: the 7 layer images, no squashed one
      rmSync(idx.squashPath(plan.key));
      await idx.removeSquash(plan.key);
      // "never": 7 separate layers do not fit the VM's slots, the error says what to do
      const err = await Sandbox.builder(uniqueName('squash-never')).supervisor(sup).template(false).image(ref).pullPolicy('never').create().catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'E_IMAGE_NOT_CACHED' });
      expect((err as Error).message).toContain(ref);
      expect((err as Error).message).toContain('pull it again');
      // "if-missing": not fully cached, so pulled again (the same digest) and squashed, the
      // squash step on the events and in the progress bar
      const events: ImagePullEventBody[] = [];
      let barText = '';
      const out = new PassThrough();
      out.setEncoding('utf8').on('data', (d: string) => (barText += d));
      const draw = pullProgress(out as unknown as NodeJS.WriteStream);
      const img = await resolveImage(ref, { stateDir, index: idx, onEvent: (e) => (events.push(e), draw(e)) });
      const squashEvents = events.filter((e) => e.type === 'image.pull.progress' && e.phase === 'squash');
      const merged = rec.layers.slice(1).map((l) => l.digest);
      const mergedBytes = rec.layers.slice(1).reduce((n, l) => n + l.size, 0);
      expect(squashEvents).toEqual([
        { type: 'image.pull.progress', image: ref, phase: 'squash', layers: merged, bytesDone: 0, bytesTotal: mergedBytes },
        { type: 'image.pull.progress', image: ref, phase: 'squash', layers: merged, bytesDone: mergedBytes, bytesTotal: mergedBytes },
      ]);
      // after every layer's "done", before the pull's "done"
      const types = events.map((e) => (e.type === 'image.pull.progress' ? e.phase : e.type));
      expect(types.indexOf('squash')).toBeGreaterThan(types.lastIndexOf('done'));
      expect(types.at(-1)).toBe('image.pull.done');
      const lines = barText.trim().split('\n');
      expect(lines).toContainEqual(expect.stringMatching(/ {2}layers 7\/7 {2}squashing 6 layers into one$/));
      expect(lines).toContainEqual(expect.stringMatching(/ {2}layers 7\/7 {2}squashed 6 layers into one$/));
      expect(img.pulled).toBe(true);
      expect(img.digest).toBe(rec.digest);
      expect(img.squashed?.path).toBe(idx.squashPath(plan.key));
      expect(existsSync(idx.squashPath(plan.key))).toBe(true);
      expect(idx.getSquash(plan.key)?.diffIds).toEqual(plan.diffIds);
      // nothing left behind: no lock, no kept blob of its layers
      expect(existsSync(`${idx.squashPath(plan.key)}.lock`)).toBe(false);
      const blobs = new Set(rec.layers.map((l) => l.digest.slice('sha256:'.length)));
      expect(readdirSync(idx.tmpDir).filter((f) => blobs.has(f.split('.')[0]!))).toEqual([]);
      // remove() takes the squashed layer with the image
      await Image.remove(ref, { stateDir, force: true });
      expect(existsSync(idx.squashPath(plan.key))).toBe(false);
      expect(idx.getSquash(plan.key)).toBeUndefined();
    } finally {
      await idx.close();
    }
  });
});
