/**
 * Which lower disks an OCI image boots from (pure: resolved images as data; the real pull
 * and boot of a squashed image are in squash-vm.test.ts).
 */

import { describe, expect, it } from 'vitest';
import { lowerLayers } from '../../src/image/rootImage.ts';

const layers = (k: number) => Array.from({ length: k }, (_, i) => ({ diffId: `sha256:${k - i}`, path: `/c/layers/${k - i}.erofs` }));
const ref = '127.0.0.1:5000/team/app:v1';

describe('the lower disks of an OCI image', () => {
  it('are its squashed layer over its bottom layer when it has one', () => {
    expect(lowerLayers({ ref, layers: layers(7), squashed: { key: 'sha256:s', path: '/c/layers/s.squash.erofs' } })).toEqual([
      { path: '/c/layers/s.squash.erofs', fstype: 'erofs' },
      { path: '/c/layers/1.erofs', fstype: 'erofs' },
    ]);
  });

  it('are its own layers, topmost first, for 3 layers or, cached before squashing, as many as fit', () => {
    expect(lowerLayers({ ref, layers: layers(3) }).map((l) => l.path)).toEqual(['/c/layers/3.erofs', '/c/layers/2.erofs', '/c/layers/1.erofs']);
    expect(lowerLayers({ ref, layers: layers(5) })).toHaveLength(5);
  });

  it('refuses an unsquashed image of more layers than the VM has slots, saying to pull it again', () => {
    expect(() => lowerLayers({ ref, layers: layers(6) })).toThrow(expect.objectContaining({ code: 'E_IMAGE_NOT_CACHED', message: expect.stringMatching(/127\.0\.0\.1:5000\/team\/app:v1 \(6 layers\).*pull it again/) }));
  });
});
