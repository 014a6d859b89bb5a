import { describe, expect, it } from 'vitest';
import { qemuArgs } from '../../src/vm/qemuArgs.ts';

const base = {
  kernel: 'vmlinux', initramfs: 'initrd', memoryMib: 256, cpus: 1, accel: 'tcg' as const,
  agentSocket: 'a.sock', qmpSocket: 'q.sock', hostname: 'h', upper: 'upper.ext4',
};

/** The virtio devices in command-line order (each takes the next virtio-mmio slot). */
function virtioDevices(args: string[]): string[] {
  return args.flatMap((a, i) => (args[i - 1] === '-device' && a.startsWith('virtio') && !a.startsWith('virtserialport') ? [a.split(',')[0]!] : []));
}

describe('qemu command line', () => {
  it('keeps the RTC slot (the 5th virtio-mmio slot, IRQ 8) for an inert filler, even among disks', () => {
    const lower = ['l0', 'l1', 'l2', 'l3'].map((path) => ({ path, fstype: 'erofs' }));
    const devs = virtioDevices(qemuArgs({ ...base, lower }));
    // serial, 3 layers, filler, 4th layer, upper
    expect(devs).toEqual(['virtio-serial-device', 'virtio-blk-device', 'virtio-blk-device', 'virtio-blk-device', 'virtio-rng-device', 'virtio-blk-device', 'virtio-blk-device']);
  });

  it('leaves a one-layer image as it was (no filler needed)', () => {
    const devs = virtioDevices(qemuArgs({ ...base, lower: [{ path: 'l0', fstype: 'erofs' }] }));
    expect(devs).toEqual(['virtio-serial-device', 'virtio-blk-device', 'virtio-blk-device']);
  });

  it('refuses an image with more layers than microvm has slots, naming the limit', () => {
    const lower = Array.from({ length: 6 }, (_, i) => ({ path: `l${i}`, fstype: 'erofs' }));
    expect(() => qemuArgs({ ...base, lower })).toThrowError(/at most 5 lower layer disks/);
  });

  it('keeps the APIC timer on every accel (an idle guest on the PIT wakes ~46 times a second), and backs RAM with "mem" always', () => {
    const tcg = qemuArgs({ ...base, lower: [{ path: 'l0', fstype: 'erofs' }] });
    const kvm = qemuArgs({ ...base, accel: 'kvm', lower: [{ path: 'l0', fstype: 'erofs' }] });
    expect(tcg[tcg.indexOf('-append') + 1]).not.toContain('noapictimer');
    expect(kvm[kvm.indexOf('-append') + 1]).not.toContain('noapictimer');
    expect(kvm).toContain('host');
    expect(tcg.join(' ')).toContain('memory-backend-ram,id=mem,size=256M');
  });
});
