/**
 * The CLI's verbs on a cluster: `corral --nats URL[,URL…] <verb>`. Credentials come from
 * CORRAL_NATS_USER and CORRAL_NATS_PASSWORD (never the command line, where `ps` shows them),
 * TLS files from CORRAL_NATS_TLS_CA / _CERT / _KEY.
 *
 *   ls [--label K=V]      every sandbox on every node, with its node
 *   inspect NAME          its facts, from its node (or the catalog once stopped)
 *   rm NAME               remove a stopped sandbox, wherever it ran
 *   nodes                 the live nodes: labels, capacity, what is free
 *   node drain NAME [--migrate]   drain a node: no new sandboxes, its sandboxes drain and stop (or move)
 *   serve [--host H] [--port P] [--token T]   the HTTP + WebSocket API, fronting the cluster (main.ts)
 *   create, run, logs, cp, fs watch   their own code, taking the cluster (main.ts)
 *   exec NAME [flags] -- CMD…, stop NAME, kill NAME, pause NAME, resume NAME, start NAME,
 *   execs NAME, attach NAME ID, exec-kill NAME ID, publish NAME H:G, unpublish NAME H, set-max-duration NAME S
 *                         as without --nats, on a sandbox of the cluster (a port is
 *                         published on the loopback of the sandbox's node)
 */

import { Cluster, type DrainReport } from '../cluster/Cluster.ts';
import { CorralError } from '../errors.ts';
import { Sandbox } from '../sdk/Sandbox.ts';
import { EXIT } from './exitCodes.ts';

/** The verbs on one sandbox that take arguments after its name (the caller checks them). */
const VERBS_WITH_ARGS = new Set(['attach', 'exec-kill', 'publish', 'unpublish', 'set-max-duration']);
/** The verbs on one sandbox that the caller runs on a handle (exec's flags are its own). */
export const HANDLE_VERBS = new Set(['exec', 'stop', 'kill', 'pause', 'resume', 'start', 'execs', ...VERBS_WITH_ARGS]);
/** The verbs that take `--nats`. */
export const CLUSTER_VERBS = new Set(['ls', 'inspect', 'rm', 'nodes', 'node', ...HANDLE_VERBS]);

/**
 * A connection to the cluster at `servers` (comma-separated), credentials from the
 * environment: CORRAL_NATS_USER / CORRAL_NATS_PASSWORD (or CORRAL_NATS_NKEY_SEED, a file
 * holding a user nkey seed), and for TLS CORRAL_NATS_TLS_CA (the
 * servers' CA) with CORRAL_NATS_TLS_CERT / CORRAL_NATS_TLS_KEY when the servers ask for a
 * client certificate (PEM files).
 */
export function connectCluster(servers: string): Promise<Cluster> {
  const env = process.env;
  const tls = {
    ...(env.CORRAL_NATS_TLS_CA ? { caFile: env.CORRAL_NATS_TLS_CA } : {}),
    ...(env.CORRAL_NATS_TLS_CERT ? { certFile: env.CORRAL_NATS_TLS_CERT } : {}),
    ...(env.CORRAL_NATS_TLS_KEY ? { keyFile: env.CORRAL_NATS_TLS_KEY } : {}),
  };
  return Cluster.connect({
    servers: servers.split(','),
    ...(env.CORRAL_NATS_USER ? { user: env.CORRAL_NATS_USER } : {}),
    ...(env.CORRAL_NATS_PASSWORD ? { pass: env.CORRAL_NATS_PASSWORD } : {}),
    ...(env.CORRAL_NATS_NKEY_SEED ? { nkeySeedFile: env.CORRAL_NATS_NKEY_SEED } : {}),
    ...(env.CORRAL_NATS_CREDS ? { credsFile: env.CORRAL_NATS_CREDS } : {}),
    ...(Object.keys(tls).length ? { tls } : {}),
  });
}

/**
 * Runs one verb against the cluster at `servers`; resolves with the exit code (errors are
 * thrown for the caller's usual reporting).
 *
 * @example
 * await runOnCluster('nats://127.0.0.1:4222', 'ls', { values: {}, positionals: [] }, (v, t) => console.log(t));
 */
