// Placement's ranking on its own: pure, no NATS, no VMs.
import { describe, expect, it } from 'vitest';
import { rankNodes } from '../../src/cluster/placement.ts';
import type { NodeRecord } from '../../src/cluster/protocol.ts';

const node = (name: string, freeMib: number, freeSlots: number, labels: Record<string, string> = {}, draining = false): NodeRecord => ({
  name,
  labels,
  capacity: { memoryMib: 1024, cpus: 2, sandboxes: 4 },
  free: { memoryMib: freeMib, sandboxes: freeSlots },
  sandboxes: 4 - freeSlots,
  heartbeatMs: 1000,
  startedAt: 0,
  draining,
});

describe('placement', () => {
  it('puts the least loaded node first, by free memory and free slots, ties by name', () => {
    const ranked = rankNodes([node('b', 1024, 4), node('a', 1024, 4), node('c', 512, 2), node('d', 1024, 1)], { memoryMib: 128 });
    expect(ranked.map((n) => n.name)).toEqual(['a', 'b', 'd', 'c']);
  });

  it('passes over nodes without every label, without room, or draining', () => {
    const ranked = rankNodes([node('a', 1024, 4, { zone: 'a' }), node('b', 1024, 4, { zone: 'b' }), node('b2', 100, 4, { zone: 'b' }), node('b3', 1024, 0, { zone: 'b' }), node('b4', 1024, 4, { zone: 'b' }, true)], {
      memoryMib: 128,
      labels: { zone: 'b' },
    });
    expect(ranked.map((n) => n.name)).toEqual(['b']);
  });

  it('says E_NO_CAPACITY with the memory and labels asked and what each node had', () => {
    expect(() => rankNodes([node('a', 100, 4, { zone: 'a' })], { memoryMib: 256, labels: { zone: 'a', gpu: 'yes' } })).toThrow(
      expect.objectContaining({ code: 'E_NO_CAPACITY', message: expect.stringMatching(/256 MiB with labels zone=a,gpu=yes: a \(zone=a; 100 MiB, 4 slots free\)/) }),
    );
    expect(() => rankNodes([], { memoryMib: 128 })).toThrow(expect.objectContaining({ code: 'E_NO_CAPACITY', message: expect.stringContaining('no live nodes') }));
  });
});
