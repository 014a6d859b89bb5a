/**
 * `corral serve`: a supervisor's API over HTTP + WebSocket, so other processes and languages
 * can drive it, plus the inspector page (`/ui`). Given a cluster instead (`corral --nats URL
 * serve`), the same API fronts every sandbox of every node.
 *
 * Loopback by default. Bound to any other address it refuses to start without a token;
 * with a token every request must carry it (`Authorization: Bearer <token>`, or `?token=`
 * where a browser cannot set headers: the page and its WebSocket).
 */

import { timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Subscription } from 'rxjs';
import { WebSocketServer, type WebSocket } from 'ws';
import { CorralError } from '../errors.ts';
import { toWire } from '../link/wire.ts';
import { inspectorAsset } from '../inspector/assets.ts';
import type { Supervisor } from '../supervisor/Supervisor.ts';
import type { Cluster } from '../cluster/Cluster.ts';
import { handleApi, sendError, type ApiBackend } from './apiRoutes.ts';

/** Options of {@link CorralServer.listen}: a supervisor's sandboxes, or a cluster's. */
export type ServeOptions = ServeCommon & ({ readonly supervisor: Supervisor; readonly cluster?: undefined } | { readonly cluster: Cluster; readonly supervisor?: undefined });

interface ServeCommon {
  /** Address to bind. Default `127.0.0.1`. Anything but loopback needs `token`. */
  readonly host?: string;
  /** Port; 0 picks a free one. Default 0. */
  readonly port?: number;
  /** Required on every request when set; required to be set when `host` is not loopback. */
  readonly token?: string;
}

const LOOPBACK = new Set(['127.0.0.1', '::1', 'localhost']);
/** Most bytes a WebSocket client may lag behind before it is dropped (it can resume with since). */
const MAX_WS_BUFFER = 32 * 1024 * 1024;

/**
 * @example
 * const server = await CorralServer.listen({ supervisor: sup, port: 7070 });
 * console.log(server.url); // http://127.0.0.1:7070
 * await server.close();
 */
export class CorralServer {
  readonly #http: Server;
  readonly #wss: WebSocketServer;
  readonly #where: ApiBackend;
  readonly #token: string | undefined;
  readonly #subs = new Set<Subscription>();
  #closed: Promise<void> | undefined;

  private constructor(where: ApiBackend, token: string | undefined) {
    this.#where = where;
    this.#token = token;
    this.#http = createServer((req, res) => void this.#onRequest(req, res));
    // ws: the WebSocket protocol (framing, masking, close handshake) is not in Node 20's
    // standard library (its WebSocket client is experimental and there is no server side).
    this.#wss = new WebSocketServer({ noServer: true, maxPayload: 64 * 1024 });
    this.#http.on('upgrade', (req, socket, head) => this.#onUpgrade(req, socket, head));
  }