export async function runOnCluster(
  servers: string,
  verb: string,
  args: { values: Record<string, unknown>; positionals: string[] },
  print: (value: unknown, text: string) => void,
  /** Runs a {@link HANDLE_VERBS} verb on the sandbox's handle; resolves with the exit code. */
  onHandle: (verb: string, sb: Sandbox) => Promise<number>,
): Promise<number> {
  if (!CLUSTER_VERBS.has(verb)) throw new CorralError('E_USAGE', `"${verb}" does not take --nats yet (with --nats: ${[...CLUSTER_VERBS, 'create', 'run', 'logs', 'cp', 'fs', 'serve'].join(', ')})`);
  const cluster = await connectCluster(servers);
  try {
    const [first, second, ...extra] = args.positionals;
    const needOne = () => {
      if (!first || second !== undefined) throw new CorralError('E_USAGE', `${verb} takes one sandbox name`);
      return first;
    };
    if (HANDLE_VERBS.has(verb)) {
      const name = VERBS_WITH_ARGS.has(verb) ? first : needOne();
      if (!name) throw new CorralError('E_USAGE', `${verb} takes a sandbox name first (corral help)`);
      const sb = verb === 'start' ? await Sandbox.start(name, { cluster }) : await Sandbox.get(name, { cluster });
      try {
        return await onHandle(verb, sb);
      } finally {
        await sb.detach();
      }
    }
    switch (verb) {
      case 'ls': {
        const labels: Record<string, string> = {};
        for (const l of (args.values.label as string[] | undefined) ?? []) {
          const eq = l.indexOf('=');
          if (eq < 1) throw new CorralError('E_USAGE', `--label takes KEY=VALUE (got ${JSON.stringify(l)})`);
          labels[l.slice(0, eq)] = l.slice(eq + 1);
        }
        const rows = await Sandbox.list({ cluster, ...(Object.keys(labels).length ? { labels } : {}) });
        print(rows, table([['NAME', 'STATUS', 'NODE', 'IMAGE', 'STOP REASON'], ...rows.map((r) => [r.name, r.status, r.node ?? '', r.image, r.stopReason ?? ''])]));
        return EXIT.OK;
      }
      case 'inspect': {
        const sb = await Sandbox.get(needOne(), { cluster });
        const info = await sb.info();
        await sb.detach();
        print(info, `name:      ${info.name}\nstatus:    ${info.status} (${info.state})\nnode:      ${info.node ?? ''}${info.stopReason ? `\nstopped:   ${info.stopReason}` : ''}`);
        return EXIT.OK;
      }
      case 'rm': {
        const name = needOne();
        await Sandbox.remove(name, { cluster });
        print({ removed: name }, `removed ${name}`);
        return EXIT.OK;
      }
      case 'nodes': {
        const nodes = await cluster.nodes();
        print(
          nodes,
          table([
            ['NODE', 'LABELS', 'SANDBOXES', 'FREE MIB', 'FREE SLOTS', 'DRAINING'],
            ...nodes.map((n) => [n.name, Object.entries(n.labels).map(([k, v]) => `${k}=${v}`).join(','), String(n.sandboxes), String(n.free.memoryMib), String(n.free.sandboxes), n.draining ? 'yes' : 'no']),
          ]),
        );
        return EXIT.OK;
      }
      default: {
        if (first !== 'drain' || !second || extra.length) throw new CorralError('E_USAGE', 'with --nats, node takes: node drain NAME [--migrate]');
        const report = await cluster.drain(second, { migrate: args.values.migrate === true });
        const line = (s: DrainReport['sandboxes'][number]) => `${s.name}: ${s.movedTo ? `moved to ${s.movedTo}` : s.error ? `failed: ${s.error.message}` : s.stopReason} in ${Math.round(s.ms)} ms`;
        print(report, report.sandboxes.map(line).join('\n') || `${second}: nothing to drain`);
        // A sandbox that could not move (or drain) fails the command: the node is not empty.
        return report.sandboxes.some((s) => s.error) ? EXIT.ERROR : EXIT.OK;
      }
    }
  } finally {
    await cluster.close();
  }
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((x, i) => x.padEnd(widths[i]!)).join('  ').trimEnd()).join('\n');
}
