// The console lines that say how a guest ended itself, as the guest kernel prints them
// (captured from real boots; the real VMs are in test/sdk/guestEnd.test.ts).
import { describe, expect, it } from 'vitest';
import { watchGuestEnd, type GuestEnd } from '../../src/vm/guestEnd.ts';

function feed(...chunks: string[]): GuestEnd[] {
  const seen: GuestEnd[] = [];
  const watch = watchGuestEnd((how) => seen.push(how));
  for (const c of chunks) watch(c);
  return seen;
}

describe('watchGuestEnd', () => {
  it.each([
    ['reboot: Power down\r\n', 'poweroff'],
    // a power-off with no power-off driver, and a halt: the kernel prints the same line
    ['reboot: System halted\r\n', 'poweroff'],
    ['reboot: Restarting system\r\n', 'reboot'],
    ['Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000005\r\n', 'panic'],
    ['[    3.141592] reboot: Power down\r\n', 'poweroff'],
  ] as const)('reads %j as %s', (line, how) => {
    expect(feed(line)).toEqual([how]);
  });

  it('joins a line split across chunks, and reports only the first end', () => {
    expect(feed('booting\r\nreboot: Po', 'wer down\r\nreboot: Restarting system\r\n')).toEqual(['poweroff']);
  });

  it('ignores the same words inside other output and lines not yet ended', () => {
    expect(feed('echo reboot: Power down\r\n', 'reboot: Power down')).toEqual([]);
  });
});
