/**
 * Network policies: what a sandbox's guest may reach, as JSON config. Enforced on the host
 * (src/guestenv/netfilter.ts), never in the guest, so root in the guest cannot lift them.
 *
 * A policy is an ordered rule list, first match wins, then a default: rules you add come
 * first (in the order added), then the preset's own rules, then the preset's default.
 *
 * | preset | rules | default |
 * |---|---|---|
 * | `none()` | — (the VM gets no NIC at all) | — |
 * | `allowAll()` | — | allow |
 * | `publicOnly()` | deny loopback, private, link-local (cloud metadata), CGNAT, multicast, reserved | allow |
 * | `denyAll()` / `rules([...])` | yours | deny |
 *
 * DNS (udp/tcp 53 to the host's resolvers, reached through the NIC's 10.0.2.3) is allowed
 * unless `dns: false` or `none()`.
 */

import { InvalidOptionError } from '../errors.ts';

export type NetworkPreset = 'none' | 'allow-all' | 'public-only' | 'deny-all';
export type NetworkAction = 'allow' | 'deny';
export type NetworkProtocol = 'tcp' | 'udp' | 'icmp' | 'any';

/** One rule as given: `cidr` defaults to everything, `protocol` to any, `port` to all. */
export interface NetworkRuleInput {
  readonly cidr?: string;
  readonly protocol?: NetworkProtocol;
  /** A port, or an inclusive `[from, to]` range (tcp/udp only). */
  readonly port?: number | readonly [number, number];
}

/** One rule in a config. */
export interface NetworkRule {
  readonly action: NetworkAction;
  readonly cidr: string;
  readonly protocol: NetworkProtocol;
  readonly ports?: readonly [number, number];
}

/** A policy in a sandbox config. */
export interface NetworkPolicyConfig {
  readonly preset: NetworkPreset;
  readonly rules: readonly NetworkRule[];
  readonly dns: boolean;
}

/** The ranges `publicOnly` denies (IPv4: the guest's NIC has no IPv6). */
export const NON_PUBLIC_CIDRS: readonly string[] = [
  '0.0.0.0/8', // "this network"
  '10.0.0.0/8', // private
  '100.64.0.0/10', // carrier-grade NAT
  '127.0.0.0/8', // loopback
  '169.254.0.0/16', // link-local, cloud metadata (169.254.169.254)
  '172.16.0.0/12', // private
  '192.0.0.0/24', // IETF protocol assignments
  '192.0.2.0/24', // documentation
  '192.168.0.0/16', // private
  '198.18.0.0/15', // benchmarking
  '198.51.100.0/24', // documentation
  '203.0.113.0/24', // documentation
  '224.0.0.0/4', // multicast
  '240.0.0.0/4', // reserved, broadcast
];

const PROTOCOLS: readonly NetworkProtocol[] = ['tcp', 'udp', 'icmp', 'any'];

/** Checks an IPv4 CIDR ("10.0.0.0/8", or an address = /32); returns it canonical. */
export function parseCidr(value: unknown, option: string): string {
  const allowed = 'an IPv4 address or CIDR such as "10.0.0.0/8" (the guest has no IPv6)';
  if (typeof value !== 'string') throw new InvalidOptionError(option, allowed, value);
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})(?:\/(\d{1,2}))?$/.exec(value);
  if (!m) throw new InvalidOptionError(option, allowed, value);
  const octets = m.slice(1, 5).map(Number);
  const prefix = m[5] === undefined ? 32 : Number(m[5]);
  if (octets.some((o) => o > 255) || prefix > 32) throw new InvalidOptionError(option, allowed, value);
  const n = ((octets[0]! << 24) | (octets[1]! << 16) | (octets[2]! << 8) | octets[3]!) >>> 0;
  const masked = prefix === 0 ? 0 : (n & (~0 << (32 - prefix))) >>> 0;
  if (masked !== n) throw new InvalidOptionError(option, `${allowed}, with no host bits set past the prefix`, value);
  return `${octets.join('.')}/${prefix}`;
}

function normalizeRule(raw: unknown, option: string): NetworkRule {
  if (typeof raw !== 'object' || raw === null) throw new InvalidOptionError(option, 'a rule object { action, cidr, protocol, ports }', raw);
  const r = raw as Record<string, unknown>;
  if (r.action !== 'allow' && r.action !== 'deny') throw new InvalidOptionError(`${option}.action`, '"allow" or "deny"', r.action);
  const protocol = (r.protocol ?? 'any') as NetworkProtocol;
  if (!PROTOCOLS.includes(protocol)) throw new InvalidOptionError(`${option}.protocol`, 'one of "tcp", "udp", "icmp", "any"', r.protocol);
  const cidr = parseCidr(r.cidr ?? '0.0.0.0/0', `${option}.cidr`);
  const rawPorts = r.ports ?? r.port;
  if (rawPorts === undefined) return { action: r.action, cidr, protocol };
  const pair = typeof rawPorts === 'number' ? [rawPorts, rawPorts] : rawPorts;
  const okPort = (p: unknown) => typeof p === 'number' && Number.isInteger(p) && p >= 1 && p <= 65535;
  if (!Array.isArray(pair) || pair.length !== 2 || !okPort(pair[0]) || !okPort(pair[1]) || pair[0] > pair[1]) {
    throw new InvalidOptionError(`${option}.port`, 'a port from 1 to 65535, or a [from, to] range', rawPorts);
  }
  if (protocol === 'icmp') throw new InvalidOptionError(`${option}.port`, 'no port with protocol "icmp"', rawPorts);
  return { action: r.action, cidr, protocol, ports: [pair[0], pair[1]] };
}

