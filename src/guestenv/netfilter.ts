/**
 * Host-side enforcement of a sandbox's network policy.
 *
 * The guest's NIC is user-mode networking (slirp): every connection the guest makes leaves
 * the host as a socket that the slirp process opens — a jailed VM's slirp4netns, outside
 * qemu's own network namespace (src/vm/jail.ts), or an unjailed qemu itself. That process is
 * started inside a cgroup of its own (`<cgroup2>/corral/<id>`, joined before it starts, so
 * every socket it ever opens belongs to it), and an nftables table of its own
 * (`inet corral_<id>`) filters the output hook for sockets of that cgroup only:
 *
 *   established/related → accept (replies; connections to published ports)
 *   DNS to the host's resolvers (if the policy allows DNS) → accept
 *   the policy's rules, first match wins → accept / reject
 *   the preset's rules, then its default
 *
 * and the input hook, for the same sockets:
 *
 *   established/related → accept (replies to what the guest sent; published ports' traffic)
 *   a new TCP connection from host loopback to a published port (set `published`) → accept
 *   anything else → TCP reset / drop
 *
 * so nothing reaches the VM's sockets unasked but through its published ports: not even a
 * listening socket of a slirp that its guest took over (slirp's sockets are host sockets).
 *
 * Rejections are TCP resets / ICMP admin-prohibited, so the guest sees "connection refused"
 * at once. Two named counters of the table count the VM's traffic for metrics: `tx`, what
 * its sockets sent and the filter let out; `rx`, what they received (the input hook, same
 * cgroup match). Bytes are IP packets as the host sees them (headers included). The filter sees the real destination: the guest's 10.0.2.2 (slirp's alias for
 * the host) arrives here as 127.0.0.1, and loopback is policed like anything else. Nothing
 * in the guest can change any of this: the table, the cgroup and slirp are host state.
 *
 * Needs root and nftables (scripts/setup-guest-env.sh). The table and cgroup are removed
 * when the VM ends; ones left by a killed host process are swept at the next start.
 */

import { runtimeVar } from '../runtime/actorEnv.ts';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { mkdir, readFile, readdir, rmdir } from 'node:fs/promises';
import { isAbsolute, join } from 'node:path';
import { CorralError } from '../errors.ts';
import { NON_PUBLIC_CIDRS, type NetworkPolicyConfig, type NetworkRule } from './NetworkPolicy.ts';
import { logFailure } from '../runtime/log.ts';
import { cgroup2Root } from '../vm/cgroups.ts';

export { cgroup2Root };

/** The guest side of the NIC (slirp's defaults). */
export const GUEST_NET = { ifname: 'eth0', address: '10.0.2.15', prefix: 24, gateway: '10.0.2.2', dns: '10.0.2.3' } as const;

/**
 * The resolv.conf whose nameservers slirp forwards the guests' DNS (10.0.2.3) to: the host's,
 * or the file `CORRAL_GUEST_RESOLV_CONF` names (bind-mounted over /etc/resolv.conf in a
 * mount namespace of the VM process only), for guests that should use another resolver.
 */
export function guestResolvConf(): string {
  const file = runtimeVar('CORRAL_GUEST_RESOLV_CONF');
  if (!file) return '/etc/resolv.conf';
  if (!isAbsolute(file) || !existsSync(file) || !statSync(file).isFile()) {
    throw new CorralError('E_INVALID_OPTION', `CORRAL_GUEST_RESOLV_CONF must be the absolute path of a resolv.conf file (got "${file}")`);
  }
  return file;
}

/** IPv4 nameservers of a resolv.conf (by default the host's: what slirp forwards the guest's DNS to). */
export function hostResolvers(file = '/etc/resolv.conf'): string[] {
  let text = '';
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return [];
  }
  return [...text.matchAll(/^\s*nameserver\s+(\d{1,3}(?:\.\d{1,3}){3})\s*$/gm)].map((m) => m[1]!);
}

function ruleMatch(r: Pick<NetworkRule, 'cidr' | 'protocol' | 'ports'>): string {
  const parts: string[] = [];
  if (r.cidr !== '0.0.0.0/0') parts.push(`ip daddr ${r.cidr}`);
  else parts.push('meta nfproto ipv4');
  const ports = r.ports ? (r.ports[0] === r.ports[1] ? `${r.ports[0]}` : `${r.ports[0]}-${r.ports[1]}`) : undefined;
  if (r.protocol === 'tcp' || r.protocol === 'udp') parts.push(ports ? `${r.protocol} dport ${ports}` : `meta l4proto ${r.protocol}`);
  else if (r.protocol === 'icmp') parts.push('meta l4proto icmp');
  else if (ports) parts.push(`meta l4proto { tcp, udp } th dport ${ports}`);
  return parts.join(' ');
}

