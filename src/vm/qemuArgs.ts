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
import { InvalidOptionError } from '../errors.ts';
import { TCG_TB_MIB } from './cgroups.ts';

/** Everything that shapes one VM's command line. */
export interface QemuArgsInput {
  readonly kernel: string;
  readonly initramfs: string;
  readonly memoryMib: number;
  readonly cpus: number;
  readonly accel: Accel;
  readonly agentSocket: string;
  readonly qmpSocket: string;
  /**
   * Read-only layer images, topmost first (one, or a list). Attached as /dev/vda, /dev/vdb…
   * in this order, the upper disk after them. Ignored when `disk` is given.
   */
  readonly lower?: LayerDisk | readonly LayerDisk[];
  /** A disk image as the root, read-write, no overlay (`corral.root=`); no upper then. */
  readonly disk?: DiskRoot | undefined;
  /** Writable ext4 upper disk: a raw file, or a qcow2 overlay on a template's upper. */
  readonly upper?: string;
  readonly hostname: string;
  readonly tscKhz?: number;
  /**
   * microvm's ACPI. Off (the default) for the custom kernel: qemu then passes the virtio-mmio
   * devices on the kernel command line. On for Debian's kernel, which has no
   * VIRTIO_MMIO_CMDLINE_DEVICES and finds them in the ACPI tables (src/runtime/kernel.ts).
   */
  readonly acpi?: boolean;
  /** Extra kernel command line words. */
  readonly cmdline?: readonly string[];
  /**
   * Guest RAM in a file: `share: true` for a template (its RAM is saved in place), `false`
   * for a clone (a private copy-on-write mapping of the template's RAM).
   */
  readonly memoryFile?: { readonly path: string; readonly share: boolean };
  /** Start paused, waiting for a migration stream (`migrate-incoming` over QMP). */
  readonly incoming?: boolean;
  /**
   * Host directories shared over virtio-9p (src/guestenv/volumes.ts), attached after the disks
   * in this order. The count is part of the device layout (a template's clones need the same).
   */
  readonly shares?: readonly SharedDir[];
  /** A virtio-net NIC on qemu user networking (src/guestenv/netfilter.ts); part of the layout. */
  readonly net?: NetDevice | undefined;
}

/** One host directory shared into the guest over virtio-9p. */
export interface SharedDir {
  /** The 9p mount tag the guest mounts by (`corral.v0`, …). */
  readonly tag: string;
  readonly path: string;
  /** Enforced by qemu: the guest cannot write through it, even as root after a remount. */
  readonly readonly: boolean;
}

/**
 * The guest's NIC: qemu user networking (slirp), with host-loopback port forwards; or, in a
 * jail, a tap whose other end slirp4netns serves from outside qemu's network namespace.
 */
export interface NetDevice {
  readonly hostForwards: readonly { readonly hostPort: number; readonly guestPort: number }[];
  /** qemu's fd of the jail's tap (src/vm/jail.ts): the forwards are slirp4netns's then, not in the argv. */
  readonly tapFd?: number | undefined;
  /**
   * The device without a network behind it: qemu runs in an empty network namespace, so
   * slirp reaches nothing (a template VM, whose start command runs under no policy). Does
   * not change the command line: the guest sees the same device.
   */
  readonly isolated?: boolean;
}

/** One read-only layer image. */
export interface LayerDisk {
  readonly path: string;
  readonly fstype: string;
}

/** A disk-image root. */
export interface DiskRoot {
  readonly path: string;
  readonly format: 'qcow2' | 'raw' | 'vmdk';
  /** A filesystem type, or `auto` to probe in the guest. */
  readonly fstype: string;
}

/** virtio-mmio transports of microvm with ACPI off (IRQs 12 down to 5). */
const VIRTIO_SLOTS = 8;
/** The slot whose IRQ (8) the guest's RTC owns. */
const RTC_SLOT = 4;

/** Extra virtio devices that fit after `used` slots (one slot always goes to the RTC filler). */
function maxExtraDevices(used: number): number {
  return VIRTIO_SLOTS - used - 1;
}

/** Escapes a value for a qemu `-opt key=value,…` list (a comma is doubled). */
function qemuOpt(value: string): string {
  return value.replace(/,/g, ',,');
}

