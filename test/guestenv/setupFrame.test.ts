// The SETUP frame against the real agent, run on the host in its --port mode (where it
// validates SETUP but applies nothing: it would change the host). Hostile or broken
// payloads get an error answer; the agent keeps serving.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PayloadWriter } from '../../src/agent/frame.ts';
import { encodeSetup } from '../../src/agent/setupOps.ts';
import { run, startHostAgent, type HostAgent } from '../helpers/hostAgent.ts';

describe('SETUP frames (real agent, host mode)', () => {
  let agent: HostAgent;
  beforeAll(async () => {
    agent = await startHostAgent();
  });
  afterAll(async () => {
    await agent?.close();
  });

  it('accepts a well-formed list of every op, split over frames when large', async () => {
    const frames = encodeSetup([
      { op: 'mkdir', path: '/srv/x', mode: 0o755 },
      { op: 'write', path: '/srv/big', mode: 0o644, data: Buffer.alloc(3 * 1024 * 1024, 1) },
      { op: 'symlink', target: '../x', path: '/srv/l' },
      { op: 'remove', path: '/srv/old' },
      { op: 'mount9p', tag: 'corral.v0', path: '/data', readonly: true },
      { op: 'mountTmpfs', path: '/scratch', sizeMib: 10 },
      { op: 'net', ifname: 'eth0', address: '10.0.2.15', prefix: 24, gateway: '10.0.2.2' },
      { op: 'umount', path: '/data' },
    ]);
    expect(frames.length).toBeGreaterThan(3);
    for (const f of frames) await agent.client.setup(f.payload);
  });

  it('refuses bad payloads with an error naming the op, and serves on', async () => {
    const bad = [
      new PayloadWriter().u32(0).finish(), // no ops
      new PayloadWriter().u32(1).u32(99).finish(), // unknown op
      new PayloadWriter().u32(1).u32(1).str('relative/x').u32(0o755).finish(),
      new PayloadWriter().u32(1).u32(1).str('/a/../b').u32(0o755).finish(),
      new PayloadWriter().u32(1).u32(2).str('/proc/sys/x').u32(0o644).u32(0).bytes(Buffer.from('x')).finish(),
      new PayloadWriter().u32(1).u32(6).str('/t').u32(0).finish(), // tmpfs of 0 MiB
      new PayloadWriter().u32(1).u32(5).str('bad tag!').str('/d').u32(0).finish(),
      new PayloadWriter().u32(1).u32(8).str('/sys/fs/cgroup').finish(), // umount in /sys
      new PayloadWriter().u32(2).u32(4).str('/ok').finish(), // says 2 ops, has 1
      new PayloadWriter().u32(1).u32(4).str('/ok').u32(7).finish(), // trailing bytes
      new PayloadWriter().u32(0xffffffff).finish(), // absurd count
    ];
    for (const p of bad) await expect(agent.client.setup(p)).rejects.toMatchObject({ code: 'E_AGENT' });
    const r = await run(agent.client, ['echo', 'still here']);
    expect(r.stdout.toString()).toBe('still here\n');
  });
});