/**
 * The nftables script (for `nft -f -`) of one sandbox's table. `cgroupPath` is relative to
 * the cgroup2 root, `level` its depth.
 */
export function policyRuleset(table: string, cgroupPath: string, policy: NetworkPolicyConfig, resolvers: readonly string[], published: readonly number[] = []): string {
  const level = cgroupPath.split('/').length;
  // Every accept goes through `pass`, which counts what leaves.
  const lines = ['ct state established,related goto pass'];
  if (policy.dns) for (const ns of resolvers) lines.push(`ip daddr ${ns} meta l4proto { tcp, udp } th dport 53 goto pass`);
  // The NIC is IPv4-only; anything else from this VM is unexpected.
  lines.push('meta nfproto != ipv4 goto refuse');
  for (const r of policy.rules) lines.push(`${ruleMatch(r)} ${r.action === 'allow' ? 'goto pass' : 'goto refuse'}`);
  if (policy.preset === 'public-only') for (const cidr of NON_PUBLIC_CIDRS) lines.push(`ip daddr ${cidr} goto refuse`);
  lines.push(policy.preset === 'allow-all' || policy.preset === 'public-only' ? 'goto pass' : 'goto refuse');
  const match = `socket cgroupv2 level ${level} "${cgroupPath}"`;
  return [
    `table inet ${table} {`,
    '  counter rx {',
    '  }',
    '  counter tx {',
    '  }',
    '  set published {',
    '    type inet_service',
    ...(published.length ? [`    elements = { ${[...new Set(published)].join(', ')} }`] : []),
    '  }',
    '  chain pass {',
    '    counter name "tx" accept',
    '  }',
    '  chain refuse {',
    '    meta l4proto tcp reject with tcp reset',
    '    reject with icmpx type admin-prohibited',
    '  }',
    '  chain egress {',
    ...lines.map((l) => `    ${l}`),
    '  }',
    '  chain output {',
    '    type filter hook output priority filter; policy accept;',
    `    ${match} goto egress`,
    '  }',
    '  chain ingress {',
    '    counter name "rx"',
    '    ct state established,related accept',
    '    iif lo ip daddr 127.0.0.1 tcp dport @published ct state new accept',
    '    meta l4proto tcp reject with tcp reset',
    '    drop',
    '  }',
    '  chain input {',
    '    type filter hook input priority filter; policy accept;',
    `    ${match} goto ingress`,
    '  }',
    '}',
    '',
  ].join('\n');
}

function run(cmd: string, args: readonly string[], input?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = execFile(cmd, args, { timeout: 30_000 }, (err, stdout, stderr) => {
      if (err) reject(Object.assign(err, { stderr: String(stderr) }));
      else resolve(String(stdout));
    });
    if (input !== undefined) child.stdin?.end(input);
  });
}

/**
 * Runs nft. nft resolves `socket cgroupv2` paths under /sys/fs/cgroup only; on a hybrid
 * host cgroup2 is elsewhere, so nft then runs in a private mount namespace with cgroup2
 * mounted there (the host's mounts are not touched).
 */
async function nft(args: readonly string[], input?: string): Promise<string> {
  const root = cgroup2Root();
  try {
    if (root === '/sys/fs/cgroup') return await run('nft', args, input);
    return await run('unshare', ['-m', '--', 'sh', '-c', 'mount -t cgroup2 cgroup2 /sys/fs/cgroup && exec nft "$@"', 'nft', ...args], input);
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    if (e.code === 'ENOENT') throw new CorralError('E_SETUP_MISSING', 'network policies need nftables: run scripts/setup-guest-env.sh (as root)', { cause: err });
    throw new CorralError('E_SETUP_MISSING', `nft ${args.join(' ')} failed (network policies need root and nftables): ${e.stderr?.trim() || e.message}`, { cause: err });
  }
}

