// DNS where the policy allows it. The guest's resolver is slirp's 10.0.2.3, which qemu
// forwards to the nameserver of /etc/resolv.conf; CORRAL_GUEST_RESOLV_CONF swaps that file
// for one naming a tiny DNS server of this test on a loopback address (bind-mounted in the
// VM process's own mount namespace: the host's resolv.conf is not touched). Real VMs, real
// busybox nslookup, real UDP to host loopback and nowhere else. Needs root and nftables.
import { createSocket, type Socket } from 'node:dgram';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NetworkPolicy, Sandbox } from '../../src/index.ts';
import type { Supervisor } from '../../src/supervisor/Supervisor.ts';
import { testSupervisor, uniqueName } from '../helpers/sandbox.ts';

const NAME = 'corral-dns-test.example';
const ANSWER = [10, 9, 8, 7];

/** Answers A queries for NAME with ANSWER; every other question gets an empty answer. */
function dnsServer(address: string): Promise<{ socket: Socket; queries: string[] }> {
  const socket = createSocket('udp4');
  const queries: string[] = [];
  socket.on('message', (q, peer) => {
    if (q.length < 12) return;
    const labels: string[] = [];
    let off = 12;
    while (off < q.length && q[off]! > 0) {
      labels.push(q.subarray(off + 1, off + 1 + q[off]!).toString());
      off += q[off]! + 1;
    }
    const qtype = q.readUInt16BE(off + 1);
    const question = q.subarray(12, off + 5);
    const name = labels.join('.');
    queries.push(name);
    const hit = name === NAME && qtype === 1;
    const header = Buffer.alloc(12);
    q.copy(header, 0, 0, 2); // id
    header.writeUInt16BE(0x8180 | (q.readUInt16BE(2) & 0x0100), 2); // response, RD copied, RA, NOERROR
    header.writeUInt16BE(1, 4);
    header.writeUInt16BE(hit ? 1 : 0, 6);
    const answer = hit ? Buffer.from([0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, ...ANSWER]) : Buffer.alloc(0);
    socket.send(Buffer.concat([header, question, answer]), peer.port, peer.address);
  });
  return new Promise((resolve, reject) => {
    socket.once('error', reject);
    socket.bind(53, address, () => resolve({ socket, queries }));
  });
}

/** nslookup in the guest, through its resolv.conf or straight to slirp's 10.0.2.3. */
const lookup = (sb: Sandbox, server = '') => sb.shell(`timeout 15 nslookup -timeout=2 -retry=1 ${NAME} ${server} 2>&1 || echo FAIL`);

describe('DNS where the policy allows it', () => {
  let sup: Supervisor;
  let dir: string;
  let server: { socket: Socket; queries: string[] };
  let none: Sandbox;
  let dflt: Sandbox;
  let port53: Sandbox;
  let noDns: Sandbox;
  const saved = process.env.CORRAL_GUEST_RESOLV_CONF;

  beforeAll(async () => {
    sup = testSupervisor();
    // A loopback address of its own, so nothing else on port 53 is in the way.
    const address = `127.53.${(process.pid >> 8) & 255}.${(process.pid & 255) || 1}`;
    server = await dnsServer(address);
    dir = mkdtempSync(join(tmpdir(), 'corral-dns-'));
    writeFileSync(join(dir, 'resolv.conf'), `nameserver ${address}\n`);
    process.env.CORRAL_GUEST_RESOLV_CONF = join(dir, 'resolv.conf');
    [none, dflt, port53, noDns] = await Promise.all([
      Sandbox.builder(uniqueName('dns-none')).network((n) => n.policy(NetworkPolicy.none())).supervisor(sup).create(),
      Sandbox.builder(uniqueName('dns-deny')).network((n) => n.policy(NetworkPolicy.denyAll())).supervisor(sup).create(),
      // DNS off as a preset, on through a rule that opens port 53.
      Sandbox.builder(uniqueName('dns-53'))
        .network((n) => n.policy(NetworkPolicy.rules([{ action: 'allow', protocol: 'udp', port: 53 }], { dns: false })))
        .supervisor(sup)
        .create(),
      Sandbox.builder(uniqueName('dns-off')).network((n) => n.policy(NetworkPolicy.allowAll().dns(false).deny({ protocol: 'udp', port: 53 }))).supervisor(sup).create(),
    ]);
  });
  afterAll(async () => {
    await Promise.all([none, dflt, port53, noDns].map((s) => s?.stop()));
    await sup?.close();
    if (saved === undefined) delete process.env.CORRAL_GUEST_RESOLV_CONF;
    else process.env.CORRAL_GUEST_RESOLV_CONF = saved;
    server?.socket.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('resolves through the guest resolv.conf with the DNS that denyAll allows by default', async () => {
    const r = await lookup(dflt);
    expect(r.stdout).toContain(`Address: ${ANSWER.join('.')}`);
    expect(r.stdout).not.toContain('FAIL');
    expect(server.queries).toContain(NAME);
    expect((await dflt.shell('cat /etc/resolv.conf')).stdout).toBe('nameserver 10.0.2.3\n');
  });

  it('resolves through 10.0.2.3 when DNS is off but a rule allows port 53', async () => {
    const r = await lookup(port53, '10.0.2.3');
    expect(r.stdout).toContain(`Address: ${ANSWER.join('.')}`);
    expect(r.stdout).not.toContain('FAIL');
  });

  it('resolves nothing with none (no NIC) or with a policy denying port 53', async () => {
    const before = server.queries.length;
    const [a, b] = await Promise.all([lookup(none, '10.0.2.3'), lookup(noDns, '10.0.2.3')]);
    expect(a.stdout).toContain('FAIL');
    expect(b.stdout).toContain('FAIL');
    expect(b.stdout).not.toContain(ANSWER.join('.'));
    // Refused on the host: the server never saw a query from them.
    expect(server.queries.length).toBe(before);
  });

  it('rejects a CORRAL_GUEST_RESOLV_CONF that is not a file', async () => {
    const prev = process.env.CORRAL_GUEST_RESOLV_CONF;
    process.env.CORRAL_GUEST_RESOLV_CONF = 'relative/resolv.conf';
    try {
      const create = Sandbox.builder(uniqueName('dns-bad')).network((n) => n.policy(NetworkPolicy.allowAll())).supervisor(sup).create();
      await expect(create).rejects.toMatchObject({ code: 'E_INVALID_OPTION', message: expect.stringContaining('CORRAL_GUEST_RESOLV_CONF') });
    } finally {
      process.env.CORRAL_GUEST_RESOLV_CONF = prev;
    }
  });
});