  /** Starts a server; resolves once it listens. */
  static async listen(options: ServeOptions): Promise<CorralServer> {
    const host = options.host ?? '127.0.0.1';
    const port = options.port ?? 0;
    if (!Number.isInteger(port) || port < 0 || port > 65535) throw new CorralError('E_INVALID_OPTION', `invalid option port: an integer from 0 to 65535 (got ${port})`);
    if (options.token !== undefined && options.token.length < 16) {
      throw new CorralError('E_INVALID_OPTION', 'invalid option token: at least 16 characters');
    }
    if (!LOOPBACK.has(host) && !options.token) {
      throw new CorralError('E_INVALID_OPTION', `invalid option host: binding ${host} (not loopback) needs a token (--token or CORRAL_TOKEN)`);
    }
    if (!options?.supervisor === !options?.cluster) throw new CorralError('E_INVALID_OPTION', 'invalid option supervisor: give a supervisor or a cluster, one of the two');
    const server = new CorralServer(options.cluster ? { cluster: options.cluster } : { supervisor: options.supervisor! }, options.token);
    await new Promise<void>((resolve, reject) => {
      server.#http.once('error', reject);
      server.#http.listen(port, host, () => {
        server.#http.off('error', reject);
        resolve();
      });
    });
    return server;
  }

  /** The base URL (`http://host:port`). */
  get url(): string {
    const a = this.#http.address() as AddressInfo;
    const host = a.family === 'IPv6' ? `[${a.address}]` : a.address;
    return `http://${host}:${a.port}`;
  }

  /** The port it listens on. */
  get port(): number {
    return (this.#http.address() as AddressInfo).port;
  }

  /** Stops listening, ends event streams and open connections. The supervisor (or cluster) stays open. Idempotent. */
  close(): Promise<void> {
    this.#closed ??= (async () => {
      for (const s of this.#subs) s.unsubscribe();
      this.#subs.clear();
      for (const c of this.#wss.clients) c.terminate();
      await new Promise<void>((r) => this.#wss.close(() => r()));
      this.#http.closeAllConnections();
      await new Promise<void>((r) => this.#http.close(() => r()));
    })();
    return this.#closed;
  }

  /**
   * Forceful close: the same as {@link close}, which already ends open connections at once
   * rather than waiting for them (a WebSocket event stream never ends by itself).
   */
  destroy(): Promise<void> {
    return this.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  #authorized(req: IncomingMessage, url: URL): boolean {
    if (!this.#token) return true;
    const header = req.headers.authorization;
    const given = header?.startsWith('Bearer ') ? header.slice(7) : (url.searchParams.get('token') ?? '');
    const a = Buffer.from(given);
    const b = Buffer.from(this.#token);
    return a.length === b.length && timingSafeEqual(a, b);
  }

  async #onRequest(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://localhost');
    try {
      if (url.pathname === '/') {
        res.writeHead(302, { location: `/ui${url.search}` });
        res.end();
        return;
      }
      const asset = req.method === 'GET' ? await inspectorAsset(url.pathname) : undefined;
      if (!this.#authorized(req, url)) throw new CorralError('E_UNAUTHORIZED', 'missing or wrong token');
      if (asset) {
        res.writeHead(200, { 'content-type': asset.type, 'cache-control': 'no-store', 'content-security-policy': "default-src 'self'; connect-src 'self'" });
        res.end(asset.body);
        return;
      }
      if (await handleApi(this.#where, req, res, url)) return;
      throw new CorralError('E_ROUTE_NOT_FOUND', `no route ${req.method} ${url.pathname}`);
    } catch (err) {
      if (!res.headersSent) sendError(res, err);
      else res.destroy();
    }
  }

  /** `GET /v1/events?name=&since=` upgraded to a WebSocket: one JSON event per message. */
  #onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const url = new URL(req.url ?? '/', 'http://localhost');
    const refuse = (status: number, text: string) => {
      socket.end(`HTTP/1.1 ${status} ${text}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n`);
    };
    if (url.pathname !== '/v1/events') return refuse(404, 'Not Found');
    if (!this.#authorized(req, url)) return refuse(401, 'Unauthorized');
    const name = url.searchParams.get('name') ?? undefined;
    const sinceText = url.searchParams.get('since');
    const since = sinceText === null || sinceText === '' ? undefined : Number(sinceText);
    if (since !== undefined && (!Number.isInteger(since) || since < 0)) return refuse(400, 'Bad Request');
    this.#wss.handleUpgrade(req, socket, head, (ws) => this.#stream(ws, name, since));
  }

  #stream(ws: WebSocket, name: string | undefined, since: number | undefined): void {
    const close = (code: number, reason: string) => {
      if (ws.readyState === ws.OPEN) ws.close(code, reason.slice(0, 120));
    };
    const filter = { ...(name !== undefined ? { name } : {}), ...(since !== undefined ? { since } : {}) };
    // A cluster's seqs are its event stream's: `since` resumes there the same way.
    const events$ = 'cluster' in this.#where ? this.#where.cluster.events(filter) : this.#where.supervisor.events(filter);
    const sub = events$.subscribe({
      next: (e) => {
        if (ws.bufferedAmount > MAX_WS_BUFFER) {
          // A client this far behind is dropped; it resumes with since = its last seq.
          close(1013, `too far behind at seq ${e.seq}: resume with since`);
          sub.unsubscribe();
          return;
        }
        ws.send(JSON.stringify(toWire(e)));
      },
      error: (err: Error) => close(1011, `${(err as { code?: string }).code ?? 'error'}: ${err.message}`),
      complete: () => close(1000, 'end of stream'),
    });
    this.#subs.add(sub);
    ws.on('close', () => {
      sub.unsubscribe();
      this.#subs.delete(sub);
    });
    ws.on('error', () => ws.terminate());
  }
}