/** One VM's enforcement: its cgroup and its nftables table. */
export interface NetEnforcement {
  readonly table: string;
  /** The cgroup directory; the VM process must join it before it starts. */
  readonly cgroupDir: string;
  /** argv prefix that joins the cgroup and then execs the rest (Vm's `wrap`, where qemu is not jailed). */
  readonly wrap: readonly string[];
  /** The resolv.conf slirp forwards the guest's DNS to (a jail shows it at /etc/resolv.conf). */
  readonly resolvConf: string;
  /** Lets new connections from host loopback reach the VM's socket on `port` (a published port), or not. */
  setPublished(port: number, published: boolean): Promise<void>;
  /** Bytes the VM's sockets received and sent (the table's counters), since it started. */
  trafficBytes(): Promise<{ rxBytes: number; txBytes: number }>;
  /** Removes the table and the cgroup. Idempotent; call once the VM has exited. */
  release(): Promise<void>;
}

/** `nft -j list counters table …` output → the named counters' bytes. */
export function parseCounters(json: string): Record<string, number> {
  const out: Record<string, number> = {};
  const items = (JSON.parse(json) as { nftables?: { counter?: { name: string; bytes: number } }[] }).nftables ?? [];
  for (const item of items) if (item.counter) out[item.counter.name] = item.counter.bytes;
  return out;
}

const PREFIX = 'corral_';

/**
 * Creates the cgroup and loads the policy's table. Sweeps tables and cgroups of VMs that
 * are gone first.
 */
export async function enforcePolicy(sandbox: string, policy: NetworkPolicyConfig, published: readonly number[] = []): Promise<NetEnforcement> {
  if (process.getuid?.() !== 0) throw new CorralError('E_SETUP_MISSING', 'network policies are enforced with nftables and cgroups on the host, which needs root');
  const root = cgroup2Root();
  await sweepStale(root).catch(logFailure('sweeping stale network policy tables'));
  const id = `${sandbox.replace(/[^a-z0-9]/g, '_').slice(0, 40)}_${randomBytes(4).toString('hex')}`;
  const table = `${PREFIX}${id}`;
  const rel = `corral/${id}`;
  const cgroupDir = join(root, rel);
  const resolvConf = guestResolvConf();
  await mkdir(cgroupDir, { recursive: true });
  try {
    await nft(['-f', '-'], policyRuleset(table, rel, policy, hostResolvers(resolvConf), published));
  } catch (err) {
    await rmdir(cgroupDir).catch(logFailure(`removing cgroup ${cgroupDir}`));
    throw err;
  }
  let released: Promise<void> | undefined;
  return {
    table,
    cgroupDir,
    resolvConf,
    wrap:
      resolvConf === '/etc/resolv.conf'
        ? ['sh', '-c', 'echo $$ > "$0" && exec "$@"', join(cgroupDir, 'cgroup.procs')]
        : ['unshare', '-m', '--', 'sh', '-c', 'echo $$ > "$0" && mount --bind "$1" /etc/resolv.conf && shift && exec "$@"', join(cgroupDir, 'cgroup.procs'), resolvConf],
    async setPublished(port, on) {
      await nft([on ? 'add' : 'delete', 'element', 'inet', table, 'published', `{ ${port} }`]);
    },
    async trafficBytes() {
      const c = parseCounters(await nft(['-j', 'list', 'counters', 'table', 'inet', table]));
      return { rxBytes: c.rx ?? 0, txBytes: c.tx ?? 0 };
    },
    release() {
      released ??= Promise.all([run('nft', ['delete', 'table', 'inet', table]).catch(logFailure(`nft delete table inet ${table}`)), removeCgroup(cgroupDir)]).then(() => {});
      return released;
    },
  };
}

/** rmdir of an emptied cgroup; the last process may take a moment to leave it. */
async function removeCgroup(dir: string): Promise<void> {
  for (let i = 0; i < 50; i++) {
    try {
      await rmdir(dir);
      return;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return;
      if (code !== 'EBUSY') return;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

/** Tables and cgroups of VMs that are gone (their host process was killed before cleanup). */
async function sweepStale(root: string): Promise<void> {
  const base = join(root, 'corral');
  if (!existsSync(base)) return;
  for (const id of await readdir(base)) {
    const dir = join(base, id);
    const procs = await readFile(join(dir, 'cgroup.procs'), 'utf8').catch(() => 'x');
    // Empty and not brand new (a VM about to join it was just set up by another process).
    if (procs.trim() !== '' || Date.now() - statSync(dir).mtimeMs < 30_000) continue;
    await run('nft', ['delete', 'table', 'inet', `${PREFIX}${id}`]).catch(logFailure(`nft delete table inet ${PREFIX}${id}`));
    await rmdir(dir).catch(logFailure(`removing stale cgroup ${dir}`));
  }
}
