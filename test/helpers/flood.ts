/**
 * Reading a fake guest's output flood (test/helpers/fake-qemu.mjs, mode `flood`: `mib` MiB of
 * the byte pattern 0, 1, … 255 repeated) the way a slow consumer would, checksumming it.
 */
import { createHash } from 'node:crypto';
import type { Sandbox } from '../../src/index.ts';

const MiB = 1024 * 1024;

/**
 * Runs the flood exec and reads it all, pausing 20 ms every 16 MiB (a guest that writes faster
 * must be held back, not queued). `onChunk` runs after each chunk (e.g. to sample RSS).
 */
export async function consumeFlood(sb: Sandbox, mib: number, onChunk?: () => void): Promise<{ bytes: number; intact: boolean; ms: number }> {
  const hash = createHash('sha256');
  let bytes = 0;
  const t0 = performance.now();
  for await (const item of sb.execStream('flood')) {
    if (item.type !== 'stdout') continue;
    hash.update(item.data);
    bytes += item.data.length;
    if (bytes % (16 * MiB) < item.data.length) await new Promise((r) => setTimeout(r, 20));
    onChunk?.();
  }
  const ms = performance.now() - t0;
  const pattern = Buffer.alloc(MiB);
  for (let i = 0; i < MiB; i++) pattern[i] = i & 0xff;
  const want = createHash('sha256');
  for (let i = 0; i < mib; i++) want.update(pattern);
  return { bytes, intact: bytes === mib * MiB && hash.digest('hex') === want.digest('hex'), ms };
}
