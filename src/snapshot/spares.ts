/**
 * Spare VMs: restored from a template before a create asks for one, warmed (their first
 * exec run, so under TCG the guest's fork/exec paths are translated already) and frozen
 * (QMP `stop`: no CPU) until a create of the same shape takes one. A create that takes a
 * spare skips qemu's start, the restore and the first exec's translation: only the
 * sandbox's identity is handed over.
 *
 * Spares belong to the worker thread that made them (module state here): they die with it
 * (pdeathsig), and their overlays live in `<stateDir>/spares/<pid>/` until the supervisor
 * of that process closes, or the next one finds that process dead.
 */

import { existsSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { Vm } from '../vm/Vm.ts';
import { processAlive } from '../runtime/process.ts';
import type { Logger } from '../runtime/log.ts';

export interface Spare {
  readonly vm: Vm;
  /** Its overlay (upper disk), in the spares directory until a sandbox takes it. */
  readonly upper: string;
}

interface Slots {
  readonly ready: Spare[];
  making: number;
}

const byKey = new Map<string, Slots>();

function slots(key: string): Slots {
  let s = byKey.get(key);
  if (!s) byKey.set(key, (s = { ready: [], making: 0 }));
  return s;
}

/** The directory of this process's spare overlays. */
export function sparesDir(stateDir: string): string {
  return join(stateDir, 'spares', String(process.pid));
}

/** A ready spare of shape `key` (whose VM is still there), taken out of the pool; else undefined. */
export function takeSpare(key: string): Spare | undefined {
  const s = byKey.get(key);
  while (s?.ready.length) {
    const spare = s.ready.shift()!;
    if (!spare.vm.isExited) return spare;
  }
  return undefined;
}

/** How many spares of `key` are ready or being made. */
export function spareCount(key: string): number {
  const s = byKey.get(key);
  return s ? s.ready.length + s.making : 0;
}

/**
 * Starts making spares of `key` until `depth` are ready or under way. A spare that cannot
 * be made is logged and not retried until the next create of its shape asks again.
 */
export function refillSpares(key: string, depth: number, make: () => Promise<Spare>, log: Logger): void {
  const s = slots(key);
  while (s.ready.length + s.making < depth) {
    s.making++;
    make().then(
      (spare) => {
        s.making--;
        s.ready.push(spare);
      },
      (err: unknown) => {
        s.making--;
        log.warn(`making a spare VM of template ${key} failed: ${(err as Error).message}`);
      },
    );
  }
}

/** Removes the spare overlays of processes that are gone (theirs died with them). */
export function sweepStaleSpares(stateDir: string): void {
  const dir = join(stateDir, 'spares');
  if (!existsSync(dir)) return;
  for (const pid of readdirSync(dir)) {
    if (Number(pid) === process.pid || (/^\d+$/.test(pid) && processAlive(Number(pid)))) continue;
    rmSync(join(dir, pid), { recursive: true, force: true });
  }
}
