// NATS nkey users instead of passwords: a real nats-server that knows a node and a client by
// their public keys, a `corral node` and the CLI given their seeds in files. No VM: what is
// tried is who gets in, the same for every request after it.
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { nkeys } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cluster } from '../../src/index.ts';
import { corralEnv } from '../helpers/cli.ts';
import { startNatsCluster, startNode, type NatsCluster, type NodeProcess } from '../helpers/natsCluster.ts';

let dir: string;
let nats: NatsCluster | undefined;
let node: NodeProcess | undefined;
const seeds = { node: '', app: '', stranger: '' };

/** A new user nkey: its seed written to a file (mode 600), and its public key. */
async function user(name: keyof typeof seeds): Promise<string> {
  const kp = nkeys.createUser();
  seeds[name] = join(dir, `${name}.nk`);
  await writeFile(seeds[name], new TextDecoder().decode(kp.getSeed()));
  await chmod(seeds[name], 0o600);
  return kp.getPublicKey();
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'corral-nkeys-'));
  try {
    const keys = [await user('node'), await user('app')];
    await user('stranger');
    nats = await startNatsCluster(1, { nkeys: keys });
    node = await startNode(nats, 'k1', ['--nkey-seed', seeds.node], undefined, { noPassword: true });
  } catch (err) {
    await nats?.stop();
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
});

afterAll(async () => {
  await node?.stop();
  await nats?.stop();
  await rm(dir, { recursive: true, force: true });
});

describe('a cluster whose users are nkeys', () => {
  it('lets in a node and a client holding known seeds, the CLI too', async () => {
    const cluster = await Cluster.connect({ servers: nats!.urls, nkeySeedFile: seeds.app });
    try {
      expect((await cluster.nodes()).map((n) => n.name)).toEqual(['k1']);
    } finally {
      await cluster.close();
    }
    const listed = await corralEnv({ ...process.env, CORRAL_NATS_NKEY_SEED: seeds.app }, '--nats', nats!.urls[0]!, 'nodes');
    expect(listed.code, listed.stderr).toBe(0);
    expect(listed.json.map((n: { name: string }) => n.name)).toEqual(['k1']);
  });

  it('refuses a seed the servers do not know, and names a file that holds no seed', async () => {
    await expect(Cluster.connect({ servers: nats!.urls, nkeySeedFile: seeds.stranger })).rejects.toMatchObject({ code: 'E_CLUSTER', details: { reason: 'auth' }, message: expect.stringContaining('nkey') });
    const notASeed = join(dir, 'not-a-seed');
    await writeFile(notASeed, 'hello');
    await expect(Cluster.connect({ servers: nats!.urls, nkeySeedFile: notASeed })).rejects.toMatchObject({ code: 'E_INVALID_OPTION', message: expect.stringContaining('nkeySeedFile') });
  });
});
