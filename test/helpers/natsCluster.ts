/**
 * A real 3-server NATS cluster with JetStream on loopback ports, user/password auth, each
 * server with its own store dir in a temp dir; and `corral node` processes joined to it.
 * Ports are probed free at run time, so runs of other engineers never collide with it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { connect, credsAuthenticator } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { freePort } from './net.ts';

// Each test process's clusters have passwords of their own, and each cluster a name of its own:
// test files run side by side, and a port probed free by one can be taken by another's server
// before its own binds it. With shared credentials and one cluster name, a node of one file
// then registered in another file's cluster (seen: n3 listed three times, a create that never
// came back); now such a connection is refused, and such a route too.
const RUN = randomBytes(6).toString('hex');
export const NODE_USER = { user: 'node', pass: `node-${RUN}` };
export const APP_USER = { user: 'app', pass: `app-${RUN}` };

export interface NatsCluster {
  /** One `nats://127.0.0.1:port` per server. */
  readonly urls: string[];
  readonly dir: string;
  stop(): Promise<void>;
}

/** Ends a child and resolves once it exited (SIGKILL after `graceMs`). */
export async function endChild(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM', graceMs = 20_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill(signal);
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}

/**
 * The NATS permissions the README says a node and a client need (one node user for every
 * node here: a real one would be held to `corral.node.<its name>.>`).
 */
export const NODE_PERMISSIONS = {
  publish: ['corral.node.*.receive.>', 'corral.ev.>', '$JS.API.>', '$KV.corral-nodes.>', '$KV.corral-sandboxes.>', '_INBOX.>'],
  subscribe: ['corral.node.>', 'corral.live.>', '_INBOX.>'],
};
export const CLIENT_PERMISSIONS = {
  publish: ['corral.node.*.>', 'corral.ev.>', '$JS.API.>', '$KV.corral-nodes.>', '$KV.corral-sandboxes.>', '_INBOX.>'],
  subscribe: ['corral.live.>', '_INBOX.>'],
};

const permissions = (p: { publish: string[]; subscribe: string[] }) => `, permissions: { publish: ${JSON.stringify(p.publish)}, subscribe: ${JSON.stringify(p.subscribe)} }`;

/**
 * Starts the servers and resolves once JetStream answers (its meta leader is elected).
 * `restricted`: the node and app users get only {@link NODE_PERMISSIONS} and {@link CLIENT_PERMISSIONS}.
 */
