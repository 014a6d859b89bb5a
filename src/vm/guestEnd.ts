/**
 * How a guest ended itself, read from its serial console.
 *
 * The guest kernel (native/kernel/corral.config) has no ACPI: a power-off or halt, forced
 * (busybox `poweroff -f` calls reboot(2) itself) or through the agent (which handles the
 * signals busybox sends PID 1 without `-f`), only stops its CPUs and qemu would run on. What
 * the kernel always does first is print one emergency line on the console, which `quiet`
 * does not hide: the host reads the console from a pipe anyway, so this costs no polling.
 * A guest can print these lines itself (as root, on /dev/kmsg): all it gains is ending its
 * own sandbox, which it may do anyway.
 */

/**
 * `poweroff`: reboot(2) with POWER_OFF or HALT (one and the same here, below); `reboot`:
 * with RESTART; `panic`: a kernel panic (PID 1 exiting is one).
 */
export type GuestEnd = 'poweroff' | 'reboot' | 'panic';

// kernel/reboot.c (pr_fmt "reboot: ") and kernel/panic.c, as of Linux 6.1. A kernel with no
// power-off driver (no ACPI) turns POWER_OFF into HALT before it prints anything, so a
// `poweroff` reads "System halted" exactly as a `halt` does: the host cannot tell them
// apart and calls both a power-off (the guest asked to end; it cannot be woken anyway).
const LINES: readonly (readonly [RegExp, GuestEnd])[] = [
  [/^reboot: Power down\b/, 'poweroff'],
  [/^reboot: System halted\b/, 'poweroff'],
  [/^reboot: Restarting system\b/, 'reboot'],
  [/^Kernel panic - not syncing\b/, 'panic'],
];

/** The longest console line kept while waiting for its end: longer ones are no kernel line. */
const MAX_LINE = 1024;

/**
 * Feeds console text in chunks; calls `onEnd` once, for the first line that says the guest ended.
 *
 * @example
 * const watch = watchGuestEnd((how) => console.log(how));
 * child.stdout.on('data', watch); // 'reboot: Power down\r\n' → "poweroff"
 */
export function watchGuestEnd(onEnd: (how: GuestEnd) => void): (chunk: string) => void {
  let partial = '';
  let done = false;
  return (chunk) => {
    if (done) return;
    const lines = (partial + chunk).split('\n');
    partial = lines.pop()!.slice(-MAX_LINE);
    for (const raw of lines) {
      // The console may prefix a timestamp ("[    1.234] ") when printk.time is on.
      const line = raw.replace(/^\[[ \d.]+\] /, '').trimEnd();
      const hit = LINES.find(([re]) => re.test(line));
      if (hit) {
        done = true;
        onEnd(hit[1]);
        return;
      }
    }
  };
}
