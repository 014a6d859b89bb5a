/**
 * `corral mcp`: the MCP server of src/mcp/tools.ts on a transport. stdio by default (an MCP
 * client starts `corral mcp` and speaks JSON-RPC on its stdin/stdout; nothing else may be
 * written to stdout, so corral's own logs go to stderr), or streamable HTTP with `--http
 * PORT` at `/mcp`, loopback unless a token is set, as `corral serve`.
 */

import { randomUUID, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { StdioServerTransport } from '@modelcontextprotocol/sdk/server/stdio.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { isInitializeRequest } from '@modelcontextprotocol/sdk/types.js';
import { CorralError } from '../errors.ts';
import { logFailure } from '../runtime/log.ts';
import { createMcpServer, type McpServerOptions } from './tools.ts';

const LOOPBACK = new Set(['127.0.0.1', '::1', 'localhost']);

/**
 * Serves MCP on this process's stdin/stdout until the client closes stdin (or `signal`
 * aborts). Resolves once the transport closed.
 */
export async function serveMcpStdio(options: McpServerOptions & { signal?: AbortSignal }): Promise<void> {
  const server = createMcpServer(options);
  const transport = new StdioServerTransport();
  const closed = new Promise<void>((resolve) => {
    transport.onclose = resolve;
    process.stdin.once('end', resolve);
    options.signal?.addEventListener('abort', () => resolve(), { once: true });
  });
  await server.connect(transport);
  await closed;
  await server.close();
}

/** Options of {@link McpHttpServer.listen}. */
export interface McpHttpOptions extends McpServerOptions {
  readonly port: number;
  /** Default 127.0.0.1; anything but loopback needs `token`. */
  readonly host?: string;
  /** Required as `Authorization: Bearer <token>` on every request when set (16 characters at least). */
  readonly token?: string;
}

/**
 * MCP over streamable HTTP at `/mcp`: one MCP session per client (`Mcp-Session-Id`), each
 * with its own server object, all sharing one supervisor.
 *
 * @example
 * const http = await McpHttpServer.listen({ supervisor, port: 0 });
 * console.log(`${http.url}/mcp`);
 * await http.close();
 */
export class McpHttpServer {
  readonly #http: Server;
  readonly #token: Buffer | undefined;
  readonly #sessions = new Map<string, StreamableHTTPServerTransport>();
  readonly #options: McpServerOptions;
  #closing: Promise<void> | undefined;

  private constructor(options: McpHttpOptions) {
    this.#options = options;
    this.#token = options.token === undefined ? undefined : Buffer.from(options.token);
    this.#http = createServer((req, res) => {
      this.#handle(req, res).catch((err: Error) => {
        logFailure('serving an MCP request')(err);
        if (!res.headersSent) res.writeHead(500, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ jsonrpc: '2.0', error: { code: -32603, message: err.message }, id: null }));
      });
    });
  }

  static async listen(options: McpHttpOptions): Promise<McpHttpServer> {
    const host = options.host ?? '127.0.0.1';
    if (!Number.isInteger(options.port) || options.port < 0 || options.port > 65535) throw new CorralError('E_INVALID_OPTION', `invalid option port: an integer from 0 to 65535 (got ${options.port})`);
    if (options.token !== undefined && options.token.length < 16) throw new CorralError('E_INVALID_OPTION', 'invalid option token: at least 16 characters');
    if (!LOOPBACK.has(host) && !options.token) throw new CorralError('E_INVALID_OPTION', `invalid option host: binding ${host} (not loopback) needs a token (--token or CORRAL_TOKEN)`);
    const server = new McpHttpServer(options);
    await new Promise<void>((resolve, reject) => {
      server.#http.once('error', reject);
      server.#http.listen(options.port, host, () => resolve());
    });
    return server;
  }

  /** `http://host:port` (the endpoint is `${url}/mcp`). */
  get url(): string {
    const a = this.#http.address() as AddressInfo;
    return `http://${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}`;
  }

  /** Ends every session and stops listening. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      await Promise.all([...this.#sessions.values()].map((t) => t.close()));
      this.#sessions.clear();
      this.#http.closeAllConnections();
      await new Promise<void>((resolve) => this.#http.close(() => resolve()));
    })();
    return this.#closing;
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    if (path !== '/mcp') return reply(res, 404, { error: { code: 'E_ROUTE_NOT_FOUND', message: `no route ${path} (the MCP endpoint is /mcp)` } });
    if (this.#token && !this.#authorized(req)) return reply(res, 401, { error: { code: 'E_UNAUTHORIZED', message: 'a valid bearer token is needed' } });
    const id = req.headers['mcp-session-id'];
    const sessionId = Array.isArray(id) ? id[0] : id;
    let transport = sessionId ? this.#sessions.get(sessionId) : undefined;
    let body: unknown;
    if (req.method === 'POST') body = await readJson(req);
    if (!transport) {
      if (req.method !== 'POST' || !isInitializeRequest(body)) {
        return reply(res, 400, { jsonrpc: '2.0', error: { code: -32000, message: sessionId ? `unknown MCP session ${sessionId}` : 'no MCP session: send an initialize request first' }, id: null });
      }
      const made = new StreamableHTTPServerTransport({
        sessionIdGenerator: randomUUID,
        onsessioninitialized: (sid) => void this.#sessions.set(sid, made),
      });
      made.onclose = () => {
        if (made.sessionId) this.#sessions.delete(made.sessionId);
      };
      await createMcpServer(this.#options).connect(made);
      transport = made;
    }
    await transport.handleRequest(req, res, body);
  }

  #authorized(req: IncomingMessage): boolean {
    const m = /^Bearer (.+)$/.exec(req.headers.authorization ?? '');
    if (!m || !this.#token) return false;
    const given = Buffer.from(m[1]!);
    return given.length === this.#token.length && timingSafeEqual(given, this.#token);
  }
}

function reply(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

/** The request body as JSON (bounded: an MCP request is small). */
async function readJson(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of req) {
    size += (c as Buffer).length;
    if (size > 16 * 1024 * 1024) throw new CorralError('E_INVALID_OPTION', 'MCP request body over 16 MiB');
    chunks.push(c as Buffer);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  if (!text) return undefined;
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new CorralError('E_INVALID_OPTION', `MCP request body is not JSON: ${(err as Error).message}`, { cause: err });
  }
}
