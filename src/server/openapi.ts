/**
 * The OpenAPI 3.1 contract of `corral serve` (served at `GET /v1/openapi.json`), and the
 * request validation that uses it at the edge: each request's path is matched to one
 * operation of this document, and its query and JSON body are checked with Ajv (JSON Schema
 * 2020-12, the dialect of OpenAPI 3.1) before any handler runs. One source: a route the
 * document does not list answers E_ROUTE_NOT_FOUND, and test/server/openapi.test.ts calls
 * every documented operation and checks that nothing else answers.
 */

import { Ajv2020, type ErrorObject, type ValidateFunction } from 'ajv/dist/2020.js';
import { CorralError } from '../errors.ts';

type Schema = Record<string, unknown>;

const ref = (name: string): Schema => ({ $ref: `#/components/schemas/${name}` });
const str = (description?: string): Schema => ({ type: 'string', ...(description ? { description } : {}) });
const int = (description?: string, min = 0): Schema => ({ type: 'integer', minimum: min, ...(description ? { description } : {}) });
const nullable = (s: Schema): Schema => ({ oneOf: [s, { type: 'null' }] });
const stringMap: Schema = { type: 'object', additionalProperties: { type: 'string' } };

const execOptions: Record<string, Schema> = {
  stdin: str('Text written to the command\'s stdin, which is then closed.'),
  env: stringMap,
  cwd: str('Working directory (absolute).'),
  timeoutMs: int('Kill the command after this many ms (the result then says timedOut).', 1),
  user: str('A guest user: name, uid, name:group or uid:gid.'),
  tty: { type: 'boolean', description: 'Run on a pseudo-terminal (all output in stdout).' },
};

