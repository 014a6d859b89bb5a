/**
 * The CLI's verbs on a cluster: `corral --nats URL[,URL…] <verb>`. Credentials come from
 * CORRAL_NATS_USER and CORRAL_NATS_PASSWORD (never the command line, where `ps` shows them).
 *
 *   ls [--label K=V]      every sandbox on every node, with its node
 *   inspect NAME          its facts, from its node (or the catalog once stopped)
 *   rm NAME               remove a stopped sandbox, wherever it ran
 *   nodes                 the live nodes: labels, capacity, what is free
 *   node drain NAME       drain a node: no new sandboxes, its sandboxes drain and stop
 *   exec NAME [flags] -- CMD…, stop NAME, kill NAME, pause NAME, resume NAME, start NAME,
 *   execs NAME, exec-kill NAME ID, publish NAME H:G, unpublish NAME H, set-max-duration NAME S
 *                         as without --nats, on a sandbox of the cluster (a port is
 *                         published on the loopback of the sandbox's node)
 */

import { Cluster } from '../cluster/Cluster.ts';
import { CorralError } from '../errors.ts';
import { Sandbox } from '../sdk/Sandbox.ts';
import { EXIT } from './exitCodes.ts';

/** The verbs on one sandbox that take arguments after its name (the caller checks them). */
const VERBS_WITH_ARGS = new Set(['exec-kill', 'publish', 'unpublish', 'set-max-duration']);
/** The verbs on one sandbox that the caller runs on a handle (exec's flags are its own). */
export const HANDLE_VERBS = new Set(['exec', 'stop', 'kill', 'pause', 'resume', 'start', 'execs', ...VERBS_WITH_ARGS]);
/** The verbs that take `--nats`. */
export const CLUSTER_VERBS = new Set(['ls', 'inspect', 'rm', 'nodes', 'node', ...HANDLE_VERBS]);

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
  if (!CLUSTER_VERBS.has(verb)) throw new CorralError('E_USAGE', `"${verb}" does not take --nats yet (with --nats: ${[...CLUSTER_VERBS].join(', ')})`);
  const cluster = await Cluster.connect({
    servers: servers.split(','),
    ...(process.env.CORRAL_NATS_USER ? { user: process.env.CORRAL_NATS_USER } : {}),
    ...(process.env.CORRAL_NATS_PASSWORD ? { pass: process.env.CORRAL_NATS_PASSWORD } : {}),
  });
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
        if (first !== 'drain' || !second || extra.length) throw new CorralError('E_USAGE', 'with --nats, node takes: node drain NAME');
        if (args.values.migrate) throw new CorralError('E_USAGE', 'node drain --migrate: moving sandboxes to other nodes is not built yet');
        const report = await cluster.drain(second);
        print(report, report.sandboxes.map((s) => `${s.name}: ${s.stopReason ?? s.error?.message} in ${Math.round(s.ms)} ms`).join('\n') || `${second}: nothing to drain`);
        return EXIT.OK;
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
