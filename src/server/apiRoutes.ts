/**
 * The HTTP API of `corral serve`: JSON in, JSON out, one route per SDK verb.
 *
 *   GET    /v1/sandboxes                       list (?label=k=v repeated)
 *   POST   /v1/sandboxes                       create { config, detached?, replace? } → 201 info
 *   GET    /v1/sandboxes/:name                 info
 *   DELETE /v1/sandboxes/:name                 remove (stopped only) → 204
 *   POST   /v1/sandboxes/:name/exec            { command, args?, stdin?, env?, cwd?, timeoutMs?, user?, tty? } → result
 *   POST   /v1/sandboxes/:name/run             { args?, entrypoint?, …exec options } → result (the image's command)
 *   …      /v1/sandboxes/:name/files…          files (src/server/fileRoutes.ts)
 *   POST   /v1/sandboxes/:name/{start|stop|kill|pause|resume}   → info
 *   GET    /v1/sandboxes/:name/logs            ?since=ms&tail=n → [{ ts, execId, stream, text }]
 *   GET    /v1/sandboxes/:name/metrics         one sample
 *   GET    /v1/machine                         the lifecycle machine as a graph (inspector)
 *   GET    /v1/openapi.json                    the OpenAPI 3.1 contract of all of this (src/server/openapi.ts)
 *
 * Every request is matched to an operation of that contract and its query and JSON body are
 * validated against it first: a route it does not list answers E_ROUTE_NOT_FOUND.
 * Errors answer `{ error: { name, code, message } }` with a status that follows the code.
 */

import type { IncomingMessage, ServerResponse } from 'node:http';
import { sandboxMachine } from '../../machines/sandbox.machine.ts';
import type { SandboxConfig } from '../config.ts';
import { CorralError, serializeError } from '../errors.ts';
import { machineGraph } from '../inspector/machineGraph.ts';
import type { ExecOptions, ExecResult } from '../sdk/exec.ts';
import { Sandbox } from '../sdk/Sandbox.ts';
import type { Supervisor } from '../supervisor/Supervisor.ts';
import type { Cluster } from '../cluster/Cluster.ts';

/** Where the API's sandboxes live: one supervisor (this host), or a cluster (`corral --nats URL serve`). */
export type ApiBackend = { readonly supervisor: Supervisor } | { readonly cluster: Cluster };
import { fsStatus, handleFiles } from './fileRoutes.ts';
import { logFailure } from '../runtime/log.ts';
import { matchOperation, openApiDocument, validateBody, validateQuery } from './openapi.ts';

/** Largest request body accepted (a config, or an exec with its stdin). */
const MAX_BODY = 16 * 1024 * 1024;

const STATUS: Readonly<Record<string, number>> = {
  E_INVALID_OPTION: 400,
  E_USAGE: 400,
  E_NO_COMMAND: 400,
  E_UNAUTHORIZED: 401,
  E_SANDBOX_NOT_FOUND: 404,
  E_IMAGE_NOT_FOUND: 404,
  E_ROUTE_NOT_FOUND: 404,
  E_EXEC_NOT_FOUND: 404,
  E_SANDBOX_EXISTS: 409,
  E_ILLEGAL_STATE: 409,
  E_NO_CAPACITY: 503,
  E_NODE_LOST: 503,
  E_TIMEOUT: 504,
};

/** The HTTP status for an error. */
export function httpStatus(err: unknown): number {
  if (err instanceof CorralError && err.code === 'E_FS') return fsStatus(err.details?.errno);
  if (err instanceof CorralError) return STATUS[err.code] ?? 500;
  if (err instanceof TypeError || err instanceof RangeError || err instanceof SyntaxError) return 400;
  return 500;
}

/** Writes a JSON answer. */
export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' });
  res.end(text);
}

/** Writes an error answer. */
export function sendError(res: ServerResponse, err: unknown): void {
  const s = serializeError(err);
  sendJson(res, httpStatus(err), { error: { name: s.name, code: s.code ?? 'E_INTERNAL', message: s.message, ...(s.details ? { details: s.details } : {}) } });
}

