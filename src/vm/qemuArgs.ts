/**
 * The qemu command line of a corral microVM.
 *
 * Flags measured on these machines (see DESIGN.md): microvm with ACPI off so qemu passes the
 * virtio-mmio devices on the kernel command line; the uncompressed vmlinux booted via PVH;
 * RTC on; `-no-reboot` so a guest poweroff or panic ends the process; `tsc_early_khz` so
 * TCG boots do not hang calibrating the PIT. qemu connects to two unix sockets the host
 * listens on (agent port and QMP), so nothing the guest writes before the host attaches is
 * lost and a missing listener fails the spawn at once.
 */

import type { Accel } from '../bus/events.ts';

/** Everything that shapes one VM's command line. */
export interface QemuArgsInput {
  readonly kernel: string;
  readonly initramfs: string;
  readonly memoryMib: number;
  readonly cpus: number;
  readonly accel: Accel;
  readonly agentSocket: string;
  readonly qmpSocket: string;
  /** Read-only root image (the lower layer). */
  readonly lower: { readonly path: string; readonly fstype: string };
  /** Writable ext4 upper disk. */
  readonly upper?: string;
  readonly hostname: string;
  readonly tscKhz?: number;
  /** Extra kernel command line words. */
  readonly cmdline?: readonly string[];
}

/** The argv (without the qemu binary) for one VM. */
export function qemuArgs(input: QemuArgsInput): string[] {
  const cmdline = [
    'console=ttyS0',
    'quiet',
    'reboot=t',
    'panic=-1',
    'cryptomgr.notests',
    'mitigations=off',
    'audit=0',
    '8250.nr_uarts=1',
    'random.trust_cpu=on',
    ...(input.tscKhz ? [`tsc_early_khz=${input.tscKhz}`] : []),
    'corral.lower=/dev/vda',
    `corral.lowerfs=${input.lower.fstype}`,
    ...(input.upper ? ['corral.upper=/dev/vdb'] : []),
    `corral.hostname=${input.hostname}`,
    ...(input.cmdline ?? []),
  ];
  const args = [
    '-M', 'microvm,acpi=off,x-option-roms=off,isa-serial=on,rtc=on,pit=on,pic=on',
    '-accel', input.accel,
    '-cpu', input.accel === 'kvm' ? 'host' : 'max',
    '-m', String(input.memoryMib),
    '-smp', String(input.cpus),
    '-nodefaults', '-no-user-config', '-nographic', '-no-reboot',
    '-kernel', input.kernel,
    '-initrd', input.initramfs,
    '-append', cmdline.join(' '),
    '-chardev', 'stdio,id=con,signal=off',
    '-serial', 'chardev:con',
    '-device', 'virtio-serial-device',
    '-chardev', `socket,id=agent,path=${input.agentSocket}`,
    '-device', 'virtserialport,chardev=agent,name=corral.agent',
    '-chardev', `socket,id=qmp,path=${input.qmpSocket}`,
    '-mon', 'chardev=qmp,mode=control',
    '-drive', `id=lower,file=${input.lower.path},format=raw,if=none,read-only=on`,
    '-device', 'virtio-blk-device,drive=lower',
  ];
  if (input.upper) {
    args.push('-drive', `id=upper,file=${input.upper},format=raw,if=none,discard=unmap,aio=threads`, '-device', 'virtio-blk-device,drive=upper');
  }
  return args;
}
