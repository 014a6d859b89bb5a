// NATS in operator (JWT) mode, as Synadia Cloud and `nsc`-managed deployments run it: a real
// nats-server trusts an operator, holds its accounts' JWTs, and lets in users whose JWTs the
// account signed, each given to corral as a .creds file (the JWT and the user's seed). The
// JWTs are made here with @nats-io/jwt (what nsc does). A `corral node`, the SDK and the CLI
// connect with their own .creds; a user of another operator is refused. No VM: what is tried
// is who gets in, the same for every request after it.
import { chmod, mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createAccount, createOperator, createUser, encodeAccount, encodeOperator, encodeUser, fmtCreds } from '@nats-io/jwt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cluster } from '../../src/index.ts';
import { corralEnv } from '../helpers/cli.ts';
import { CLIENT_PERMISSIONS, NODE_PERMISSIONS, startAccessFixture, type AccessFixture } from '../helpers/natsCluster.ts';

let dir: string;
let fixture: AccessFixture | undefined;
const creds = { node: '', app: '', stranger: '' };

/** A user of `account` (its JWT signed by the account's key) as a .creds file (mode 600). */
async function userCreds(name: keyof typeof creds, account: ReturnType<typeof createAccount>, permissions?: { publish: string[]; subscribe: string[] }): Promise<Uint8Array> {
  const user = createUser();
  // Limits left out of a JWT are 0 (nothing allowed): -1 is unlimited.
  const jwt = await encodeUser(name, user, account, { subs: -1, data: -1, payload: -1, ...(permissions ? { pub: { allow: permissions.publish }, sub: { allow: permissions.subscribe } } : {}) });
  const text = fmtCreds(jwt, user);
  creds[name] = join(dir, `${name}.creds`);
  await writeFile(creds[name], text);
  await chmod(creds[name], 0o600);
  return text;
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'corral-creds-'));
  const operator = createOperator();
  const system = createAccount();
  const app = createAccount();
  // An account's limits are 0 unless its JWT says otherwise (-1: unlimited); JetStream is
  // off for it unless it is given storage.
  const unlimited = { conn: -1, subs: -1, data: -1, payload: -1, imports: -1, exports: -1, leaf: -1, wildcards: true, mem_storage: -1, disk_storage: -1, streams: -1, consumer: -1 };
  const accounts = {
    [system.getPublicKey()]: await encodeAccount('SYS', system, {}, { signer: operator }),
    [app.getPublicKey()]: await encodeAccount('APP', app, { limits: unlimited }, { signer: operator }),
  };
  // The node and the client with the permissions the README gives them.
  await userCreds('node', app, NODE_PERMISSIONS);
  const probe = await userCreds('app', app, CLIENT_PERMISSIONS);
  // A well-formed user of an account of another operator, which these servers do not trust.
  await userCreds('stranger', createAccount());
  const operatorJwt = await encodeOperator('corral-test', operator);
  fixture = await startAccessFixture(dir, { operator: { operatorJwt, systemAccount: system.getPublicKey(), accounts, probe } }, 'c1', ['--creds', creds.node], { noPassword: true });
});

afterAll(async () => {
  await fixture?.stop();
});

describe('a cluster whose servers run in operator (JWT) mode', () => {
  it('lets in a node and a client holding their .creds, the CLI too', async () => {
    const cluster = await Cluster.connect({ servers: fixture!.nats.urls, credsFile: creds.app });
    try {
      expect((await cluster.nodes()).map((n) => n.name)).toEqual(['c1']);
    } finally {
      await cluster.close();
    }
    const listed = await corralEnv({ ...process.env, CORRAL_NATS_CREDS: creds.app }, '--nats', fixture!.nats.urls[0]!, 'nodes');
    expect(listed.code, listed.stderr).toBe(0);
    expect(listed.json.map((n: { name: string }) => n.name)).toEqual(['c1']);
  });

  it('refuses a user the servers do not trust, and names a file that holds no credentials', async () => {
    await expect(Cluster.connect({ servers: fixture!.nats.urls, credsFile: creds.stranger })).rejects.toMatchObject({
      code: 'E_CLUSTER',
      details: { reason: 'auth' },
      message: expect.stringContaining(creds.stranger),
    });
    const notCreds = join(dir, 'not-creds');
    await writeFile(notCreds, 'hello');
    await expect(Cluster.connect({ servers: fixture!.nats.urls, credsFile: notCreds })).rejects.toMatchObject({ code: 'E_INVALID_OPTION', message: expect.stringContaining('credsFile') });
    await expect(Cluster.connect({ servers: fixture!.nats.urls, credsFile: creds.app, nkeySeedFile: notCreds })).rejects.toMatchObject({ code: 'E_INVALID_OPTION', message: expect.stringContaining('credsFile') });
  });
});
