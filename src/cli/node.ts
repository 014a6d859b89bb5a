/**
 * `corral node --nats URL[,URL…] --name N --state-dir DIR [--label k=v]… [--user U --password P | --nkey-seed FILE | --creds FILE]
 * [--max-sandboxes N] [--memory MiB] [--heartbeat MS] [--replicas 1|3|5] [--tls-ca F --tls-cert F --tls-key F]`: runs a cluster node
 * until SIGTERM or SIGINT, then stops its sandboxes and deregisters.
 *
 * `--user`/`--password` default to CORRAL_NATS_USER / CORRAL_NATS_PASSWORD; `--nkey-seed FILE`
 * (a user nkey seed, instead of a password) to CORRAL_NATS_NKEY_SEED; `--creds FILE` (a user JWT
 * and its seed, for servers in operator mode) to CORRAL_NATS_CREDS.
 *
 * It prints one JSON line on stdout once registered — `{ "ready": <its registry entry> }` —
 * or `{ "error": { code, message } }` if it cannot start; logs go to stderr.
 */

import { CorralError, InvalidOptionError, serializeError } from '../errors.ts';
import { NodeService } from '../node/NodeService.ts';
import { EXIT, exitCodeOf } from './exitCodes.ts';

/** The options `corral node` takes (parseArgs). */
export { NODE_OPTIONS } from './nodeOptions.ts';

function int(v: unknown, option: string): number | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || !/^\d+$/.test(v)) throw new InvalidOptionError(`--${option}`, 'a positive integer', v);
  return Number(v);
}

/**
 * Runs the node; resolves with the exit code once it was stopped by a signal.
 *
 * @example
 * process.exitCode = await cmdNode('/var/lib/corral', { nats: 'nats://127.0.0.1:4222', name: 'n1' });
 */
export async function cmdNode(stateDir: string | undefined, values: Record<string, unknown>): Promise<number> {
  let node: NodeService;
  try {
    if (typeof values.nats !== 'string') throw new CorralError('E_USAGE', 'corral node needs --nats URL[,URL…]');
    if (typeof values.name !== 'string') throw new CorralError('E_USAGE', 'corral node needs --name N');
    if (!stateDir) throw new CorralError('E_USAGE', 'corral node needs --state-dir DIR (one per node)');
    const labels: Record<string, string> = {};
    for (const l of (values.label as string[] | undefined) ?? []) {
      const eq = l.indexOf('=');
      if (eq < 1) throw new InvalidOptionError('--label', 'KEY=VALUE', l);
      labels[l.slice(0, eq)] = l.slice(eq + 1);
    }
    const maxSandboxes = int(values['max-sandboxes'], 'max-sandboxes');
    const memoryMib = int(values.memory, 'memory');
    const heartbeatMs = int(values.heartbeat, 'heartbeat');
    const replicas = int(values.replicas, 'replicas');
    node = await NodeService.start({
      servers: values.nats.split(','),
      name: values.name,
      stateDir,
      labels,
      // The environment keeps the password off the command line, where ps shows it.
      ...(typeof values.user === 'string' ? { user: values.user } : process.env.CORRAL_NATS_USER ? { user: process.env.CORRAL_NATS_USER } : {}),
      ...(typeof values.password === 'string' ? { pass: values.password } : process.env.CORRAL_NATS_PASSWORD ? { pass: process.env.CORRAL_NATS_PASSWORD } : {}),
      ...(typeof values['nkey-seed'] === 'string' ? { nkeySeedFile: values['nkey-seed'] } : process.env.CORRAL_NATS_NKEY_SEED ? { nkeySeedFile: process.env.CORRAL_NATS_NKEY_SEED } : {}),
      ...(typeof values.creds === 'string' ? { credsFile: values.creds } : process.env.CORRAL_NATS_CREDS ? { credsFile: process.env.CORRAL_NATS_CREDS } : {}),
      ...(maxSandboxes !== undefined ? { maxSandboxes } : {}),
      ...(memoryMib !== undefined ? { memoryMib } : {}),
      ...(heartbeatMs !== undefined ? { heartbeatMs } : {}),
      ...(replicas !== undefined ? { replicas } : {}),
      ...(values['tls-ca'] || values['tls-cert'] || values['tls-key']
        ? {
            tls: {
              ...(typeof values['tls-ca'] === 'string' ? { caFile: values['tls-ca'] } : {}),
              ...(typeof values['tls-cert'] === 'string' ? { certFile: values['tls-cert'] } : {}),
              ...(typeof values['tls-key'] === 'string' ? { keyFile: values['tls-key'] } : {}),
            },
          }
        : {}),
    });
  } catch (err) {
    const s = serializeError(err);
    process.stdout.write(`${JSON.stringify({ error: { code: s.code ?? 'E_INTERNAL', name: s.name, message: s.message } })}\n`);
    process.stderr.write(`corral node: ${s.message}\n`);
    return exitCodeOf(err);
  }
  process.stdout.write(`${JSON.stringify({ ready: node.record() })}\n`);
  const signal = await new Promise<string>((resolve) => {
    process.once('SIGINT', () => resolve('SIGINT'));
    process.once('SIGTERM', () => resolve('SIGTERM'));
  });
  process.stderr.write(`corral node ${node.name}: ${signal}, stopping its sandboxes\n`);
  await node.close();
  return EXIT.OK;
}