export async function startNatsCluster(size = 3, options: { restricted?: boolean; tls?: { certFile: string; keyFile: string; caFile: string }; nkeys?: readonly string[]; operator?: OperatorAuth } = {}): Promise<NatsCluster> {
  const dir = await mkdtemp(join(tmpdir(), 'corral-nats-'));
  const ports: number[] = [];
  const routes: number[] = [];
  const monitors: number[] = [];
  for (let i = 0; i < size; i++) {
    ports.push(await freePort());
    routes.push(await freePort());
    monitors.push(await freePort());
  }
  const children: ChildProcess[] = [];
  let stopping = false;
  const clusterName = `corral-test-${RUN}-${randomBytes(3).toString('hex')}`;
  for (let i = 0; i < size; i++) {
    const conf = `server_name: ${clusterName}-s${i + 1}
listen: 127.0.0.1:${ports[i]}
http: 127.0.0.1:${monitors[i]}
${options.tls ? `tls { cert_file: "${options.tls.certFile}", key_file: "${options.tls.keyFile}", ca_file: "${options.tls.caFile}" }
` : ''}jetstream { store_dir: "${join(dir, `s${i + 1}`)}", max_memory_store: 64MB, max_file_store: 512MB }
${
      // One server alone is no cluster: JetStream refuses a cluster block without routes.
      size > 1
        ? `cluster {
  name: ${clusterName}
  listen: 127.0.0.1:${routes[i]}
  routes: [${routes.filter((_, j) => j !== i).map((p) => `nats-route://127.0.0.1:${p}`).join(', ')}]
}`
        : ''
    }
${options.operator ? operatorBlock(options.operator) : `authorization {
  users: [
    { user: ${NODE_USER.user}, password: ${NODE_USER.pass}${options.restricted ? permissions(NODE_PERMISSIONS) : ''} }
    { user: ${APP_USER.user}, password: ${APP_USER.pass}${options.restricted ? permissions(CLIENT_PERMISSIONS) : ''} }
${(options.nkeys ?? []).map((k) => `    { nkey: ${k} }\n`).join('')}  ]
}`}
`;
    const file = join(dir, `s${i + 1}.conf`);
    await writeFile(file, conf);
    const child = spawn('nats-server', ['-c', file], { stdio: ['ignore', 'ignore', 'pipe'] });
    let log = '';
    child.stderr!.on('data', (d: Buffer) => {
      log = (log + d.toString()).slice(-4000);
    });
    child.once('exit', (code, sig) => {
      if (!stopping) process.stderr.write(`nats-server s${i + 1} exited (${code ?? sig}):\n${log}\n`);
    });
    children.push(child);
  }
  // A test process that dies takes its servers with it.
  const onExit = () => children.forEach((c) => c.kill('SIGKILL'));
  process.once('exit', onExit);
  const urls = ports.map((p) => `${options.tls ? 'tls' : 'nats'}://127.0.0.1:${p}`);
  const stop = async () => {
    stopping = true;
    process.off('exit', onExit);
    await Promise.all(children.map((c) => endChild(c)));
    await rm(dir, { recursive: true, force: true });
  };
  try {
    const nc = await connectRetrying(urls, options);
    try {
      for (let i = 0; ; i++) {
        try {
          // jetstreamManager() asks for the account info: it fails until a meta leader is elected.
          await jetstreamManager(nc);
          break;
        } catch (err) {
          if (i > 150) throw err;
          await new Promise((r) => setTimeout(r, 200));
        }
      }
    } finally {
      await nc.close();
    }
    // Every route up before anyone subscribes: a request published while the mesh still forms
    // (routes connecting both ways, a duplicate closed) can be lost, and a create sent then
    // waited for an answer that never came. The monitoring endpoint says how many routes a
    // server has; all of them must have the other size - 1.
    if (size > 1) {
      for (let i = 0; ; i++) {
        const counts = await Promise.all(monitors.map(async (m) => ((await (await fetch(`http://127.0.0.1:${m}/routez`)).json()) as { num_routes: number }).num_routes));
        if (counts.every((n) => n === size - 1)) break;
        if (i > 150) throw new Error(`the NATS cluster did not mesh: routes per server ${counts.join(', ')}`);
        await new Promise((r) => setTimeout(r, 200));
      }
    }
  } catch (err) {
    await stop();
    throw err;
  }
  return { urls, dir, stop };
}

/**
 * Operator (JWT) mode: the servers trust the operator's JWT, hold the accounts' JWTs in
 * memory (no account server), and let in users whose JWTs those accounts signed; `probe`
 * is a .creds of one of them, for the readiness check.
 */
export interface OperatorAuth {
  readonly operatorJwt: string;
  readonly systemAccount: string;
  /** Account public key → its JWT. */
  readonly accounts: Readonly<Record<string, string>>;
  readonly probe: Uint8Array;
}

function operatorBlock(o: OperatorAuth): string {
  return `operator: ${o.operatorJwt}
system_account: ${o.systemAccount}
resolver: MEMORY
resolver_preload: {
${Object.entries(o.accounts).map(([k, v]) => `  ${k}: ${v}`).join('\n')}
}`;
}

