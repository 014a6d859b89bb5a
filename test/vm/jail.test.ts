// The walls around a VM process (src/vm/jail.ts, native/jail), tried from inside: a process
// enters the jailed qemu's namespaces (nsenter) with its uid and gid, and is then what a guest
// that escaped into qemu would be. Real VMs; this host is root with cgroup v1 controllers
// (hybrid), so the limits are read from v1 files there and from v2 files elsewhere.
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NetworkPolicy, Sandbox, type SandboxEvent } from '../../src/index.ts';
import { qcow2Backing } from '../../src/vm/qcow2.ts';
import { sandboxDir } from '../../src/runtime/rootfs.ts';
import type { Supervisor } from '../../src/supervisor/Supervisor.ts';
import { testSupervisor, uniqueName } from '../helpers/sandbox.ts';

const run = promisify(execFile);

/** `Key: value` lines of /proc/<pid>/status. */
function status(pid: number): Record<string, string> {
  return Object.fromEntries(
    readFileSync(`/proc/${pid}/status`, 'utf8')
      .split('\n')
      .filter((l) => l.includes(':'))
      .map((l) => [l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 1).trim()]),
  );
}

/** Runs a bash script as the jailed qemu `pid` would: in its namespaces, with its uid and gid. */
async function asJailed(pid: number, uid: number, script: string): Promise<string> {
  const args = ['-t', String(pid), '-m', '-p', '-n', '-i', '-u', '-S', String(uid), '-G', String(uid), '-r', '-w', '--', '/usr/bin/bash', '-c', script];
  const { stdout } = await run('nsenter', args, { timeout: 30_000 });
  return stdout;
}

/** The paths qemu was given for its agent socket (in its own run dir). */
function runDirOf(pid: number): string {
  const arg = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').find((a) => a.startsWith('socket,id=agent,path='))!;
  return arg.slice('socket,id=agent,path='.length).replace(/\/a\.sock$/, '');
}

/** The VM's directory in the memory controller's hierarchy (v1 or v2), from /proc/<pid>/cgroup. */
function cgroupFiles(pid: number): { version: 'v1' | 'v2'; memory: string; cpu: string; pids: string } {
  const lines = readFileSync(`/proc/${pid}/cgroup`, 'utf8').trim().split('\n').map((l) => l.split(':'));
  const v1 = (c: string) => lines.find(([, ctl]) => ctl!.split(',').includes(c))?.[2];
  if (v1('memory')) {
    return { version: 'v1', memory: join('/sys/fs/cgroup/memory', v1('memory')!), cpu: join('/sys/fs/cgroup/cpu', v1('cpu')!), pids: join('/sys/fs/cgroup/pids', v1('pids')!) };
  }
  const dir = join('/sys/fs/cgroup', lines.find(([h]) => h === '0')![2]!);
  return { version: 'v2', memory: dir, cpu: dir, pids: dir };
}

