/** Host-side servers and guest-side fetches for the network tests (loopback only). */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Sandbox } from '../../src/index.ts';

/** An HTTP server on 127.0.0.1 (or `host`) answering every request with `body`. */
export function listen(body: string, host = '127.0.0.1'): Promise<Server> {
  const srv = createServer((_, res) => res.end(body));
  return new Promise((resolve) => srv.listen(0, host, () => resolve(srv)));
}

export const portOf = (s: Server): number => (s.address() as AddressInfo).port;

/** A loopback port nothing listens on (just now). */
export async function freePort(): Promise<number> {
  const s = await listen('');
  const p = portOf(s);
  await new Promise((r) => s.close(r));
  return p;
}

/** wget from the guest to the host (10.0.2.2); prints the body, or FAIL and wget's complaint. */
export const fetchIn = (sb: Sandbox, port: number) => sb.shell(`timeout 10 wget -q -O- http://10.0.2.2:${port}/ 2>&1 || echo FAIL`);
