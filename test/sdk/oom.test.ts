// An exec the guest kernel's OOM killer kills says so: the agent runs each exec in a cgroup
// of its own and reads its memory.events oom_kill count when it ends.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox } from '../../src/index.ts';
import type { Supervisor } from '../../src/supervisor/Supervisor.ts';
import { testSupervisor, uniqueName } from '../helpers/sandbox.ts';

describe('an exec killed by the OOM killer', () => {
  let sup: Supervisor;
  let sb: Sandbox;

  beforeAll(async () => {
    sup = testSupervisor();
    sb = await Sandbox.builder(uniqueName('oom')).image('corral/base').memory(128).cpus(1).template(false).supervisor(sup).create();
  });
  afterAll(async () => {
    await sb?.stop();
    await sup?.close();
  });

  it('ends with reason "oom", while a plain SIGKILL stays "signaled"', async () => {
    // awk keeps copies of a 32 MiB string until a 128 MiB guest runs out: the OOM killer
    // must act (each allocation alone is small enough for the kernel's overcommit check).
    const r = await sb.exec('awk', ['BEGIN { s = "x"; for (i = 0; i < 25; i++) s = s s; for (i = 0; i < 40; i++) a[i] = s i; print length(a[1]) }']);
    expect(r.oomKilled).toBe(true);
    expect(r.reason).toBe('oom');
    expect(r.signal === 9 || r.code === 137).toBe(true);
    expect(r.toJSON().reason).toBe('oom');

    const s = await sb.execStream('sleep', ['30']);
    await s.kill(9);
    const x = await s.exited;
    expect(x).toMatchObject({ signal: 9, oomKilled: false });
    // the guest lives on, and a later exec is not blamed for the earlier kill
    const ok = await sb.shell('echo fine');
    expect(ok).toMatchObject({ code: 0, stdout: 'fine\n', oomKilled: false, reason: 'exited' });
  });

  it('runs each exec in a group of its own from its first instruction, its descendants with it', async () => {
    const group = async () => (await sb.exec('cat', ['/proc/self/cgroup'])).stdout.trim();
    const first = await group();
    expect(first).toMatch(/^0::\/exec-\d+$/);
    // An emptied group serves the next exec; one a descendant still lives in is not reused.
    expect(await group()).toBe(first);
    const held = await sb.shell('sleep 30 >/dev/null 2>&1 & cat /proc/self/cgroup');
    expect(held.stdout.trim()).toMatch(/^0::\/exec-\d+$/);
    expect(await group()).not.toBe(held.stdout.trim());
    // A descendant's OOM kill is the exec's, though its own process exits 0.
    const r = await sb.shell('awk \'BEGIN { s = "x"; for (i = 0; i < 25; i++) s = s s; for (i = 0; i < 40; i++) a[i] = s i }\'; exit 0');
    expect(r).toMatchObject({ code: 0, oomKilled: true });
  });
});
