// Network policies enforced on the host, and port publishing. Real VMs (template restores)
// against real TCP servers on host loopback: the guest reaches the host as 10.0.2.2, which
// the VM's qemu turns into connections to 127.0.0.1 — exactly what publicOnly must refuse.
// Needs root and nftables (scripts/setup-guest-env.sh); no traffic leaves this machine.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import type { Server } from 'node:http';
import { connect } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NetworkPolicy, Sandbox } from '../../src/index.ts';
import { cgroup2Root, policyRuleset } from '../../src/guestenv/netfilter.ts';
import type { Supervisor } from '../../src/supervisor/Supervisor.ts';
import { fetchIn, freePort, listen, portOf } from '../helpers/net.ts';
import { testSupervisor, uniqueName } from '../helpers/sandbox.ts';

const listen6 = (body: string) => listen(body, '::1');

describe('network policies and published ports', () => {
  let sup: Supervisor;
  let open: Server;
  let other: Server;
  let none: Sandbox;
  let all: Sandbox;
  let pub: Sandbox;
  let hostPort: number;

  beforeAll(async () => {
    sup = testSupervisor();
    [open, other] = await Promise.all([listen('open-port'), listen('other-port')]);
    hostPort = await freePort();
    // The first NIC sandbox builds the NIC-shaped template; the others restore it.
    all = await Sandbox.builder(uniqueName('net-all')).network((n) => n.policy(NetworkPolicy.allowAll())).port(hostPort, 8080).supervisor(sup).create();
    [none, pub] = await Promise.all([
      Sandbox.builder(uniqueName('net-none')).network((n) => n.policy(NetworkPolicy.none())).supervisor(sup).create(),
      Sandbox.builder(uniqueName('net-pub'))
        .network((n) => n.policy(NetworkPolicy.publicOnly().allow({ cidr: '127.0.0.1/32', protocol: 'tcp', port: portOf(open) })))
        .supervisor(sup)
        .create(),
    ]);
  });
  afterAll(async () => {
    await Promise.all([none, all, pub].map((s) => s?.stop()));
    await sup?.close();
    await Promise.all([open, other].map((s) => s && new Promise((r) => s.close(r))));
  });

  it('with none the guest has no NIC and reaches nothing', async () => {
    const r = await none.shell('ls /sys/class/net; timeout 5 wget -q -O- http://10.0.2.2:1/ 2>&1 || echo FAIL');
    expect(r.stdout).toBe('lo\n' + r.stdout.slice(3));
    expect(r.stdout).toContain('FAIL');
    expect((await fetchIn(none, portOf(open))).stdout).toContain('FAIL');
  });

  it('with allowAll a TCP server on the host is reachable, and DNS points at the NIC', async () => {
    expect((await fetchIn(all, portOf(open))).stdout).toBe('open-port');
    expect((await fetchIn(all, portOf(other))).stdout).toBe('other-port');
    expect((await all.shell('cat /etc/resolv.conf')).stdout).toBe('nameserver 10.0.2.3\n');
  });

  it('with publicOnly the loopback server is refused, except the one port its rule allows', async () => {
    expect((await fetchIn(pub, portOf(open))).stdout).toBe('open-port');
    const refused = await fetchIn(pub, portOf(other));
    expect(refused.stdout).toMatch(/refused[\s\S]*FAIL/i);
  });

  it('root in the guest cannot route around the policy', async () => {
    // Renumber, re-route, use another of qemu's host aliases: the filter is on the host.
    const r = await pub.shell(
      `ifconfig eth0 10.0.2.77 netmask 255.255.255.0 && route add default gw 10.0.2.2 2>/dev/null; ` +
        `timeout 10 wget -q -O- http://10.0.2.2:${portOf(other)}/ 2>&1 || echo FAIL; id -u`,
    );
    expect(r.stdout).toMatch(/FAIL\n0\n$/);
  });

  it('has no IPv6: even root with an address and a route reaches nothing over v6', async () => {
    // slirp's IPv6 (off here) would map fec0::2 to the host's ::1, where this server listens.
    const v6 = await listen6('v6-port');
    try {
      const r = await all.shell(
        `awk '$6 == "eth0" && $1 !~ /^fe80/' /proc/net/if_inet6 | wc -l; ` +
          `ip -6 addr add fec0::15/64 dev eth0 && ip -6 route add default via fec0::2 dev eth0 && echo configured; ` +
          `timeout 10 wget -q -O- http://[fec0::2]:${portOf(v6)}/ 2>&1 || echo FAIL; id -u`,
      );
      expect(r.stdout).toMatch(/^0\nconfigured\n[\s\S]*FAIL\n0\n$/);
      // The server is up: the host itself reaches it on ::1.
      expect(await (await fetch(`http://[::1]:${portOf(v6)}/`)).text()).toBe('v6-port');
    } finally {
      await new Promise((r) => v6.close(r));
    }
  });

  it('counts the VM\'s network bytes on the host, for metrics', async () => {
    const big = await listen('x'.repeat(200_000));
    try {
      const before = await all.metrics();
      expect(before.network).not.toBeNull();
      expect((await all.shell(`timeout 20 wget -q -O- http://10.0.2.2:${portOf(big)}/ | wc -c`)).stdout.trim()).toBe('200000');
      const after = await all.metrics();
      expect(after.network!.rxBytes - before.network!.rxBytes).toBeGreaterThanOrEqual(200_000);
      expect(after.network!.txBytes).toBeGreaterThan(before.network!.txBytes);
      // No NIC, no counters.
      expect((await none.metrics()).network).toBeNull();
    } finally {
      await new Promise((r) => big.close(r));
    }
  });

  it('publishes and unpublishes a port on a running sandbox', async () => {
    await all.shell('mkdir -p /www2 && echo late-ok > /www2/index.html && httpd -p 8081 -h /www2');
    const late = await freePort();
    await all.publish(late, 8081);
    expect(await (await fetch(`http://127.0.0.1:${late}/index.html`)).text()).toBe('late-ok\n');
    // A host port that is taken (the one published at create), or one not published, is named.
    await expect(all.publish(hostPort, 8081)).rejects.toMatchObject({ code: 'E_INVALID_OPTION', message: expect.stringContaining('hostPort') });
    await all.unpublish(late);
    await expect(fetch(`http://127.0.0.1:${late}/index.html`)).rejects.toThrow();
    await expect(all.unpublish(late)).rejects.toMatchObject({ code: 'E_INVALID_OPTION', message: expect.stringContaining('not published') });
    await expect(all.publish(70000, 1)).rejects.toMatchObject({ code: 'E_INVALID_OPTION', message: expect.stringContaining('port.hostPort') });
    // No NIC, no forwarding: said so.
    await expect(none.publish(await freePort(), 8080)).rejects.toMatchObject({ code: 'E_ILLEGAL_STATE', message: expect.stringContaining('no network device') });
  });

  it("lets nothing reach the VM's sockets unasked but its published ports: not a listener an escaped qemu would open", async () => {
    // A process in the VM's network cgroup is, to the filter, the VM's qemu (slirp's sockets
    // are host sockets); a qemu taken over by its guest could listen like this one.
    const pid = (await all.info()).pid!;
    const rel = readFileSync(`/proc/${pid}/cgroup`, 'utf8').split('\n').find((l) => l.startsWith('0::'))!.slice(3);
    const listenIn = async (procs: string | undefined) => {
      const port = await freePort();
      const script = `${procs ? `require('fs').writeFileSync(${JSON.stringify(procs)}, String(process.pid));` : ''} require('net').createServer((s) => s.end('in\\n')).listen(${port}, '127.0.0.1', () => console.log('listening'))`;
      const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
      await once(child.stdout!, 'data');
      return { port, child };
    };
    const read = (port: number) =>
      new Promise<string>((resolve, reject) => {
        let got = '';
        connect(port, '127.0.0.1').on('data', (d) => (got += d)).on('end', () => resolve(got)).on('error', reject);
      });
    const inside = await listenIn(join(cgroup2Root(), rel, 'cgroup.procs'));
    const outside = await listenIn(undefined);
    try {
      await expect(read(inside.port)).rejects.toMatchObject({ code: expect.stringMatching(/^(ECONNREFUSED|ECONNRESET)$/) });
      expect(await read(outside.port)).toBe('in\n'); // the same listener outside the VM's cgroup is reached
      // The VM's own published port is reached, through the same filter.
      await all.shell('mkdir -p /www3 && echo pub-ok > /www3/index.html && httpd -p 8082 -h /www3');
      const late = await freePort();
      await all.publish(late, 8082);
      expect(await (await fetch(`http://127.0.0.1:${late}/index.html`)).text()).toBe('pub-ok\n');
      await all.unpublish(late);
    } finally {
      inside.child.kill();
      outside.child.kill();
    }
  });

  it('names a host port that is taken at create, instead of a VM that failed to start', async () => {
    const taken = uniqueName('net-taken');
    await expect(Sandbox.builder(taken).port(hostPort, 8080).supervisor(sup).create()).rejects.toMatchObject({ code: 'E_INVALID_OPTION', message: expect.stringContaining(`127.0.0.1:${hostPort}`) });
    await Sandbox.remove(taken, { supervisor: sup });
  });

  it('a published port serves an HTTP request from host loopback', async () => {
    await all.shell('mkdir -p /www && echo guest-ok > /www/index.html && httpd -p 8080 -h /www');
    const res = await fetch(`http://127.0.0.1:${hostPort}/index.html`);
    expect(res.status).toBe(200);
    expect(await res.text()).toBe('guest-ok\n');
  });

  it('generates first-match-wins nftables rules from a policy', () => {
    const rules = policyRuleset('corral_t', 'corral/t', NetworkPolicy.publicOnly().allow({ cidr: '10.0.0.5', protocol: 'tcp', port: [80, 90] }).deny({ protocol: 'udp' }).toJSON(), ['10.255.255.53']);
    const lines = rules.split('\n').map((l) => l.trim());
    const at = (s: string) => lines.indexOf(s);
    expect(at('ct state established,related goto pass')).toBeGreaterThan(-1);
    expect(at('ip daddr 10.255.255.53 meta l4proto { tcp, udp } th dport 53 goto pass')).toBeGreaterThan(at('ct state established,related goto pass'));
    expect(at('meta nfproto != ipv4 goto refuse')).toBeLessThan(at('ip daddr 10.0.0.5/32 tcp dport 80-90 goto pass'));
    expect(at('ip daddr 10.0.0.5/32 tcp dport 80-90 goto pass')).toBeLessThan(at('meta nfproto ipv4 meta l4proto udp goto refuse'));
    expect(at('meta nfproto ipv4 meta l4proto udp goto refuse')).toBeLessThan(at('ip daddr 10.0.0.0/8 goto refuse'));
    expect(lines).toContain('socket cgroupv2 level 2 "corral/t" goto egress');
    expect(lines[lines.indexOf('chain egress {') + 1]).toBe('ct state established,related goto pass');
    // Counters for metrics: what passes the filter out, what the VM's sockets receive.
    expect(lines[lines.indexOf('chain pass {') + 1]).toBe('counter name "tx" accept');
    expect(lines[lines.indexOf('chain input {') + 2]).toBe('socket cgroupv2 level 2 "corral/t" goto ingress');
    // In: replies, and new connections from host loopback to the published ports only.
    expect(lines.slice(lines.indexOf('chain ingress {') + 1, lines.indexOf('chain ingress {') + 6)).toEqual([
      'counter name "rx"',
      'ct state established,related accept',
      'iif lo ip daddr 127.0.0.1 tcp dport @published ct state new accept',
      'meta l4proto tcp reject with tcp reset',
      'drop',
    ]);
    expect(policyRuleset('corral_t', 'corral/t', NetworkPolicy.allowAll().toJSON(), [], [8080, 9090])).toContain('elements = { 8080, 9090 }');
  });
});
