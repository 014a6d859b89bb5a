/**
 * A user's scenario as a process of its own: connect to the cluster, find a sandbox by name
 * (created by another process), run a command in it through its node, stream stdin through
 * `cat`, let go. Prints one JSON line; exits by itself (a promise left pending would show as
 * exit code 13).
 *
 *   node --import tsx cluster-client.ts <servers,…> <user> <pass> <sandbox>
 */
import { Cluster, Sandbox } from '../../src/index.ts';

const [servers, user, pass, name] = process.argv.slice(2);
const cluster = await Cluster.connect({ servers: servers!.split(','), user: user!, pass: pass! });
try {
  const sb = await Sandbox.get(name!, { cluster });
  const info = await sb.info();
  const r = await sb.exec('sh', ['-c', 'echo from-$(hostname)']);
  const stream = await sb.execStream('cat', [], { stdin: 'pipe' });
  await stream.write('line one\n');
  await stream.end();
  let echoed = '';
  for await (const item of stream) if (item.type === 'stdout') echoed += Buffer.from(item.data).toString();
  const listed = (await Sandbox.list({ cluster })).map((s) => s.name);
  await sb.detach();
  process.stdout.write(`${JSON.stringify({ node: info.node, status: info.status, code: r.code, stdout: r.stdout, echoed, listed })}\n`);
} finally {
  await cluster.close();
}