/** `/dev/vda`, `/dev/vdb`, … for the n-th virtio-blk device (0-based). */
function vd(n: number): string {
  return `/dev/vd${n < 26 ? String.fromCharCode(97 + n) : `${String.fromCharCode(96 + Math.floor(n / 26))}${String.fromCharCode(97 + (n % 26))}`}`;
}

/** The argv (without the qemu binary) for one VM. */
export function qemuArgs(input: QemuArgsInput): string[] {
  const lowers: readonly LayerDisk[] = input.disk ? [] : input.lower === undefined ? [] : 'path' in input.lower ? [input.lower] : input.lower;
  // microvm's virtio-mmio devices appear in command-line order: the n-th -device
  // virtio-blk-device is the n-th /dev/vd* (checked in a real boot, see test/image).
  const rootWords = input.disk
    ? ['corral.root=/dev/vda', `corral.rootfs=${input.disk.fstype}`]
    : lowers.length === 0
      ? []
      : [
          `corral.lower=${lowers.map((_, i) => vd(i)).join(',')}`,
          `corral.lowerfs=${lowers[0]!.fstype}`,
          ...(input.upper ? [`corral.upper=${vd(lowers.length)}`] : []),
        ];
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
    // No `noapictimer`, though under TCG the APIC timer's calibration against the PIT costs a
    // cold boot ~180 ms (660 → 840 ms median): without the APIC timer the PIT is the tick
    // device, whose 16-bit one-shot cannot sleep past ~55 ms, and an idle guest woke ~46
    // times a second, ~1.2 % of a core per idle qemu against 0.1–0.6 % with it (measured
    // 2026-12-04). Restored sandboxes, the common case, inherit the calibrated timer from
    // their template and pay nothing at create.
    // The kernel checks at boot that the PIT's IRQ reaches the IO-APIC within a few ticks; a
    // vCPU starved by a loaded host misses that window and the guest panics ("IO-APIC + timer
    // doesn't work!", seen under TCG at a load of ~9). The VM's timer wiring is fixed: skip it.
    'no_timer_check',
    // The clocksource watchdog checks the TSC against jiffies, and under TCG it is the ticks
    // that are late, not the TSC (qemu derives it from the host clock): a cold-booted guest
    // marked the TSC unstable within seconds and fell back to refined-jiffies, 4 ms
    // resolution for clock_gettime and every sleep (seen 2026-12-04: a spawn of `true` read
    // 0, 4, 8 or 12 ms). The TSC is the one clock the VM has; trust it.
    'tsc=reliable',
    ...(input.tscKhz ? [`tsc_early_khz=${input.tscKhz}`] : []),
    ...rootWords,
    `corral.hostname=${input.hostname}`,
    ...(input.cmdline ?? []),
  ];
  // Every VM's RAM is the backend "mem" (a file for templates and their clones, anonymous
  // otherwise): a migration stream names RAM blocks, so any VM's snapshot restores anywhere.
  // The device layout below (slots, the RTC filler) is the same either way, so /dev/vd* names
  // and the device limits do not depend on the kernel.
  const machine = `microvm,acpi=${input.acpi ? 'on' : 'off'},x-option-roms=off,isa-serial=on,rtc=on,pit=on,pic=on,memory-backend=mem`;
  const args = [
    '-M', machine,
    // Under TCG the translation cache is sized, so the VM cgroup's memory limit has a known
    // overhead to allow for (src/vm/cgroups.ts); qemu 7.2's default is 1 GiB.
    '-accel', input.accel === 'tcg' ? `tcg,tb-size=${TCG_TB_MIB}` : input.accel,
    '-cpu', input.accel === 'kvm' ? 'host' : 'max',
    '-m', String(input.memoryMib),
    '-smp', String(input.cpus),
    '-nodefaults', '-no-user-config', '-nographic', '-no-reboot',
    // qemu's seccomp filter: no obsolete syscalls, no setuid/setgid/capability changes, no
    // scheduler/affinity changes, no fork or exec: migrations go through a socket and an
    // inherited fd (src/vm/Vm.ts), never `exec:`.
    '-sandbox', 'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny',
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
  ];
  // microvm without ACPI has 8 virtio-mmio slots on IRQs 12, 11, … 5 in command-line order
  // (the serial port takes the first), and the 5th (IRQ 8) clashes with the RTC in the guest
  // ("Flags mismatch irq 8"): no real device may take that slot, an inert filler does (its
  // probe fails, harmlessly; it is no block device, so /dev/vd* names do not move).
  let slots = 1;
  const claimSlot = () => {
    if (slots === RTC_SLOT) {
      args.push('-device', 'virtio-rng-device');
      slots++;
    }
    slots++;
  };
  const disks = 1 + (input.disk ? 1 : lowers.length) + (input.upper && !input.disk ? 1 : 0);
  if (disks + (disks > RTC_SLOT ? 1 : 0) > VIRTIO_SLOTS) {
    // OCI images of more than 3 layers boot from 2 (src/image/squash.ts): only a caller that
    // passes its own layer list reaches this.
    throw new InvalidOptionError('image', `at most ${VIRTIO_SLOTS - 3} lower layer disks (microvm has ${VIRTIO_SLOTS} virtio slots; the serial port, the upper disk and the RTC's slot take 3; OCI images of more than 3 layers are squashed to 2)`, lowers.length);
  }
  if (input.disk) {
    claimSlot();
    args.push('-drive', `id=root,file=${input.disk.path},format=${input.disk.format},if=none,discard=unmap,aio=threads`, '-device', 'virtio-blk-device,drive=root');
  }
  lowers.forEach((l, i) => {
    claimSlot();
    // The first keeps its old id: the same argv as before for single-layer images.
    const id = i === 0 ? 'lower' : `lower${i}`;
    args.push('-drive', `id=${id},file=${l.path},format=raw,if=none,read-only=on`, '-device', `virtio-blk-device,drive=${id}`);
  });
  if (input.memoryFile) {
    args.push('-object', `memory-backend-file,id=mem,size=${input.memoryMib}M,mem-path=${input.memoryFile.path},share=${input.memoryFile.share ? 'on' : 'off'}`);
  } else {
    args.push('-object', `memory-backend-ram,id=mem,size=${input.memoryMib}M`);
  }
  if (input.incoming) args.push('-incoming', 'defer');
  if (input.upper && !input.disk) {
    claimSlot();
    const format = input.upper.endsWith('.qcow2') ? 'qcow2' : 'raw';
    args.push('-drive', `id=upper,file=${input.upper},format=${format},if=none,discard=unmap,aio=threads`, '-device', 'virtio-blk-device,drive=upper');
  }
  // Shares and the NIC come after every disk, so /dev/vd* names do not move; the guest
  // finds shares by tag.
  const extra = (input.shares?.length ?? 0) + (input.net ? 1 : 0);
  if (extra > maxExtraDevices(disks)) {
    throw new InvalidOptionError('volumes', `at most ${maxExtraDevices(disks)} bind/named volumes and NIC together for this image (microvm has ${VIRTIO_SLOTS} virtio slots, its serial port and disks use ${disks})`, extra);
  }
  (input.shares ?? []).forEach((s, i) => {
    claimSlot();
    // mapped-xattr: guest owners and modes live in xattrs, host files stay owned by qemu's
    // user with safe modes (a guest root cannot plant a setuid-root file on the host), and
    // guest symlinks are stored as plain files (they cannot point the host anywhere).
    args.push(
      '-fsdev', `local,id=fs${i},path=${qemuOpt(s.path)},security_model=mapped-xattr${s.readonly ? ',readonly=on' : ''}`,
      '-device', `virtio-9p-device,fsdev=fs${i},mount_tag=${s.tag}`,
    );
  });
  if (input.net) {
    claimSlot();
    // ipv6=off: one address family to police. Forwards listen on host loopback only.
    const fwd = input.net.hostForwards.map((f) => `,hostfwd=tcp:127.0.0.1:${f.hostPort}-:${f.guestPort}`).join('');
    if (input.net.tapFd !== undefined) {
      // A jailed VM's tap (its other end is slirp4netns's, outside qemu's network namespace),
      // and beside it a user network attached to nothing (restrict=on: it reaches nothing
      // either): its `slirp` section of the saved state lets a template or snapshot saved by
      // a VM on qemu's own user network restore here, and the reverse (qemu refuses a state
      // with a section it has no instance for).
      args.push('-netdev', `tap,id=net0,fd=${input.net.tapFd}`, '-netdev', 'user,id=slirpstate,restrict=on,ipv6=off');
    } else {
      args.push('-netdev', `user,id=net0,ipv6=off${fwd}`);
    }
    args.push('-device', 'virtio-net-device,netdev=net0');
  }
  return args;
}
