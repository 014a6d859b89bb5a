// TLS between the cluster's NATS server, a node and clients: a CA and a server certificate
// made here with openssl (for 127.0.0.1), a nats-server that takes TLS only. No VM: what is
// tried is the connection, the same for every request after it.
import { execFileSync } from 'node:child_process';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cluster } from '../../src/index.ts';
import { corralEnv } from '../helpers/cli.ts';
import { APP_USER, startAccessFixture, type AccessFixture } from '../helpers/natsCluster.ts';

let dir: string;
let fixture: AccessFixture | undefined;
const pki = { caFile: '', certFile: '', keyFile: '' };

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'corral-tls-'));
  const f = (n: string) => join(dir, n);
  const ssl = (...args: string[]) => execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  ssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=corral test CA', '-keyout', f('ca.key'), '-out', f('ca.pem'));
  ssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=127.0.0.1', '-keyout', f('server.key'), '-out', f('server.csr'));
  execFileSync('sh', ['-c', `printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > ${f('san.ext')}`]);
  ssl('x509', '-req', '-in', f('server.csr'), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial', '-days', '1', '-extfile', f('san.ext'), '-out', f('server.pem'));
  Object.assign(pki, { caFile: f('ca.pem'), certFile: f('server.pem'), keyFile: f('server.key') });
  // The node's credentials from the environment, off its command line.
  fixture = await startAccessFixture(dir, { tls: pki }, 't1', ['--tls-ca', pki.caFile], { envCredentials: true });
});

afterAll(async () => {
  await fixture?.stop();
});

describe('a cluster over TLS', () => {
  it('lets in a node and a client that trust the servers’ CA', async () => {
    expect(fixture!.nats.urls[0]).toMatch(/^tls:\/\//);
    const cluster = await Cluster.connect({ servers: fixture!.nats.urls, ...APP_USER, tls: { caFile: pki.caFile } });
    try {
      expect((await cluster.nodes()).map((n) => n.name)).toEqual(['t1']);
    } finally {
      await cluster.close();
    }
  });

  it('serves the CLI with --nats tls://… given the CA in CORRAL_NATS_TLS_CA, and refuses it without', async () => {
    const env = { ...process.env, CORRAL_NATS_USER: APP_USER.user, CORRAL_NATS_PASSWORD: APP_USER.pass };
    const trusted = await corralEnv({ ...env, CORRAL_NATS_TLS_CA: pki.caFile }, '--nats', fixture!.nats.urls[0]!, 'nodes');
    expect(trusted.code, trusted.stderr).toBe(0);
    expect(trusted.json.map((n: { name: string }) => n.name)).toEqual(['t1']);
    const refused = await corralEnv(env, '--nats', fixture!.nats.urls[0]!, 'nodes');
    expect([refused.code, refused.json.error.code]).toEqual([1, 'E_CLUSTER']);
  });

  it('refuses a client that does not trust the certificate, saying it cannot connect', async () => {
    await expect(Cluster.connect({ servers: fixture!.nats.urls, ...APP_USER })).rejects.toMatchObject({ code: 'E_CLUSTER', details: { reason: 'unreachable' } });
  });
});
