/**
 * A user's script that closes its cluster connection while it still waits on a sandbox: an
 * exec stream running `sleep`, a `wait()` for the sandbox's end. Each must settle (E_CLOSED)
 * rather than wait for answers that can no longer come: a promise left pending would end
 * this process with exit code 13 and no line. Prints one JSON line.
 *
 *   node --import tsx cluster-close-client.ts <servers,…> <user> <pass> <sandbox>
 */
import { Cluster, Sandbox } from '../../src/index.ts';

const [servers, user, pass, name] = process.argv.slice(2);
const cluster = await Cluster.connect({ servers: servers!.split(','), user: user!, pass: pass! });
const sb = await Sandbox.get(name!, { cluster });
const stream = await sb.execStream('sleep', ['600']);
const codeOf = (p: Promise<unknown>) => p.then(() => 'settled', (err: { code?: string }) => err.code ?? 'no code');
const exited = codeOf(stream.exited);
const waited = codeOf(sb.wait());
await cluster.close();
process.stdout.write(`${JSON.stringify({ exited: await exited, wait: await waited, info: await codeOf(sb.info()), exec: await codeOf(sb.exec('true')) })}\n`);