async function connectRetrying(urls: string[], options: { tls?: { caFile: string }; operator?: OperatorAuth }) {
  const deadline = Date.now() + 30_000;
  for (;;) {
    try {
      const auth = options.operator ? { authenticator: credsAuthenticator(options.operator.probe) } : APP_USER;
      return await connect({ servers: urls, ...auth, ...(options.tls ? { tls: { caFile: options.tls.caFile } } : {}), timeout: 2000 });
    } catch (err) {
      // Refused credentials (or a limit of the account's) are no server still starting: say so now.
      if (Date.now() > deadline || /authori[sz]ation|authentication|maximum/i.test((err as Error).message)) throw err;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

const BIN = fileURLToPath(new URL('../../bin/corral.mjs', import.meta.url));

export interface NodeProcess {
  readonly name: string;
  readonly child: ChildProcess;
  readonly stateDir: string;
  /** What it printed on stderr so far. */
  stderr(): string;
  stop(signal?: NodeJS.Signals): Promise<void>;
}

/**
 * Starts `corral node` and resolves once it says it is registered (its first stdout line,
 * `{ "ready": … }`).
 */
export async function startNode(cluster: NatsCluster, name: string, extra: string[] = [], reuseStateDir?: string, options: { envCredentials?: boolean; noPassword?: boolean } = {}): Promise<NodeProcess> {
  const stateDir = reuseStateDir ?? (await mkdtemp(join(tmpdir(), `corral-node-${name}-`)));
  // The credentials on the command line, or (envCredentials) in CORRAL_NATS_USER /
  // CORRAL_NATS_PASSWORD, or none (noPassword: `extra` brings them, e.g. --nkey-seed).
  const credentials = options.envCredentials || options.noPassword ? [] : ['--user', NODE_USER.user, '--password', NODE_USER.pass];
  const child = spawn(process.execPath, [BIN, 'node', '--nats', cluster.urls.join(','), '--name', name, '--state-dir', stateDir, ...credentials, ...extra], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: options.envCredentials ? { ...process.env, CORRAL_NATS_USER: NODE_USER.user, CORRAL_NATS_PASSWORD: NODE_USER.pass } : process.env,
  });
  let err = '';
  child.stderr!.on('data', (d: Buffer) => {
    err = (err + d.toString()).slice(-20_000);
  });
  const ready = new Promise<void>((resolve, reject) => {
    let buf = '';
    child.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      if (buf.includes('\n')) {
        const first = JSON.parse(buf.split('\n')[0]!) as { ready?: unknown; error?: { message: string } };
        if (first.ready) resolve();
        else reject(new Error(`node ${name} failed: ${first.error?.message}`));
      }
    });
    child.once('exit', (code) => reject(new Error(`node ${name} exited early (${code}): ${err}`)));
  });
  try {
    await ready;
  } catch (e) {
    await endChild(child, 'SIGKILL');
    await rm(stateDir, { recursive: true, force: true });
    throw e;
  }
  return {
    name,
    child,
    stateDir,
    stderr: () => err,
    stop: async (signal: NodeJS.Signals = 'SIGTERM') => {
      await endChild(child, signal);
      await rm(stateDir, { recursive: true, force: true });
    },
  };
}

/** One NATS server and one `corral node` on it: what the access tests (TLS, nkeys, JWT) try their credentials against. */
export interface AccessFixture {
  readonly nats: NatsCluster;
  readonly node: NodeProcess;
  /** Stops the node and the server and removes `dir`. */
  stop(): Promise<void>;
}

/**
 * Starts an {@link AccessFixture} in the temp dir `dir` (removed by its stop(), or at once if
 * the start fails): the server with `nats`'s auth, the node `name` with `nodeArgs`.
 */
export async function startAccessFixture(
  dir: string,
  nats: Parameters<typeof startNatsCluster>[1],
  name: string,
  nodeArgs: string[],
  nodeOptions: Parameters<typeof startNode>[4],
): Promise<AccessFixture> {
  let cluster: NatsCluster | undefined;
  try {
    cluster = await startNatsCluster(1, nats);
    const node = await startNode(cluster, name, nodeArgs, undefined, nodeOptions);
    const started = cluster;
    return {
      nats: started,
      node,
      async stop() {
        await node.stop();
        await started.stop();
        await rm(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    await cluster?.stop();
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}