describe('the jail of a VM process', () => {
  let sup: Supervisor;
  let a: Sandbox;
  let b: Sandbox;
  let server: Server;
  let port: number;
  beforeAll(async () => {
    sup = testSupervisor();
    const made = await Promise.all([uniqueName('jail-a'), uniqueName('jail-b')].map((n) => Sandbox.builder(n).supervisor(sup).create()));
    a = made[0]!;
    b = made[1]!;
    // A host service on loopback that a process outside the jail reaches.
    server = createServer((s) => s.end('host\n'));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    port = (server.address() as { port: number }).port;
  });
  afterAll(async () => {
    await new Promise((r) => server?.close(r));
    for (const sb of [a, b]) {
      if (!sb) continue;
      await sb.kill();
      await Sandbox.remove(sb.name, { supervisor: sup });
    }
    await sup?.close();
  });

  it('runs qemu as an unprivileged uid of its own, with no capabilities, no_new_privs and seccomp, as PID 1 of its namespace', async () => {
    const [ia, ib] = [await a.info(), await b.info()];
    expect(ia.jail).toMatchObject({ jailed: true, netns: true, missing: [] });
    expect(ia.jail!.uid).toBeGreaterThanOrEqual(1_000_000_000);
    expect(ib.jail!.uid).not.toBe(ia.jail!.uid);
    const st = status(ia.pid!);
    expect(st.Uid!.split(/\s+/)).toEqual(Array(4).fill(String(ia.jail!.uid)));
    expect(st.Gid!.split(/\s+/)).toEqual(Array(4).fill(String(ia.jail!.uid)));
    expect(st.Groups).toBe('');
    for (const set of ['CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb']) expect(st[set], set).toBe('0000000000000000');
    expect(st.NoNewPrivs).toBe('1');
    expect(st.Seccomp).toBe('2');
    expect(st.NSpid!.split(/\s+/)).toEqual([String(ia.pid), '1']);
    // Its namespaces are not the host's.
    for (const ns of ['mnt', 'pid', 'net', 'ipc', 'uts', 'cgroup']) {
      expect(readlinkSync(`/proc/${ia.pid}/ns/${ns}`), ns).not.toBe(readlinkSync(`/proc/self/ns/${ns}`));
    }
  });

  it('puts it in a cgroup of its own with memory, CPU and task limits', async () => {
    const info = await a.info();
    const limits = info.jail!.limits!;
    expect(limits.memoryMaxBytes).toBe((256 + 512) * 1024 * 1024); // guest 256 MiB + TCG overhead
    const cg = cgroupFiles(info.pid!);
    expect(cg.memory).toMatch(/\/corral-vm-[0-9a-f]+$/);
    expect(cgroupFiles((await b.info()).pid!).memory).not.toBe(cg.memory);
    const read = (f: string) => readFileSync(f, 'utf8').trim();
    if (cg.version === 'v1') {
      expect(Number(read(join(cg.memory, 'memory.limit_in_bytes')))).toBe(limits.memoryMaxBytes);
      expect(read(join(cg.cpu, 'cpu.cfs_quota_us'))).toBe('100000');
      expect(read(join(cg.cpu, 'cpu.cfs_period_us'))).toBe('100000');
      // Weighs what its busy threads (1 vCPU + qemu's main loop) weighed as plain processes.
      expect(read(join(cg.cpu, 'cpu.shares'))).toBe('2048');
    } else {
      expect(Number(read(join(cg.memory, 'memory.max')))).toBe(limits.memoryMaxBytes);
      expect(read(join(cg.cpu, 'cpu.max'))).toBe('100000 100000');
      expect(read(join(cg.cpu, 'cpu.weight'))).toBe('200');
    }
    expect(Number(read(join(cg.pids, 'pids.max')))).toBe(limits.pidsMax);
    expect(read(join(cg.pids, 'cgroup.procs')).split('\n')).toContain(String(info.pid));
  });

  it('leaves an escaped qemu nothing of the host: not the state dir, the store, another VM or the network', async () => {
    const info = await a.info();
    const pid = info.pid!;
    const own = join(sandboxDir(sup.stateDir, a.name), 'upper.qcow2');
    const other = join(sandboxDir(sup.stateDir, b.name), 'upper.qcow2');
    const otherRun = runDirOf((await b.info()).pid!);
    // Each line: what was tried, then "ok" if it worked, "no" if it did not.
    const out = await asJailed(
      pid,
      info.jail!.uid!,
      [
        `t() { if eval "$2" >/dev/null 2>&1; then echo "$1 ok"; else echo "$1 no"; fi; }`,
        `t own-disk 'head -c 4 ${own}'`, // the control: what it must use, it can
        // The paths to its own files exist (empty directories of the jail's own root), no more.
        `echo "state-dir: $(ls -A ${sup.stateDir} | tr '\\n' ' ')"`,
        `echo "sandboxes: $(ls -A ${join(sup.stateDir, 'sandboxes')} | tr '\\n' ' ')"`,
        `echo "root: $(ls -A / | tr '\\n' ' ')"`,
        `t store 'head -c 1 ${join(sup.stateDir, 'store.lmdb', 'data.mdb')}'`,
        `t other-disk 'head -c 1 ${other}'`,
        `t other-run-dir 'ls ${otherRun}'`,
        `t host-proc 'ls /proc/1'`,
        `t host-etc 'cat /etc/passwd'`,
        `t write-root 'touch /x'`,
        `t write-usr 'touch /usr/x'`,
        `t host-loopback 'echo > /dev/tcp/127.0.0.1/${port}'`,
        `t internet 'echo > /dev/tcp/1.1.1.1/53'`,
        `echo "id $(id -u):$(id -g)"`,
      ].join('\n'),
    );
    expect(out.trim().split('\n')).toEqual([
      'own-disk ok',
      'state-dir: sandboxes templates ',
      `sandboxes: ${a.name} `,
      expect.stringMatching(/^root: (bin )?dev etc (lib )?(lib64 )?(root )?(sbin )?tmp usr $/),
      'store no',
      'other-disk no',
      'other-run-dir no',
      'host-proc no',
      'host-etc no',
      'write-root no',
      'write-usr no',
      'host-loopback no',
      'internet no',
      `id ${info.jail!.uid}:${info.jail!.uid}`,
    ]);
    // The same service is there for the host: the wall is the jail's, not a closed port.
    const { stdout } = await run('bash', ['-c', `exec 3<>/dev/tcp/127.0.0.1/${port}; cat <&3`]);
    expect(stdout).toBe('host\n');
  });

  it("gives a VM with a NIC a network namespace of its own: an escaped qemu reaches nothing, its guest reaches the host through slirp4netns under its policy", async () => {
    const n = await Sandbox.builder(uniqueName('jail-nic'))
      .network((net) => net.policy(NetworkPolicy.allowAll()))
      .supervisor(sup)
      .create();
    let slirp: number | undefined;
    try {
      const info = await n.info();
      const pid = info.pid!;
      expect(info.jail).toMatchObject({ jailed: true, netns: true, missing: [] });
      expect(readlinkSync(`/proc/${pid}/ns/net`)).not.toBe(readlinkSync('/proc/self/ns/net'));
      // slirp4netns: the process whose target is this qemu's network namespace.
      const ns = `/proc/${pid}/ns/net`;
      slirp = readdirSync('/proc').map(Number).find((p) => p > 0 && existsSync(`/proc/${p}/cmdline`) && readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0').includes(ns));
      expect(slirp).toBeDefined();
      const cmd = readFileSync(`/proc/${slirp}/cmdline`, 'utf8').split('\0');
      const api = cmd[cmd.indexOf('--api-socket') + 1]!;
      expect(existsSync(api)).toBe(true);
      const out = await asJailed(
        pid,
        info.jail!.uid!,
        [
          `t() { if eval "$2" >/dev/null 2>&1; then echo "$1 ok"; else echo "$1 no"; fi; }`,
          // What its namespace holds: the bridge between its tap and slirp4netns's, and no address but loopback's.
          `echo "links: $(ip -br link | cut -d' ' -f1 | sed 's/@.*//' | sort | tr '\\n' ' ')"`,
          `echo "addresses: $(ip -br -4 addr | tr -s ' ' | cut -d' ' -f1,3 | tr '\\n' ' ')"`,
          `t host-loopback 'echo > /dev/tcp/127.0.0.1/${port}'`,
          `t gateway 'echo > /dev/tcp/10.0.2.2/${port}'`,
          `t internet 'echo > /dev/tcp/1.1.1.1/53'`,
          `t slirp-api 'test -e ${api}'`,
          `t add-address 'ip addr add 10.0.2.99/24 dev br0'`,
        ].join('\n'),
      );
      expect(out.trim().split('\n')).toEqual(['links: br0 lo slirp0 vm0 ', 'addresses: lo 127.0.0.1/8 ', 'host-loopback no', 'gateway no', 'internet no', 'slirp-api no', 'add-address no']);
      // The control: the guest, through its NIC, reaches the host service its policy allows.
      expect((await n.exec('sh', ['-c', `nc 10.0.2.2 ${port} </dev/null`])).stdout).toBe('host\n');
      // slirp4netns: outside qemu's namespace, no capability but binding low ports, under seccomp, in the policy's cgroup.
      const st = status(slirp!);
      expect(st.CapEff).toBe('0000000000000400'); // CAP_NET_BIND_SERVICE
      expect(st.Seccomp).toBe('2');
      expect(readlinkSync(`/proc/${slirp}/ns/net`)).toBe(readlinkSync('/proc/self/ns/net'));
      const v2 = (p: number) => readFileSync(`/proc/${p}/cgroup`, 'utf8').split('\n').find((l) => l.startsWith('0::'));
      expect(v2(slirp!)).toBe(v2(pid));
      await n.stop();
      // It went with the VM, and so did its API socket.
      expect(existsSync(`/proc/${slirp}`)).toBe(false);
      expect(existsSync(api)).toBe(false);
    } finally {
      await n.kill();
      await Sandbox.remove(n.name, { supervisor: sup });
    }
  });

  it('shows a VM with volumes a /proc of its own processes only, and its volumes as their owner', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'corral-jail-vol-'));
    const sb = await Sandbox.builder(uniqueName('jail-vol')).volume('/data', (v) => v.bind(dir)).supervisor(sup).create();
    try {
      expect((await sb.shell('echo from-guest > /data/f && cat /data/f')).stdout).toBe('from-guest\n');
      // Written through an idmapped mount: on the host the file belongs to the volume's owner.
      expect(statSync(join(dir, 'f')).uid).toBe(statSync(dir).uid);
      expect(readFileSync(join(dir, 'f'), 'utf8')).toBe('from-guest\n');
      const info = await sb.info();
      const out = await asJailed(info.pid!, info.jail!.uid!, 'ls /proc | grep -E "^[0-9]+$" | sort -n | tr "\\n" " "; echo; ls /proc/meminfo /proc/sys 2>&1 | wc -l');
      const [pids, otherEntries] = out.trim().split('\n');
      // qemu is PID 1; the other pids are this nsenter'd shell and its children.
      expect(pids!.trim().split(' ')[0]).toBe('1');
      expect(pids!.trim().split(' ').every((p) => Number(p) < 100)).toBe(true);
      expect(otherEntries).toBe('2'); // two "No such file" lines: no host-wide /proc files
    } finally {
      await sb.kill();
      await Sandbox.remove(sb.name, { supervisor: sup });
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("holds a clone's template RAM file read-only: qemu's own fd, and the jail's mount", async () => {
    const clone = await Sandbox.builder(uniqueName('jail-ram')).supervisor(sup).create();
    try {
      const info = await clone.info();
      const mem = join(dirname(qcow2Backing(join(sandboxDir(sup.stateDir, clone.name), 'upper.qcow2'))!), 'mem');
      const ctime = () => statSync(mem, { bigint: true }).ctimeNs.toString();
      const built = (JSON.parse(readFileSync(join(dirname(mem), 'meta.json'), 'utf8')) as { memCtimeNs: string }).memCtimeNs;
      expect(ctime()).toBe(built);
      // qemu 7.2 opens it read-write; the preloaded shim (native/jail/ropen.c) made that read-only.
      const fds = readdirSync(`/proc/${info.pid}/fd`).filter((fd) => readlinkSync(`/proc/${info.pid}/fd/${fd}`) === mem);
      expect(fds.length).toBe(1);
      const flags = Number.parseInt(/^flags:\s*(\d+)$/m.exec(readFileSync(`/proc/${info.pid}/fdinfo/${fds[0]}`, 'utf8'))![1]!, 8);
      expect(flags & 0o3).toBe(0); // O_RDONLY
      // The guest writes its RAM (copy-on-write, its own pages) and runs on.
      expect((await clone.shell('dd if=/dev/urandom of=/tmp/x bs=1M count=8 2>/dev/null && wc -c < /tmp/x')).stdout).toBe('8388608\n');
      // What an escaped qemu can do: read it, not write it, not change its mode.
      const out = await asJailed(
        info.pid!,
        info.jail!.uid!,
        [
          `t() { if eval "$2" >/dev/null 2>&1; then echo "$1 ok"; else echo "$1 no"; fi; }`,
          `t read 'head -c 1 ${mem}'`,
          `t write "printf 'x' | dd of=${mem} bs=1 count=1 conv=notrunc"`,
          `t chmod 'chmod 666 ${mem}'`,
        ].join('\n'),
      );
      expect(out.trim().split('\n')).toEqual(['read ok', 'write no', 'chmod no']);
      expect(ctime()).toBe(built);
    } finally {
      await clone.kill();
      await Sandbox.remove(clone.name, { supervisor: sup });
    }
  });

  it("notices a template RAM file changed on the host (an unjailed qemu could) and builds the template anew", async () => {
    const events: SandboxEvent[] = [];
    const sub = sup.events$.subscribe((e) => events.push(e));
    const clone = await Sandbox.builder(uniqueName('jail-tamper')).supervisor(sup).create();
    let next: Sandbox | undefined;
    try {
      const mem = join(dirname(qcow2Backing(join(sandboxDir(sup.stateDir, clone.name), 'upper.qcow2'))!), 'mem');
      // Where the jail is off (CORRAL_JAIL=off, a host without it) qemu holds the file writable.
      await run('bash', ['-c', `printf '\\0' | dd of=${mem} bs=1 count=1 seek=$(( $(stat -c %s ${mem}) - 1 )) conv=notrunc 2>/dev/null`]);
      await clone.kill();
      const key = events.find((e) => e.type === 'sandbox.restored' && e.name === clone.name) as Extract<SandboxEvent, { type: 'sandbox.restored' }>;
      next = await Sandbox.builder(uniqueName('jail-after')).supervisor(sup).create();
      expect(events.filter((e) => e.type === 'template.built' && e.name === next!.name).map((e) => (e as { key: string }).key)).toEqual([key.template]);
      expect((await next.shell('echo fresh')).stdout).toBe('fresh\n');
    } finally {
      sub.unsubscribe();
      await clone.kill();
      await Sandbox.remove(clone.name, { supervisor: sup });
      if (next) {
        await next.kill();
        await Sandbox.remove(next.name, { supervisor: sup });
      }
    }
  });

  it("stops a sandbox whose qemu its cgroup's OOM killer ended with reason out-of-memory", async () => {
    const sb = await Sandbox.builder(uniqueName('jail-oom')).supervisor(sup).create();
    try {
      const info = await sb.info();
      const cg = cgroupFiles(info.pid!);
      // The host tightens the limit (as a smaller host would have set it); the guest then fills its RAM.
      const used = Number(readFileSync(join(cg.memory, cg.version === 'v1' ? 'memory.usage_in_bytes' : 'memory.current'), 'utf8'));
      const limit = String(used + 16 * 1024 * 1024);
      if (cg.version === 'v1') {
        const memsw = join(cg.memory, 'memory.memsw.limit_in_bytes');
        await run('sh', ['-c', `echo ${limit} > ${join(cg.memory, 'memory.limit_in_bytes')}; [ -e ${memsw} ] && echo ${limit} > ${memsw}; true`]);
      } else {
        await run('sh', ['-c', `echo ${limit} > ${join(cg.memory, 'memory.max')}`]);
      }
      const waited = sb.wait();
      await sb.exec('sh', ['-c', 'mount -t tmpfs -o size=200m none /mnt && head -c 180m /dev/zero > /mnt/fill']).catch((err: Error) => err);
      expect(await waited).toMatchObject({ status: 'stopped', stopReason: 'out-of-memory' });
      expect(existsSync(`/proc/${info.pid}`)).toBe(false);
      expect(existsSync(cg.memory)).toBe(false); // its cgroup went with it
    } finally {
      await sb.kill();
      await Sandbox.remove(sb.name, { supervisor: sup });
    }
  });
});
