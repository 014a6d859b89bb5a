// Resuming a detached sandbox's event stream from a seq after a forced disconnect loses
// nothing: `seq 1 200000` checksummed across two connections. Real VM, real host process.
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox, type SandboxEvent } from '../../src/index.ts';
import type { Supervisor } from '../../src/supervisor/Supervisor.ts';
import { testSupervisor, uniqueName } from '../helpers/sandbox.ts';

function expectedSeq(n: number): string {
  let s = '';
  for (let i = 1; i <= n; i++) s += `${i}\n`;
  return createHash('sha256').update(s).digest('hex');
}

describe('event streams with resume', () => {
  let sup: Supervisor;
  let sb: Sandbox;
  let name: string;

  beforeAll(async () => {
    sup = testSupervisor();
    name = uniqueName('resume');
    sb = await Sandbox.builder(name).supervisor(sup).createDetached();
  });
  afterAll(async () => {
    await sb?.stop().catch(() => {});
    await Sandbox.remove(name, { supervisor: sup }).catch(() => {});
    await sup?.close();
  });

  it('resumes from the last seq seen after the connection is dropped mid-stream, losing nothing', async () => {
    const seen: SandboxEvent[] = [];
    let dropped!: () => void;
    const droppedAt = new Promise<void>((r) => (dropped = r));
    let stdoutEvents = 0;
    const first = sup.events({ name, since: 0 }).subscribe({
      next: (e) => {
        seen.push(e);
        // Drop the connection abruptly in the middle of the output.
        if (e.type === 'exec.stdout' && ++stdoutEvents === 3) {
          first.unsubscribe();
          dropped();
        }
      },
    });
    const stream = await sb.execStream('seq', ['1', '200000']);
    await droppedAt;
    const lastSeen = seen.at(-1)!.seq;
    // Let the exec finish while nobody listens: the host buffers it.
    await stream.exited;

    const rest = await new Promise<SandboxEvent[]>((resolve, reject) => {
      const got: SandboxEvent[] = [];
      const sub = sb.events({ since: lastSeen }).subscribe({
        next: (e) => {
          got.push(e);
          if (e.type === 'exec.exited' && e.execId === stream.execId) {
            sub.unsubscribe();
            resolve(got);
          }
        },
        error: reject,
      });
    });
    expect(rest.some((e) => e.type === 'stream.gap')).toBe(false);
    // The drop really was mid-stream: output came over both connections.
    const isOut = (e: SandboxEvent) => e.type === 'exec.stdout' && e.execId === stream.execId;
    expect(seen.filter(isOut).length).toBeGreaterThan(0);
    expect(rest.filter(isOut).length).toBeGreaterThan(0);
    const all = [...seen, ...rest];
    // One stream: every seq exactly once, 1, 2, 3… without a gap.
    expect(all.map((e) => e.seq)).toEqual(all.map((_, i) => i + 1));
    const bytes = Buffer.concat(all.flatMap((e) => (e.type === 'exec.stdout' && e.execId === stream.execId ? [e.data] : [])));
    expect(bytes.length).toBe(1_288_895);
    expect(createHash('sha256').update(bytes).digest('hex')).toBe(expectedSeq(200_000));
  });

  it('streams live only without since, and ends after sandbox.stopped', async () => {
    // A sandbox of its own: this test stops it, and the one above must not depend on the order.
    const ownName = uniqueName('resume-live');
    const own = await Sandbox.builder(ownName).supervisor(sup).createDetached();
    try {
      const types: string[] = [];
      let exited = 0;
      const done = new Promise<void>((resolve, reject) => {
        own.events().subscribe({ next: (e) => (types.push(e.type), e.type === 'exec.exited' && exited++), complete: resolve, error: reject });
      });
      // The subscription is live once it has seen an event: run execs until one is seen.
      while (exited === 0) await own.exec('true');
      await own.stop();
      await done;
      expect(types[0]).not.toBe('sandbox.creating');
      expect(types).not.toContain('sandbox.started');
      expect(types).toContain('exec.exited');
      expect(types.at(-1)).toBe('sandbox.stopped');
    } finally {
      await own.stop(); // idempotent: a no-op once stopped
      await Sandbox.remove(ownName, { supervisor: sup });
    }
  });
});
