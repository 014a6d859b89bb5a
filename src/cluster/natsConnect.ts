/**
 * The NATS connection options of a cluster member, from its servers and credentials: shared
 * by {@link Cluster.connect} and a node's sandbox workers, which publish their events on
 * connections of their own (src/cluster/EventPublisher.ts).
 */

import { readFileSync } from 'node:fs';
import { credsAuthenticator, nkeyAuthenticator, type NodeConnectionOptions } from '@nats-io/transport-node';
import { InvalidOptionError } from '../errors.ts';
import type { NatsTarget } from '../actor/contract.ts';

export type { NatsTarget };

/**
 * Options for `connect()` of `@nats-io/transport-node`; reconnects for ever.
 *
 * @example
 * const nc = await connect(natsConnectOptions({ servers: ['nats://127.0.0.1:4222'], name: 'corral-x' }));
 */
export function natsConnectOptions(target: NatsTarget): NodeConnectionOptions {
  if (target.nkeySeedFile !== undefined && target.credsFile !== undefined) throw new InvalidOptionError('credsFile', 'not given with nkeySeedFile (a .creds file holds its own seed)', target.credsFile);
  const authenticator =
    target.credsFile !== undefined ? credsAuthenticator(readCreds(target.credsFile)) : target.nkeySeedFile !== undefined ? nkeyAuthenticator(readSeed(target.nkeySeedFile)) : undefined;
  return {
    servers: [...target.servers],
    ...(authenticator ? { authenticator } : {}),
    ...(target.user !== undefined ? { user: target.user } : {}),
    ...(target.pass !== undefined ? { pass: target.pass } : {}),
    name: target.name,
    ...(target.tls || target.servers.some((u) => u.startsWith('tls://')) ? { tls: { ...(target.tls ?? {}) } } : {}),
    maxReconnectAttempts: -1,
  };
}

/** The user nkey seed in `file`: E_INVALID_OPTION naming `nkeySeedFile` when it is not one. */
function readSeed(file: string): Uint8Array {
  let text: string;
  try {
    text = readFileSync(file, 'utf8').trim();
  } catch (err) {
    throw new InvalidOptionError('nkeySeedFile', `a readable file holding a user nkey seed (SU…): ${(err as Error).message}`, file);
  }
  if (!/^SU[A-Z2-7]{56}$/.test(text)) throw new InvalidOptionError('nkeySeedFile', 'a file holding a user nkey seed (SU…, 58 characters)', file);
  return new TextEncoder().encode(text);
}

/** The credentials file `file` (a user JWT and its seed): E_INVALID_OPTION naming `credsFile` when it is not one. */
function readCreds(file: string): Uint8Array {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new InvalidOptionError('credsFile', `a readable NATS credentials file (.creds): ${(err as Error).message}`, file);
  }
  if (!/-----BEGIN NATS USER JWT-----\s*\S+\s*-+END NATS USER JWT-+/.test(text) || !/^\s*SU[A-Z2-7]{56}\s*$/m.test(text)) {
    throw new InvalidOptionError('credsFile', 'a NATS credentials file holding a user JWT and its nkey seed (SU…), as nsc writes it', file);
  }
  return new TextEncoder().encode(text);
}