/** Checks a config's `network` policy. */
export function normalizeNetworkPolicy(raw: unknown, option = 'network'): NetworkPolicyConfig {
  if (typeof raw !== 'object' || raw === null) throw new InvalidOptionError(option, 'a policy object { preset, rules, dns }', raw);
  const p = raw as Record<string, unknown>;
  const presets: readonly NetworkPreset[] = ['none', 'allow-all', 'public-only', 'deny-all'];
  if (!presets.includes(p.preset as NetworkPreset)) throw new InvalidOptionError(`${option}.preset`, `one of ${presets.map((x) => `"${x}"`).join(', ')}`, p.preset);
  const rules = p.rules ?? [];
  if (!Array.isArray(rules) || rules.length > 256) throw new InvalidOptionError(`${option}.rules`, 'an array of at most 256 rules', rules);
  if (p.preset === 'none' && rules.length > 0) throw new InvalidOptionError(`${option}.rules`, 'no rules with the "none" policy (the guest has no network)', rules);
  const dns = p.dns ?? p.preset !== 'none';
  if (typeof dns !== 'boolean') throw new InvalidOptionError(`${option}.dns`, 'true or false', dns);
  return { preset: p.preset as NetworkPreset, rules: rules.map((r, i) => normalizeRule(r, `${option}.rules[${i}]`)), dns: p.preset === 'none' ? false : dns };
}

/**
 * An immutable policy value; `allow`/`deny` return a new one with the rule added.
 *
 * @example
 * NetworkPolicy.publicOnly().allow({ cidr: '10.1.2.3', protocol: 'tcp', port: 5432 })
 * NetworkPolicy.rules([{ action: 'allow', cidr: '203.0.113.0/24', protocol: 'tcp', port: 443 }])
 */
export class NetworkPolicy {
  readonly #config: NetworkPolicyConfig;

  private constructor(config: NetworkPolicyConfig) {
    this.#config = normalizeNetworkPolicy(config, 'network.policy');
  }

  /** No network: the VM gets no NIC. */
  static none(): NetworkPolicy {
    return new NetworkPolicy({ preset: 'none', rules: [], dns: false });
  }

  /** Everything, the host's loopback and private networks included. */
  static allowAll(): NetworkPolicy {
    return new NetworkPolicy({ preset: 'allow-all', rules: [], dns: true });
  }

  /** The public internet only: loopback, private, link-local and metadata ranges denied. */
  static publicOnly(): NetworkPolicy {
    return new NetworkPolicy({ preset: 'public-only', rules: [], dns: true });
  }

  /** Nothing but DNS, until rules allow more. */
  static denyAll(): NetworkPolicy {
    return new NetworkPolicy({ preset: 'deny-all', rules: [], dns: true });
  }

  /** Your rules, first match wins; what none matches is denied (or allowed, with `default`). */
  static rules(rules: readonly (NetworkRuleInput & { action: NetworkAction })[], options: { default?: NetworkAction; dns?: boolean } = {}): NetworkPolicy {
    const preset: NetworkPreset = (options.default ?? 'deny') === 'allow' ? 'allow-all' : 'deny-all';
    if (options.default !== undefined && options.default !== 'allow' && options.default !== 'deny') {
      throw new InvalidOptionError('network.default', '"allow" or "deny"', options.default);
    }
    return new NetworkPolicy({ preset, rules: rules as NetworkRule[], dns: options.dns ?? true });
  }

  /** Rebuilds a policy from its config (`toJSON()`). */
  static fromConfig(config: NetworkPolicyConfig): NetworkPolicy {
    return new NetworkPolicy(config);
  }

  /** A policy with one more allow rule, after the rules added before it. */
  allow(rule: NetworkRuleInput = {}): NetworkPolicy {
    return this.#with('allow', rule);
  }

  /** A policy with one more deny rule, after the rules added before it. */
  deny(rule: NetworkRuleInput = {}): NetworkPolicy {
    return this.#with('deny', rule);
  }

  /** With DNS to the host's resolvers allowed (default) or not. */
  dns(on: boolean): NetworkPolicy {
    return new NetworkPolicy({ ...this.#config, dns: on });
  }

  toJSON(): NetworkPolicyConfig {
    return structuredClone(this.#config) as NetworkPolicyConfig;
  }

  #with(action: NetworkAction, rule: NetworkRuleInput): NetworkPolicy {
    if (this.#config.preset === 'none') throw new InvalidOptionError(`network.${action}`, 'no rules with the "none" policy (the guest has no network)', rule);
    return new NetworkPolicy({ ...this.#config, rules: [...this.#config.rules, { ...rule, action } as NetworkRule] });
  }
}

/**
 * The `n` of `.network(n => …)`.
 *
 * @example
 * .network((n) => n.policy(NetworkPolicy.publicOnly()))
 */
export class NetworkBuilder {
  #policy: NetworkPolicyConfig = NetworkPolicy.publicOnly().toJSON();

  /** The policy (default publicOnly once `.network()` is called). */
  policy(policy: NetworkPolicy | NetworkPolicyConfig): this {
    this.#policy = policy instanceof NetworkPolicy ? policy.toJSON() : normalizeNetworkPolicy(policy, 'network.policy');
    return this;
  }

  /** @internal */
  toConfig(): NetworkPolicyConfig {
    return this.#policy;
  }
}