const schemas: Record<string, Schema> = {
  Error: {
    type: 'object',
    required: ['error'],
    properties: {
      error: {
        type: 'object',
        required: ['code', 'message'],
        properties: { name: str(), code: str('A stable code from the README\'s table, e.g. E_SANDBOX_NOT_FOUND.'), message: str(), details: { type: 'object' } },
      },
    },
  },
  SandboxConfig: {
    type: 'object',
    description: 'A sandbox config (the JSON `builder.build()` makes). Fields are checked again, with the option named, by the runtime.',
    required: ['name'],
    additionalProperties: false,
    properties: {
      name: { type: 'string', pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$' },
      image: str('OCI reference or corral/base.'),
      memoryMib: int('Guest memory, MiB.', 1),
      cpus: int('vCPUs.', 1),
      workdir: str(),
      shell: str(),
      env: stringMap,
      labels: stringMap,
      accel: { enum: ['auto', 'kvm', 'tcg'] },
      bootTimeoutMs: int(undefined, 1),
      stopTimeoutMs: int(),
      maxDurationMs: int(undefined, 1),
      idleTimeoutMs: int(undefined, 1),
      idleAction: { enum: ['stop', 'pause'] },
      logLevel: { enum: ['error', 'warn', 'info', 'debug', 'trace'] },
      template: { type: 'boolean' },
      fromSnapshot: str(),
      pullPolicy: { enum: ['always', 'if-missing', 'never'] },
      registryAuth: { type: 'object' },
      insecureRegistries: { type: 'array', items: { type: 'string' } },
      disk: { type: 'object' },
      volumes: { type: 'array', items: { type: 'object', required: ['guestPath', 'kind'], properties: { guestPath: str(), kind: { enum: ['bind', 'named', 'tmpfs'] } } } },
      scripts: stringMap,
      patches: { type: 'array', items: { type: 'object' } },
      network: { type: 'object', properties: { preset: { enum: ['none', 'allow-all', 'public-only', 'deny-all'] }, rules: { type: 'array' }, dns: { type: 'boolean' } } },
      ports: { type: 'array', items: { type: 'object', required: ['hostPort', 'guestPort'], properties: { hostPort: int(undefined, 1), guestPort: int(undefined, 1) } } },
    },
  },
  CreateRequest: {
    type: 'object',
    required: ['config'],
    additionalProperties: false,
    properties: { config: ref('SandboxConfig'), detached: { type: 'boolean' }, replace: { type: 'boolean' } },
  },
  SandboxInfo: {
    type: 'object',
    required: ['name', 'status', 'state'],
    properties: {
      name: str(),
      status: ref('SandboxStatus'),
      state: str('The machine\'s leaf state (booting, running, snapshotting, paused, stopping…).'),
      pid: nullable(int()),
      accel: nullable(str()),
      accelReason: nullable(str()),
      bootMs: nullable({ type: 'number' }),
      guestBootMs: nullable({ type: 'number' }),
      agentVersion: nullable(str()),
      inFlight: int(),
      stopReason: nullable(str()),
      exitCode: nullable({ type: 'integer' }),
      exitSignal: nullable(str()),
      error: nullable({ type: 'object' }),
    },
  },
  SandboxStatus: { enum: ['creating', 'running', 'paused', 'draining', 'stopped'] },
  SandboxSummary: {
    type: 'object',
    required: ['name', 'status'],
    properties: { name: str(), status: ref('SandboxStatus'), image: str(), labels: stringMap, detached: { type: 'boolean' }, stopReason: nullable(str()), createdAt: { type: 'number' }, updatedAt: { type: 'number' } },
  },
  ExecRequest: {
    type: 'object',
    required: ['command'],
    additionalProperties: false,
    properties: { command: { type: 'string', minLength: 1 }, args: { type: 'array', items: { type: 'string' } }, ...execOptions },
  },
  RunRequest: {
    type: 'object',
    additionalProperties: false,
    properties: { args: { type: 'array', items: { type: 'string' } }, entrypoint: { type: 'array', items: { type: 'string' } }, ...execOptions },
  },
  ExecResult: {
    type: 'object',
    required: ['code', 'stdout', 'stderr', 'reason'],
    properties: {
      execId: int(),
      code: nullable({ type: 'integer' }),
      signal: nullable({ type: 'integer' }),
      stdout: str(),
      stderr: str(),
      timedOut: { type: 'boolean' },
      reason: { enum: ['exited', 'signaled', 'timeout', 'oom'] },
      durationMs: { type: 'number' },
    },
  },
  StartRequest: { type: 'object', additionalProperties: false, properties: { detached: { type: 'boolean' } } },
  StopRequest: { type: 'object', additionalProperties: false, properties: { timeoutMs: int('Graceful stop; killed after this many ms.') } },
  MkdirRequest: { type: 'object', required: ['path'], additionalProperties: false, properties: { path: str(), recursive: { type: 'boolean' }, mode: { oneOf: [{ type: 'integer' }, { type: 'string' }] } } },
  FsStat: {
    type: 'object',
    required: ['type', 'mode', 'sizeBytes'],
    properties: { type: { enum: ['file', 'directory', 'symlink', 'other'] }, mode: int(), sizeBytes: int(), mtimeMs: { type: 'number' }, uid: int(), gid: int() },
  },
  FsEntry: { allOf: [ref('FsStat'), { type: 'object', required: ['name'], properties: { name: str() } }] },
  LogEntry: { type: 'object', required: ['ts', 'execId', 'stream', 'text'], properties: { ts: { type: 'number' }, execId: int(), stream: { enum: ['stdout', 'stderr'] }, text: str() } },
  Metrics: { type: 'object', required: ['ts', 'pid', 'cpuPercent'], properties: { ts: { type: 'number' }, pid: int(), cpuPercent: { type: 'number' }, cpuSeconds: { type: 'number' }, memory: { type: 'object' }, disk: { type: 'object' }, network: nullable({ type: 'object' }) } },
  MachineGraph: { type: 'object', required: ['nodes', 'edges'], properties: { nodes: { type: 'array' }, edges: { type: 'array' } } },
  SandboxEvent: {
    type: 'object',
    required: ['type', 'name', 'seq', 'ts'],
    description: 'One event of the bus (README "Events"): lifecycle (sandbox.*), exec (exec.*), image pulls (image.*). Bytes travel as { "$b64": "…" }.',
    properties: { type: str(), name: str(), seq: int(), ts: { type: 'number' } },
  },
};

const nameParam = { name: 'name', in: 'path', required: true, schema: { type: 'string' } };
const pathQuery = { name: 'path', in: 'query', required: true, schema: { type: 'string', minLength: 1 }, description: 'An absolute path in the guest.' };
const flagQuery = (n: string, description: string) => ({ name: n, in: 'query', required: false, schema: { enum: ['', '0', '1', 'true', 'false'] }, description });
const json = (s: Schema, description = 'OK') => ({ description, content: { 'application/json': { schema: s } } });
const errors = {
  '400': json(ref('Error'), 'Bad input (E_INVALID_OPTION, naming the option)'),
  '401': json(ref('Error'), 'Missing or wrong token (E_UNAUTHORIZED)'),
  '404': json(ref('Error'), 'No such sandbox, image, exec or route'),
  '409': json(ref('Error'), 'Illegal in the sandbox\'s state, or the name exists'),
  '500': json(ref('Error'), 'Anything else (E_*)'),
  '503': json(ref('Error'), 'No room for a new sandbox (E_NO_CAPACITY), or the cluster node of the sandbox is lost (E_NODE_LOST)'),
  '504': json(ref('Error'), 'The call did not finish in time (E_TIMEOUT)'),
};
const body = (s: Schema, required = true) => ({ required, content: { 'application/json': { schema: s } } });
const op = (operationId: string, summary: string, rest: Record<string, unknown>) => ({ operationId, summary, ...rest, responses: { ...(rest.responses as object), ...errors } });

/** The document `GET /v1/openapi.json` answers. */
export const openApiDocument = {
  openapi: '3.1.0',
  info: {
    title: 'corral',
    version: '0.1.0',
    description: 'microVM sandboxes for untrusted code: the HTTP API of `corral serve`. Loopback by default; with a token every request needs `Authorization: Bearer <token>` (or `?token=`).',
  },
  jsonSchemaDialect: 'https://json-schema.org/draft/2020-12/schema',
  servers: [{ url: '/' }],
  security: [{ bearer: [] }, {}],
  components: { schemas, securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
  paths: {
    '/v1/openapi.json': { get: op('openapi', 'This document', { responses: { '200': json({ type: 'object' }) } }) },
    '/v1/machine': { get: op('machine', 'The sandbox lifecycle machine as a graph (nodes and labelled edges), as the inspector draws it', { responses: { '200': json(ref('MachineGraph')) } }) },
    '/v1/sandboxes': {
      get: op('listSandboxes', 'Every sandbox, running and stopped', {
        parameters: [{ name: 'label', in: 'query', required: false, style: 'form', explode: true, schema: { type: 'array', items: { type: 'string', pattern: '^[^=]+=' } }, description: 'key=value, repeated: only sandboxes with all of them' }],
        responses: { '200': json({ type: 'array', items: ref('SandboxSummary') }) },
      }),
      post: op('createSandbox', 'Create and boot a sandbox (detached: in a host process of its own)', { requestBody: body(ref('CreateRequest')), responses: { '201': json(ref('SandboxInfo'), 'Created: it runs') } }),
    },
    '/v1/sandboxes/{name}': {
      parameters: [nameParam],
      get: op('getSandbox', 'One sandbox\'s info', { responses: { '200': json(ref('SandboxInfo')) } }),
      delete: op('removeSandbox', 'Remove a stopped sandbox (record, disk, socket)', { responses: { '204': { description: 'Removed' } } }),
    },
    '/v1/sandboxes/{name}/exec': { parameters: [nameParam], post: op('exec', 'Run a command and wait for it', { requestBody: body(ref('ExecRequest')), responses: { '200': json(ref('ExecResult')) } }) },
    '/v1/sandboxes/{name}/run': { parameters: [nameParam], post: op('run', 'Run the image\'s own command (entrypoint + cmd, or + args)', { requestBody: body(ref('RunRequest'), false), responses: { '200': json(ref('ExecResult')) } }) },
    '/v1/sandboxes/{name}/start': { parameters: [nameParam], post: op('start', 'Boot a stopped sandbox again', { requestBody: body(ref('StartRequest'), false), responses: { '200': json(ref('SandboxInfo')) } }) },
    '/v1/sandboxes/{name}/stop': { parameters: [nameParam], post: op('stop', 'Graceful stop, escalating to kill after timeoutMs', { requestBody: body(ref('StopRequest'), false), responses: { '200': json(ref('SandboxInfo')) } }) },
    '/v1/sandboxes/{name}/kill': { parameters: [nameParam], post: op('kill', 'SIGKILL to the VM', { responses: { '200': json(ref('SandboxInfo')) } }) },
    '/v1/sandboxes/{name}/pause': { parameters: [nameParam], post: op('pause', 'Freeze the VM\'s vCPUs', { responses: { '200': json(ref('SandboxInfo')) } }) },
    '/v1/sandboxes/{name}/resume': { parameters: [nameParam], post: op('resume', 'Thaw the VM\'s vCPUs', { responses: { '200': json(ref('SandboxInfo')) } }) },
    '/v1/sandboxes/{name}/logs': {
      parameters: [nameParam],
      get: op('logs', 'The recorded output of the sandbox\'s execs, oldest first', {
        parameters: [
          { name: 'since', in: 'query', required: false, schema: { type: 'string', pattern: '^[0-9]+(\\.[0-9]+)?$' }, description: 'ms since the epoch' },
          { name: 'tail', in: 'query', required: false, schema: { type: 'string', pattern: '^[0-9]+$' }, description: 'the last N entries' },
        ],
        responses: { '200': json({ type: 'array', items: ref('LogEntry') }) },
      }),
    },
    '/v1/sandboxes/{name}/metrics': { parameters: [nameParam], get: op('metrics', 'One sample of the VM\'s resource use, taken on the host', { responses: { '200': json(ref('Metrics')) } }) },
    '/v1/sandboxes/{name}/files': {
      parameters: [nameParam],
      get: op('readFile', 'A file\'s bytes (streamed)', { parameters: [pathQuery], responses: { '200': { description: 'The bytes', content: { 'application/octet-stream': { schema: { type: 'string', contentMediaType: 'application/octet-stream' } } } } } }),
      put: op('writeFile', 'Write a file from the request body (streamed)', {
        parameters: [pathQuery, { name: 'mode', in: 'query', required: false, schema: { type: 'string', pattern: '^0?[0-7]{1,4}$' } }, flagQuery('parents', 'create missing parent directories'), flagQuery('append', 'append instead of replacing')],
        requestBody: { required: true, content: { 'application/octet-stream': { schema: { type: 'string', contentMediaType: 'application/octet-stream' } } } },
        responses: { '201': json(ref('FsStat')) },
      }),
      delete: op('removeFile', 'Remove a file or directory', { parameters: [pathQuery, flagQuery('recursive', 'remove a directory with what it holds')], responses: { '204': { description: 'Removed' } } }),
    },
    '/v1/sandboxes/{name}/files/list': { parameters: [nameParam], get: op('listFiles', 'A directory\'s entries', { parameters: [pathQuery], responses: { '200': json({ type: 'array', items: ref('FsEntry') }) } }) },
    '/v1/sandboxes/{name}/files/stat': { parameters: [nameParam], get: op('statFile', 'A path\'s type, mode, size and times (symlinks not followed)', { parameters: [pathQuery], responses: { '200': json(ref('FsStat')) } }) },
    '/v1/sandboxes/{name}/files/mkdir': { parameters: [nameParam], post: op('mkdir', 'Create a directory', { requestBody: body(ref('MkdirRequest')), responses: { '201': json(ref('FsStat')) } }) },
    '/v1/events': {
      get: op('events', 'The event stream, as a WebSocket (send `Upgrade: websocket`): one JSON SandboxEvent per message; resume with since = the last seq seen', {
        parameters: [
          { name: 'name', in: 'query', required: false, schema: { type: 'string' }, description: 'only this sandbox' },
          { name: 'since', in: 'query', required: false, schema: { type: 'string', pattern: '^[0-9]+$' }, description: 'replay the buffer after this seq first' },
        ],
        responses: { '101': { description: 'Switching to WebSocket; each message is a SandboxEvent', content: { 'application/json': { schema: ref('SandboxEvent') } } } },
        'x-websocket': { message: ref('SandboxEvent'), closeCodes: { '1000': 'end of stream (the sandbox stopped)', '1011': 'an error (its code in the reason)', '1013': 'the client fell too far behind: resume with since' } },
      }),
    },
  },
} as const;

type Method = 'get' | 'post' | 'put' | 'delete';
interface Operation {
  readonly method: Method;
  readonly template: string;
  readonly regex: RegExp;
  readonly query: readonly { name: string; required: boolean; validate: ValidateFunction; array: boolean }[];
  /** Checks a JSON body; absent for operations without one (or with a raw byte body). */
  readonly body?: { required: boolean; validate: ValidateFunction };
}

let compiled: Operation[] | undefined;

/** Every operation of the document, with its compiled validators (built once, on first use). */
function operations(): Operation[] {
  if (compiled) return compiled;
  const ajv = new Ajv2020({ allErrors: false, strict: false });
  ajv.addSchema({ $id: 'corral', components: { schemas } });
  const resolve = (s: Schema) => JSON.parse(JSON.stringify(s).replaceAll('"#/components/', '"corral#/components/')) as Schema;
  const out: Operation[] = [];
  for (const [template, item] of Object.entries(openApiDocument.paths) as [string, Record<string, unknown>][]) {
    const regex = new RegExp(`^${template.replace(/\{[^}]+\}/g, '([^/]+)')}$`);
    for (const method of ['get', 'post', 'put', 'delete'] as const) {
      const o = item[method] as { parameters?: { name: string; in: string; required: boolean; schema: Schema }[]; requestBody?: { required: boolean; content: Record<string, { schema: Schema }> } } | undefined;
      if (!o) continue;
      const query = (o.parameters ?? []).filter((p) => p.in === 'query').map((p) => ({ name: p.name, required: p.required, validate: ajv.compile(resolve(p.schema)), array: p.schema.type === 'array' }));
      const jsonBody = o.requestBody?.content['application/json'];
      out.push({ method, template, regex, query, ...(jsonBody ? { body: { required: o.requestBody!.required, validate: ajv.compile(resolve(jsonBody.schema)) } } : {}) });
    }
  }
  compiled = out;
  return out;
}

/** The operation a request reaches, or E_ROUTE_NOT_FOUND. */
export function matchOperation(method: string, pathname: string): Operation {
  const m = method.toLowerCase();
  const found = operations().find((o) => o.method === m && o.regex.test(pathname));
  if (!found) throw new CorralError('E_ROUTE_NOT_FOUND', `no route ${method} ${pathname} (GET /v1/openapi.json lists them)`);
  return found;
}

/** Checks a request's query string against its operation; throws E_INVALID_OPTION naming the parameter. */
export function validateQuery(o: Operation, params: URLSearchParams): void {
  for (const q of o.query) {
    const values = params.getAll(q.name);
    if (values.length === 0) {
      if (q.required) throw invalid(q.name, 'is required');
      continue;
    }
    const value = q.array ? values : values[0];
    if (!q.validate(value)) throw invalid(q.name, describe(q.validate.errors), value);
  }
}

/** Checks a JSON body against its operation; throws E_INVALID_OPTION naming the field. */
export function validateBody(o: Operation, body: unknown, present: boolean): void {
  if (!o.body) return;
  if (!present) {
    if (o.body.required) throw invalid('body', 'is required (a JSON object)');
    return;
  }
  if (!o.body.validate(body)) {
    const e = o.body.validate.errors?.[0];
    const field = e ? `${e.instancePath.replace(/^\//, '').replaceAll('/', '.')}${e.keyword === 'additionalProperties' ? `${e.instancePath ? '.' : ''}${String((e.params as { additionalProperty?: string }).additionalProperty)}` : e.keyword === 'required' ? `${e.instancePath ? '.' : ''}${String((e.params as { missingProperty?: string }).missingProperty)}` : ''}` : 'body';
    throw invalid(field || 'body', describe(o.body.validate.errors));
  }
}

function describe(errs: ErrorObject[] | null | undefined): string {
  const e = errs?.[0];
  if (!e) return 'does not match the API contract';
  if (e.keyword === 'additionalProperties') return 'is not a field of this request (GET /v1/openapi.json lists them)';
  if (e.keyword === 'enum') return `must be one of ${(e.params as { allowedValues: unknown[] }).allowedValues.map((v) => JSON.stringify(v)).join(', ')}`;
  return e.message ?? 'does not match the API contract';
}

function invalid(option: string, what: string, value?: unknown): CorralError {
  return new CorralError('E_INVALID_OPTION', `invalid option ${option}: ${what}${value !== undefined ? ` (got ${JSON.stringify(value)})` : ''}`, { details: { option } });
}