/** The JSON object of the request body; undefined when there is none. */
async function readJson(req: IncomingMessage): Promise<Record<string, unknown> | undefined> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of req as AsyncIterable<Buffer>) {
    size += c.length;
    if (size > MAX_BODY) throw new CorralError('E_INVALID_OPTION', `request body larger than ${MAX_BODY} bytes`);
    chunks.push(c);
  }
  if (size === 0) return undefined;
  let v: unknown;
  try {
    v = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch (err) {
    throw new CorralError('E_INVALID_OPTION', `invalid option body: not JSON (${(err as Error).message})`, { cause: err, details: { option: 'body' } });
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new TypeError('the request body must be a JSON object');
  return v as Record<string, unknown>;
}

function num(v: string | null, what: string): number | undefined {
  if (v === null || v === '') return undefined;
  const n = Number(v);
  if (!Number.isFinite(n)) throw new TypeError(`${what} must be a number (got ${JSON.stringify(v)})`);
  return n;
}

/** The exec options of an `exec` or `run` body. */
function execOptions(body: Record<string, unknown>): ExecOptions {
  return {
    ...(typeof body.stdin === 'string' ? { stdin: body.stdin } : {}),
    ...(body.env ? { env: body.env as Record<string, string> } : {}),
    ...(typeof body.cwd === 'string' ? { cwd: body.cwd } : {}),
    ...(typeof body.timeoutMs === 'number' ? { timeoutMs: body.timeoutMs } : {}),
    // Checked by the SDK (E_INVALID_OPTION → 400); a tty exec's output is all in stdout.
    ...(body.user !== undefined ? { user: body.user as string } : {}),
    ...(body.tty !== undefined ? { tty: body.tty as boolean } : {}),
  };
}

/** The JSON answer of an `exec` or `run`. */
function execResult(r: ExecResult): Record<string, unknown> {
  return { execId: r.execId, code: r.code, signal: r.signal, stdout: r.stdout, stderr: r.stderr, timedOut: r.timedOut, reason: r.reason, durationMs: r.durationMs };
}

/** Runs `fn` with a handle on `name`, let go of afterwards (the sandbox keeps running). */
async function withSandbox<T>(where: ApiBackend, name: string, fn: (sb: Sandbox) => Promise<T>): Promise<T> {
  const sb = await Sandbox.get(name, where);
  try {
    return await fn(sb);
  } finally {
    await sb.detach().catch(logFailure(`detaching from sandbox ${name}`));
  }
}

/**
 * Answers one API request. Resolves once the answer is written; `false` when the path is not
 * an API path (the caller serves something else or a 404).
 */
export async function handleApi(where: ApiBackend, req: IncomingMessage, res: ServerResponse, url: URL): Promise<boolean> {
  const path = url.pathname;
  if (!path.startsWith('/v1/')) return false;
  const method = req.method ?? 'GET';
  try {
    // The contract first: the route, its query and its JSON body (a file's bytes stream on).
    const op = matchOperation(method, path);
    validateQuery(op, url.searchParams);
    const parsed = op.body ? await readJson(req) : undefined;
    validateBody(op, parsed, parsed !== undefined);
    const body = parsed ?? {};
    if (path === '/v1/openapi.json') {
      sendJson(res, 200, openApiDocument);
      return true;
    }
    if (path === '/v1/events') throw new CorralError('E_USAGE', 'GET /v1/events is a WebSocket: send Upgrade: websocket');
    if (path === '/v1/machine' && method === 'GET') {
      sendJson(res, 200, await machineGraph(sandboxMachine));
      return true;
    }
    if (path === '/v1/sandboxes') {
      if (method === 'GET') {
        const labels: Record<string, string> = {};
        for (const l of url.searchParams.getAll('label')) {
          const eq = l.indexOf('=');
          if (eq < 1) throw new TypeError(`label must be key=value (got ${JSON.stringify(l)})`);
          labels[l.slice(0, eq)] = l.slice(eq + 1);
        }
        sendJson(res, 200, await Sandbox.list({ ...where, ...(Object.keys(labels).length ? { labels } : {}) }));
        return true;
      }
      if (method === 'POST') {
        const config = body.config as SandboxConfig;
        const opts = { ...where, replace: body.replace === true };
        // A cluster's sandboxes live on their nodes: detached or not is the nodes' business.
        const sb = body.detached === true && 'supervisor' in where ? await Sandbox.createDetached(config, { ...opts, supervisor: where.supervisor }) : await Sandbox.create(config, opts);
        const info = await sb.info();
        await sb.detach();
        sendJson(res, 201, info);
        return true;
      }
    }
    const files = /^\/v1\/sandboxes\/([^/]+)\/files(?:\/([a-z]+))?$/.exec(path);
    if (files) {
      await withSandbox(where, decodeURIComponent(files[1]!), (sb) => handleFiles(sb, req, res, url, files[2], body));
      return true;
    }
    const m = /^\/v1\/sandboxes\/([^/]+)(?:\/([a-z]+))?$/.exec(path);
    if (m) {
      const name = decodeURIComponent(m[1]!);
      const verb = m[2];
      if (!verb && method === 'GET') {
        sendJson(res, 200, await withSandbox(where, name, (sb) => sb.info()));
        return true;
      }
      if (!verb && method === 'DELETE') {
        await Sandbox.remove(name, where);
        sendJson(res, 204, undefined);
        return true;
      }
      if (verb === 'logs' && method === 'GET') {
        const since = num(url.searchParams.get('since'), 'since');
        const tail = num(url.searchParams.get('tail'), 'tail');
        const entries = await Sandbox.logs(name, { ...where, ...(since !== undefined ? { since } : {}), ...(tail !== undefined ? { tail } : {}) });
        sendJson(
          res,
          200,
          entries.map((e) => ({ ts: e.ts, execId: e.execId, stream: e.stream, text: Buffer.from(e.data).toString('utf8') })),
        );
        return true;
      }
      if (verb === 'metrics' && method === 'GET') {
        sendJson(res, 200, await withSandbox(where, name, (sb) => sb.metrics()));
        return true;
      }
      if (method === 'POST' && verb === 'exec') {
        const args = (body.args ?? []) as string[];
        const r = await withSandbox(where, name, (sb) => sb.exec(body.command as string, args, execOptions(body)));
        sendJson(res, 200, execResult(r));
        return true;
      }
      if (method === 'POST' && verb === 'run') {
        // args and entrypoint are checked by the SDK (imageCommandRequest: E_INVALID_OPTION → 400).
        const r = await withSandbox(where, name, (sb) =>
          sb.run((body.args ?? []) as string[], {
            ...execOptions(body),
            ...(body.entrypoint !== undefined ? { entrypoint: body.entrypoint as string[] } : {}),
          }),
        );
        sendJson(res, 200, execResult(r));
        return true;
      }
      if (method === 'POST' && verb === 'start') {
        const sb = await Sandbox.start(name, 'supervisor' in where ? { supervisor: where.supervisor, detached: body.detached === true } : where);
        const info = await sb.info();
        await sb.detach();
        sendJson(res, 200, info);
        return true;
      }
      if (method === 'POST' && (verb === 'stop' || verb === 'kill' || verb === 'pause' || verb === 'resume')) {
        const info = await withSandbox(where, name, async (sb) => {
          if (verb === 'stop') return sb.stop(typeof body.timeoutMs === 'number' ? { timeoutMs: body.timeoutMs } : {});
          if (verb === 'kill') return sb.kill();
          await (verb === 'pause' ? sb.pause() : sb.resume());
          return sb.info();
        });
        sendJson(res, 200, info);
        return true;
      }
    }
    throw new CorralError('E_ROUTE_NOT_FOUND', `no route ${method} ${path}`);
  } catch (err) {
    if (!res.headersSent) sendError(res, err);
    else res.destroy();
    return true;
  }
}
