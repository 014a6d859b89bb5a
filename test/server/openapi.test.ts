// The OpenAPI 3.1 contract of `corral serve`: a valid document, served at /v1/openapi.json;
// every documented operation answers and nothing else does; requests are checked against it
// at the edge; answers match it. A real server on loopback with a real VM behind it.
import { Validator } from '@seriousme/openapi-schema-validator';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CorralServer } from '../../src/server/CorralServer.ts';
import { openApiDocument } from '../../src/server/openapi.ts';
import type { Supervisor } from '../../src/supervisor/Supervisor.ts';
import { testSupervisor, uniqueName } from '../helpers/sandbox.ts';

type Doc = { paths: Record<string, Record<string, { operationId: string; responses: Record<string, { content?: Record<string, { schema: unknown }> }> }>>; components: { schemas: Record<string, unknown> } };
const doc = openApiDocument as unknown as Doc;
const METHODS = ['get', 'post', 'put', 'delete', 'patch'] as const;

describe('the OpenAPI contract of corral serve', () => {
  let sup: Supervisor;
  let server: CorralServer;
  const name = uniqueName('oas');
  const api = async (method: string, path: string, body?: unknown, raw?: string) => {
    const res = await fetch(`${server.url}${path}`, {
      method: method.toUpperCase(),
      headers: body !== undefined ? { 'content-type': 'application/json' } : raw !== undefined ? { 'content-type': 'application/octet-stream' } : {},
      ...(body !== undefined ? { body: JSON.stringify(body) } : raw !== undefined ? { body: raw } : {}),
    });
    const text = await res.text();
    let parsed: any;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch (err) {
      if (!(err instanceof SyntaxError)) throw err;
      parsed = text; // a file's bytes
    }
    return { status: res.status, body: parsed };
  };
  /** Checks an answer against the documented schema of its operation and status. */
  const ajv = new Ajv2020({ strict: false });
  ajv.addSchema({ $id: 'corral', components: doc.components });
  const matches = (template: string, method: string, status: number, body: unknown) => {
    const schema = doc.paths[template]![method]!.responses[String(status)]?.content?.['application/json']?.schema;
    expect(schema, `${method} ${template} documents status ${status}`).toBeDefined();
    const validate = ajv.compile(JSON.parse(JSON.stringify(schema).replaceAll('"#/components/', '"corral#/components/')));
    expect(validate(body), `${method} ${template} ${status}: ${ajv.errorsText(validate.errors)}`).toBe(true);
  };

  beforeAll(async () => {
    sup = testSupervisor();
    server = await CorralServer.listen({ supervisor: sup });
  });
  afterAll(async () => {
    await server?.close();
    await sup?.close();
  });

  it('is a valid OpenAPI 3.1 document, served at /v1/openapi.json', async () => {
    const result = await new Validator().validate(structuredClone(openApiDocument) as unknown as Parameters<Validator['validate']>[0]);
    expect(result.errors ?? []).toEqual([]);
    expect(result.valid).toBe(true);
    const served = await api('GET', '/v1/openapi.json');
    expect(served.status).toBe(200);
    expect(served.body).toEqual(JSON.parse(JSON.stringify(openApiDocument)));
  });

  it('answers every documented operation, and nothing else (on a running sandbox)', async () => {
    const created = await api('POST', '/v1/sandboxes', { config: { name, memoryMib: 128 } });
    expect(created.status).toBe(201);
    matches('/v1/sandboxes', 'post', 201, created.body);
    // Inputs each operation takes; the order keeps the sandbox alive until the verbs that end it.
    const inputs: Record<string, { query?: string; body?: unknown; raw?: string }> = {
      writeFile: { query: '?path=/tmp/oas.txt', raw: 'hello' },
      readFile: { query: '?path=/tmp/oas.txt' },
      statFile: { query: '?path=/tmp/oas.txt' },
      listFiles: { query: '?path=/tmp' },
      mkdir: { body: { path: '/tmp/oas-dir' } },
      removeFile: { query: '?path=/tmp/oas-dir' },
      exec: { body: { command: 'echo', args: ['ok'] } },
      run: { body: { args: ['true'] } },
      logs: { query: '?tail=5' },
      stop: { body: { timeoutMs: 5000 } },
      start: { body: {} },
      createSandbox: { body: { config: { name: `${name}-2`, memoryMib: 128 } } },
    };
    const order = ['openapi', 'machine', 'listSandboxes', 'getSandbox', 'writeFile', 'readFile', 'statFile', 'listFiles', 'mkdir', 'removeFile', 'exec', 'run', 'logs', 'metrics', 'pause', 'resume', 'events', 'stop', 'start', 'kill', 'createSandbox', 'removeSandbox'];
    const documented = Object.entries(doc.paths).flatMap(([template, item]) => METHODS.filter((m) => item[m]).map((m) => ({ template, method: m, id: item[m]!.operationId })));
    expect(documented.map((d) => d.id).sort()).toEqual([...order].sort());
    for (const id of order) {
      const { template, method } = documented.find((d) => d.id === id)!;
      const input = inputs[id] ?? {};
      const path = template.replace('{name}', name) + (input.query ?? '');
      const r = await api(method, path, input.body, input.raw);
      expect(r.body?.error?.code, `${method.toUpperCase()} ${path}`).not.toBe('E_ROUTE_NOT_FOUND');
      if (r.status < 300 && r.status !== 204 && id !== 'readFile') matches(template, method, r.status, r.body);
      if (id === 'createSandbox') expect(r.status).toBe(201);
    }
    // The second sandbox of createSandbox, then this one: stopped, removed.
    await api('POST', `/v1/sandboxes/${name}-2/kill`);
    expect((await api('DELETE', `/v1/sandboxes/${name}-2`)).status).toBe(204);
    expect((await api('GET', `/v1/sandboxes/${name}`)).body.error.code).toBe('E_SANDBOX_NOT_FOUND');

    // Every method a documented path does not list, and paths the document does not have.
    for (const [template, item] of Object.entries(doc.paths)) {
      for (const m of METHODS.filter((x) => !item[x])) {
        const r = await api(m, template.replace('{name}', name));
        expect(r.body?.error?.code, `${m.toUpperCase()} ${template}`).toBe('E_ROUTE_NOT_FOUND');
      }
    }
    for (const path of ['/v1/nothing', `/v1/sandboxes/${name}/bogus`, `/v1/sandboxes/${name}/files/chmod`, '/v1/sandboxes/a/b/c']) {
      expect((await api('GET', path)).body.error.code, path).toBe('E_ROUTE_NOT_FOUND');
    }
  });

  it('checks requests against the contract at the edge, naming the field', async () => {
    const bad = async (method: string, path: string, body: unknown, field: string) => {
      const r = await api(method, path, body);
      expect(r.status, `${method} ${path}`).toBe(400);
      expect(r.body.error.code).toBe('E_INVALID_OPTION');
      expect(r.body.error.message).toContain(`invalid option ${field}`);
      matches(path.startsWith('/v1/sandboxes/x/') ? `/v1/sandboxes/{name}/${path.split('/')[4]!.split('?')[0]}` : '/v1/sandboxes', method.toLowerCase(), 400, r.body);
    };
    await bad('POST', '/v1/sandboxes/x/exec', { args: ['a'] }, 'command');
    await bad('POST', '/v1/sandboxes/x/exec', { command: 'ls', colour: 'red' }, 'colour');
    await bad('POST', '/v1/sandboxes/x/exec', { command: 'ls', timeoutMs: -5 }, 'timeoutMs');
    await bad('POST', '/v1/sandboxes', { config: { name: 'ok', memoryMib: 'lots' } }, 'config.memoryMib');
    await bad('POST', '/v1/sandboxes', { config: { name: 'ok', idleAction: 'nap' } }, 'config.idleAction');
    await bad('POST', '/v1/sandboxes', { name: 'ok' }, 'config');
    await bad('POST', '/v1/sandboxes/x/exec', undefined, 'body');
    const noPath = await api('GET', '/v1/sandboxes/x/files/stat');
    expect(noPath.body.error).toMatchObject({ code: 'E_INVALID_OPTION', message: expect.stringContaining('invalid option path') });
    const tail = await api('GET', '/v1/sandboxes/x/logs?tail=many');
    expect(tail.body.error).toMatchObject({ code: 'E_INVALID_OPTION', message: expect.stringContaining('invalid option tail') });
    const notJson = await fetch(`${server.url}/v1/sandboxes/x/exec`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"command":' });
    expect((await notJson.json()).error).toMatchObject({ code: 'E_INVALID_OPTION', message: expect.stringContaining('invalid option body') });
  });
});
