/**
 * The file routes of `corral serve`, over `sandbox.fs()`; bodies stream both ways (a file is
 * never held whole in the server):
 *
 *   GET    /v1/sandboxes/:name/files?path=P            the file's bytes (application/octet-stream)
 *   PUT    /v1/sandboxes/:name/files?path=P[&mode=0644][&parents=1][&append=1]   body = the bytes → 201 stat
 *   DELETE /v1/sandboxes/:name/files?path=P[&recursive=1]   → 204
 *   GET    /v1/sandboxes/:name/files/list?path=P       → [{ name, type, mode, sizeBytes, mtimeMs, uid, gid }]
 *   GET    /v1/sandboxes/:name/files/stat?path=P       → { type, mode, sizeBytes, mtimeMs, uid, gid }
 *   POST   /v1/sandboxes/:name/files/mkdir             { path, recursive?, mode? } → 201 stat
 */

import type { IncomingMessage, ServerResponse } from 'node:http';
import { pipeline } from 'node:stream/promises';
import { CorralError } from '../errors.ts';
import type { Sandbox } from '../sdk/Sandbox.ts';

/** The HTTP status of an E_FS error, from its errno. */
export function fsStatus(errno: unknown): number {
  switch (errno) {
    case 'ENOENT':
      return 404;
    case 'EEXIST':
    case 'ENOTEMPTY':
    case 'EBUSY':
      return 409;
    case 'EACCES':
    case 'EPERM':
    case 'EROFS':
      return 403;
    case 'ENOSPC':
    case 'EDQUOT':
      return 507;
    default:
      return 400;
  }
}

function pathParam(url: URL): string {
  const path = url.searchParams.get('path');
  if (!path) throw new CorralError('E_INVALID_OPTION', 'invalid option path: the query needs ?path=/absolute/guest/path', { details: { option: 'path' } });
  return path;
}

function flag(url: URL, name: string): boolean {
  const v = url.searchParams.get(name);
  if (v === null || v === '0' || v === 'false') return false;
  if (v === '' || v === '1' || v === 'true') return true;
  throw new CorralError('E_INVALID_OPTION', `invalid option ${name}: 1, true, 0 or false (got ${JSON.stringify(v)})`, { details: { option: name } });
}

function mode(v: unknown): number | undefined {
  if (v === undefined || v === null) return undefined;
  const n = typeof v === 'number' ? v : /^0?[0-7]{1,4}$/.test(String(v)) ? parseInt(String(v), 8) : NaN;
  if (!Number.isInteger(n) || n < 0 || n > 0o7777) throw new CorralError('E_INVALID_OPTION', `invalid option mode: octal permission bits 0–7777 (got ${JSON.stringify(v)})`, { details: { option: 'mode' } });
  return n;
}

function json(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' });
  res.end(body === undefined ? '' : JSON.stringify(body));
}

/**
 * Answers one file request on a running sandbox; `verb` is `list`, `stat`, `mkdir` or
 * undefined (the file itself). Throws for the caller to answer (E_ROUTE_NOT_FOUND for a method
 * the path does not take).
 *
 * @example
 * await handleFiles(sb, req, res, url, 'stat', {});
 */
export async function handleFiles(sb: Sandbox, req: IncomingMessage, res: ServerResponse, url: URL, verb: string | undefined, body: Record<string, unknown>): Promise<void> {
  const method = req.method ?? 'GET';
  const fs = sb.fs();
  if (verb === 'list' && method === 'GET') return json(res, 200, await fs.list(pathParam(url)));
  if (verb === 'stat' && method === 'GET') return json(res, 200, await fs.stat(pathParam(url)));
  if (verb === 'mkdir' && method === 'POST') {
    if (typeof body.path !== 'string') throw new CorralError('E_INVALID_OPTION', 'invalid option path: mkdir needs { "path": "/absolute/guest/path" }', { details: { option: 'path' } });
    const m = mode(body.mode);
    await fs.mkdir(body.path, { recursive: body.recursive === true, ...(m !== undefined ? { mode: m } : {}) });
    return json(res, 201, await fs.stat(body.path));
  }
  if (verb === undefined && method === 'GET') {
    const path = pathParam(url);
    const st = await fs.stat(path);
    if (st.type !== 'file') throw new CorralError('E_FS', `${path} is a ${st.type}, not a file (list a directory with files/list)`, { details: { errno: st.type === 'directory' ? 'EISDIR' : 'EINVAL', path } });
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(st.sizeBytes), 'cache-control': 'no-store', 'x-corral-mode': st.mode.toString(8) });
    // A file that changes size meanwhile ends the body short or long: the client sees the mismatch.
    return pipeline(fs.createReadStream(path), res);
  }
  if (verb === undefined && method === 'PUT') {
    const path = pathParam(url);
    const m = mode(url.searchParams.get('mode'));
    await pipeline(req, fs.createWriteStream(path, { parents: flag(url, 'parents'), append: flag(url, 'append'), ...(m !== undefined ? { mode: m } : {}) }));
    return json(res, 201, await fs.stat(path));
  }
  if (verb === undefined && method === 'DELETE') {
    await fs.remove(pathParam(url), { recursive: flag(url, 'recursive') });
    return json(res, 204, undefined);
  }
  throw new CorralError('E_ROUTE_NOT_FOUND', `no route ${method} ${url.pathname}`);
}
