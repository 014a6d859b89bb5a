// NATS nkey users instead of passwords: a real nats-server that knows a node and a client by
// their public keys, a `corral node` and the CLI given their seeds in files. No VM: what is
// tried is who gets in, the same for every request after it.
import { chmod, mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { nkeys } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cluster } from '../../src/index.ts';
import { corralEnv } from '../helpers/cli.ts';
import { startAccessFixture, type AccessFixture } from '../helpers/natsCluster.ts';

let dir: string;
let fixture: AccessFixture | undefined;
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
  const keys = [await user('node'), await user('app')];
  await user('stranger');
  fixture = await startAccessFixture(dir, { nkeys: keys }, 'k1', ['--nkey-seed', seeds.node], { noPassword: true });
});

afterAll(async () => {
  await fixture?.stop();
});

describe('a cluster whose users are nkeys', () => {
  it('lets in a node and a client holding known seeds, the CLI too', async () => {
    const cluster = await Cluster.connect({ servers: fixture!.nats.urls, nkeySeedFile: seeds.app });
    try {
      expect((await cluster.nodes()).map((n) => n.name)).toEqual(['k1']);
    } finally {
      await cluster.close();
    }
    const listed = await corralEnv({ ...process.env, CORRAL_NATS_NKEY_SEED: seeds.app }, '--nats', fixture!.nats.urls[0]!, 'nodes');
    expect(listed.code, listed.stderr).toBe(0);
    expect(listed.json.map((n: { name: string }) => n.name)).toEqual(['k1']);
  });

  it('refuses a seed the servers do not know, and names a file that holds no seed', async () => {
    await expect(Cluster.connect({ servers: fixture!.nats.urls, nkeySeedFile: seeds.stranger })).rejects.toMatchObject({ code: 'E_CLUSTER', details: { reason: 'auth' }, message: expect.stringContaining('nkey') });
    const notASeed = join(dir, 'not-a-seed');
    await writeFile(notASeed, 'hello');
    await expect(Cluster.connect({ servers: fixture!.nats.urls, nkeySeedFile: notASeed })).rejects.toMatchObject({ code: 'E_INVALID_OPTION', message: expect.stringContaining('nkeySeedFile') });
  });
});
