/**
 * corral's Model Context Protocol tools and resources: what an AI agent reaches a sandbox
 * with. Each tool is one SDK call (src/sdk); its input is a JSON schema (zod, turned into
 * JSON Schema by the MCP SDK), its result one JSON text block, and a failure a tool error
 * whose text starts with the corral error code (`E_ILLEGAL_STATE: cannot exec …`), so an
 * agent can tell a missing sandbox from a command that failed. Destructive calls (remove a
 * sandbox or a snapshot) need `confirm: true`.
 *
 * Names follow microsandbox's MCP server (`sandbox_create`, `sandbox_exec`, `sandbox_fs_read`,
 * `snapshot_list`…) so that agents written for one read alike on the other.
 */

import { McpServer, ResourceTemplate } from '@modelcontextprotocol/sdk/server/mcp.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { z } from 'zod';
import { normalizeConfig } from '../config.ts';
import { CorralError, serializeError } from '../errors.ts';
import type { ExecResult } from '../sdk/exec.ts';
import { Sandbox } from '../sdk/Sandbox.ts';
import { Snapshot } from '../sdk/Snapshot.ts';
import type { Supervisor } from '../supervisor/Supervisor.ts';

/** Options of {@link createMcpServer}. */
export interface McpServerOptions {
  /** The supervisor whose sandboxes the tools reach (the process's default one if absent). */
  readonly supervisor: Supervisor;
  /** Create sandboxes detached (they outlive the MCP server process). Default false: they end with it. */
  readonly detached?: boolean;
  /** Bytes of stdout and of stderr an exec result carries at most; the rest is cut (`truncated: true`). Default 1 MiB. */
  readonly maxOutputBytes?: number;
}

const VERSION = '0.1.0';
const DEFAULT_MAX_OUTPUT = 1024 * 1024;

const name = z.string().describe('The sandbox name (letters, digits, ".", "_", "-").');
const timeoutMs = z.number().int().positive().optional().describe('Kill the command after this many ms (the result then says timedOut).');
const env = z.record(z.string(), z.string()).optional().describe('Extra environment variables.');

/** The shape a tool's input is parsed into, by the MCP SDK, before the handler sees it. */
const shapes = {
  create: {
    name,
    image: z.string().optional().describe('OCI image reference, or "corral/base" (default: busybox).'),
    memoryMib: z.number().int().optional().describe('Guest memory in MiB (default 256).'),
    cpus: z.number().int().optional().describe('vCPUs (default 1).'),
    env,
    labels: z.record(z.string(), z.string()).optional(),
    workdir: z.string().optional().describe('Working directory of commands (absolute).'),
    volumes: z
      .array(
        z.discriminatedUnion('kind', [
          z.object({ kind: z.literal('bind'), guestPath: z.string(), hostPath: z.string(), readonly: z.boolean().default(false) }),
          z.object({ kind: z.literal('named'), guestPath: z.string(), name: z.string(), readonly: z.boolean().default(false) }),
          z.object({ kind: z.literal('tmpfs'), guestPath: z.string(), sizeMib: z.number().int().default(64) }),
        ]),
      )
      .optional()
      .describe('Host directories (bind), named volumes or tmpfs mounts.'),
    network: z
      .object({
        preset: z.enum(['none', 'allow-all', 'public-only', 'deny-all']),
        rules: z
          .array(
            z.object({
              action: z.enum(['allow', 'deny']),
              cidr: z.string(),
              protocol: z.enum(['tcp', 'udp', 'any']).default('any'),
              ports: z.tuple([z.number().int(), z.number().int()]).optional(),
            }),
          )
          .default([]),
        dns: z.boolean().default(true),
      })
      .optional()
      .describe('Network policy, enforced on the host. Absent: no network at all.'),
    idleTimeoutSeconds: z.number().positive().optional().describe('Idle limit (no command running) in seconds.'),
    idleAction: z.enum(['stop', 'pause']).optional().describe('What the idle limit does: stop (default) or pause (the next call resumes it).'),
    maxDurationSeconds: z.number().positive().optional().describe('Lifetime limit in seconds.'),
    replace: z.boolean().optional().describe('End and remove a sandbox of the same name first.'),
  },
  exec: {
    name,
    command: z.string().min(1).describe('The program (looked up on PATH).'),
    args: z.array(z.string()).default([]),
    cwd: z.string().optional(),
    env,
    stdin: z.string().optional().describe('Text written to the command\'s stdin, which is then closed.'),
    timeoutMs,
  },
  shell: { name, script: z.string().min(1).describe('A shell script, run with the sandbox\'s shell (-c).'), timeoutMs },
  runCode: {
    name,
    language: z.enum(['sh', 'python', 'node']).describe('sh always works; python and node need an image that has python3 / node.'),
    code: z.string().min(1),
    timeoutMs,
  },
  path: { name, path: z.string().min(1).describe('An absolute path in the guest.') },
  write: {
    name,
    path: z.string().min(1).describe('An absolute path in the guest.'),
    content: z.string(),
    encoding: z.enum(['utf8', 'base64']).default('utf8'),
    parents: z.boolean().default(false).describe('Create missing parent directories.'),
  },
  list: { labels: z.record(z.string(), z.string()).optional() },
  name: { name },
  stop: { name, timeoutMs: z.number().int().nonnegative().optional().describe('Graceful stop; killed after this many ms.') },
  remove: { name, confirm: z.literal(true).describe('Must be true: removing deletes the sandbox\'s disk.') },
  snapshot: { name, snapshot: z.string().describe('The snapshot\'s name.') },
  fork: { name, forks: z.array(z.string()).min(1).max(16).describe('Names of the new sandboxes, each a copy of this one as it runs now.') },
  removeSnapshot: { snapshot: z.string(), confirm: z.literal(true).describe('Must be true: the snapshot is deleted.') },
} as const;

/**
 * An MCP server whose tools drive corral sandboxes. Connect it to a transport (stdio or
 * streamable HTTP, see src/mcp/serve.ts).
 *
 * @example
 * const server = createMcpServer({ supervisor: new Supervisor() });
 * await server.connect(new StdioServerTransport());
 */
export function createMcpServer(options: McpServerOptions): McpServer {
  const sup = options.supervisor;
  const maxOut = options.maxOutputBytes ?? DEFAULT_MAX_OUTPUT;
  const server = new McpServer(
    { name: 'corral', version: VERSION },
    { instructions: 'corral runs untrusted code in microVM sandboxes. Create a sandbox (sandbox_create), run commands or code in it (sandbox_exec, sandbox_shell, sandbox_run_code), read and write its files (sandbox_fs_*), and stop and remove it when done. Errors start with a stable code such as E_SANDBOX_NOT_FOUND.' },
  );
  const get = (n: string) => Sandbox.get(n, { supervisor: sup });
  /** A handle for one call: dropped after (the sandbox runs on; attached ones live in this process). */
  const withSandbox = async <T>(n: string, fn: (sb: Sandbox) => Promise<T>): Promise<T> => {
    const sb = await get(n);
    try {
      return await fn(sb);
    } finally {
      await sb.detach();
    }
  };
  const cut = (text: string) => {
    const bytes = Buffer.byteLength(text);
    return bytes <= maxOut ? { text, truncated: false } : { text: Buffer.from(text).subarray(0, maxOut).toString('utf8'), truncated: true };
  };
  const execResult = (r: ExecResult) => {
    const out = cut(r.stdout);
    const err = cut(r.stderr);
    return { code: r.code, signal: r.signal, reason: r.reason, timedOut: r.timedOut, stdout: out.text, stderr: err.text, ...(out.truncated || err.truncated ? { truncated: true } : {}) };
  };

  const tool = <S extends Record<string, z.ZodType>>(
    toolName: string,
    description: string,
    inputSchema: S,
    annotations: { readOnlyHint?: boolean; destructiveHint?: boolean; idempotentHint?: boolean },
    run: (args: z.infer<z.ZodObject<S>>) => Promise<unknown>,
  ) => {
    server.registerTool(toolName, { description, inputSchema, annotations: { openWorldHint: false, ...annotations } }, (async (args: z.infer<z.ZodObject<S>>): Promise<CallToolResult> => {
      try {
        const value = await run(args);
        return { content: [{ type: 'text', text: JSON.stringify(value ?? { ok: true }) }] };
      } catch (err) {
        return toolError(err);
      }
    }) as never);
  };

  tool('sandbox_create', 'Create and boot a sandbox (a microVM). Returns its info.', shapes.create, { destructiveHint: false }, async (a) => {
    const config = normalizeConfig({
      name: a.name,
      ...(a.image !== undefined ? { image: a.image } : {}),
      ...(a.memoryMib !== undefined ? { memoryMib: a.memoryMib } : {}),
      ...(a.cpus !== undefined ? { cpus: a.cpus } : {}),
      ...(a.env ? { env: a.env } : {}),
      ...(a.labels ? { labels: a.labels } : {}),
      ...(a.workdir !== undefined ? { workdir: a.workdir } : {}),
      ...(a.volumes ? { volumes: a.volumes } : {}),
      ...(a.network ? { network: a.network } : {}),
      ...(a.idleTimeoutSeconds !== undefined ? { idleTimeoutMs: Math.round(a.idleTimeoutSeconds * 1000) } : {}),
      ...(a.idleAction !== undefined ? { idleAction: a.idleAction } : {}),
      ...(a.maxDurationSeconds !== undefined ? { maxDurationMs: Math.round(a.maxDurationSeconds * 1000) } : {}),
    });
    const opts = { supervisor: sup, ...(a.replace ? { replace: true } : {}) };
    const sb = options.detached ? await Sandbox.createDetached(config, opts) : await Sandbox.create(config, opts);
    try {
      return await sb.info();
    } finally {
      await sb.detach();
    }
  });
  tool('sandbox_exec', 'Run a program in a sandbox and wait for it; returns its exit code, stdout and stderr.', shapes.exec, {}, (a) =>
    withSandbox(a.name, async (sb) =>
      execResult(await sb.exec(a.command, a.args, { ...(a.cwd ? { cwd: a.cwd } : {}), ...(a.env ? { env: a.env } : {}), ...(a.stdin !== undefined ? { stdin: a.stdin } : {}), ...(a.timeoutMs ? { timeoutMs: a.timeoutMs } : {}) })),
    ),
  );
  tool('sandbox_shell', 'Run a shell script in a sandbox (its shell, -c) and wait for it.', shapes.shell, {}, (a) =>
    withSandbox(a.name, async (sb) => execResult(await sb.shell(a.script, a.timeoutMs ? { timeoutMs: a.timeoutMs } : {}))),
  );
  tool('sandbox_run_code', 'Run a snippet of code (sh, python or node) in a sandbox and wait for it.', shapes.runCode, {}, (a) =>
    withSandbox(a.name, async (sb) => {
      const [program, flag] = INTERPRETERS[a.language];
      const r = await sb.exec('sh', ['-c', `command -v ${program} >/dev/null 2>&1 || { echo "corral: this sandbox's image has no ${program}" >&2; exit 127; }; exec ${program} ${flag} "$0"`, a.code], a.timeoutMs ? { timeoutMs: a.timeoutMs } : {});
      return { language: a.language, ...execResult(r) };
    }),
  );
  tool('sandbox_fs_read', 'Read a file of a sandbox: text as is, anything else as base64.', shapes.path, { readOnlyHint: true }, (a) =>
    withSandbox(a.name, async (sb) => {
      const bytes = await sb.fs().read(a.path);
      if (bytes.byteLength > maxOut) throw new CorralError('E_INVALID_OPTION', `invalid option path: ${a.path} has ${bytes.byteLength} bytes, more than this server returns (${maxOut}); read a part with sandbox_exec (head, tail)`);
      try {
        return { path: a.path, encoding: 'utf8', content: new TextDecoder('utf-8', { fatal: true }).decode(bytes) };
      } catch (err) {
        if (!(err instanceof TypeError)) throw err;
        return { path: a.path, encoding: 'base64', content: Buffer.from(bytes).toString('base64') };
      }
    }),
  );
  tool('sandbox_fs_write', 'Write a file in a sandbox (replacing it).', shapes.write, { idempotentHint: true }, (a) =>
    withSandbox(a.name, async (sb) => {
      const data = a.encoding === 'base64' ? new Uint8Array(Buffer.from(a.content, 'base64')) : a.content;
      await sb.fs().write(a.path, data, { parents: a.parents });
      return { path: a.path, bytes: typeof data === 'string' ? Buffer.byteLength(data) : data.byteLength };
    }),
  );
  tool('sandbox_fs_list', 'List a directory of a sandbox.', shapes.path, { readOnlyHint: true }, (a) => withSandbox(a.name, (sb) => sb.fs().list(a.path)));
  tool('sandbox_fs_stat', 'Stat a path of a sandbox (symlinks are not followed).', shapes.path, { readOnlyHint: true }, (a) => withSandbox(a.name, (sb) => sb.fs().stat(a.path)));
  tool('sandbox_fs_mkdir', 'Create a directory (and its parents) in a sandbox.', shapes.path, { idempotentHint: true }, (a) =>
    withSandbox(a.name, async (sb) => {
      await sb.fs().mkdir(a.path, { recursive: true });
      return { path: a.path };
    }),
  );
  tool('sandbox_list', 'List the sandboxes (running and stopped), optionally by labels.', shapes.list, { readOnlyHint: true }, (a) =>
    Sandbox.list({ supervisor: sup, ...(a.labels ? { labels: a.labels } : {}) }),
  );
  tool('sandbox_info', 'One sandbox\'s status, state, VM pid, boot figures and stop reason.', shapes.name, { readOnlyHint: true }, (a) => withSandbox(a.name, (sb) => sb.info()));
  tool('sandbox_pause', 'Freeze a sandbox\'s vCPUs (no CPU used) until sandbox_resume.', shapes.name, { idempotentHint: false }, (a) =>
    withSandbox(a.name, async (sb) => {
      await sb.pause();
      return sb.info();
    }),
  );
  tool('sandbox_resume', 'Thaw a paused sandbox; running commands carry on.', shapes.name, {}, (a) =>
    withSandbox(a.name, async (sb) => {
      await sb.resume();
      return sb.info();
    }),
  );
  tool('sandbox_stop', 'Stop a sandbox gracefully (its disk is kept: it can be started again).', shapes.stop, { destructiveHint: true, idempotentHint: true }, (a) =>
    withSandbox(a.name, (sb) => sb.stop(a.timeoutMs !== undefined ? { timeoutMs: a.timeoutMs } : {})),
  );
  tool('sandbox_start', 'Boot a stopped sandbox again from its config and disk.', shapes.name, {}, async (a) => {
    const sb = await Sandbox.start(a.name, { supervisor: sup, ...(options.detached ? { detached: true } : {}) });
    try {
      return await sb.info();
    } finally {
      await sb.detach();
    }
  });
  tool('sandbox_remove', 'Delete a sandbox: a running one is stopped first. Needs confirm: true.', shapes.remove, { destructiveHint: true, idempotentHint: false }, async (a) => {
    await withSandbox(a.name, async (sb) => {
      const info = await sb.info();
      if (info.status !== 'stopped') await sb.stop();
    });
    await Sandbox.remove(a.name, { supervisor: sup });
    return { removed: a.name };
  });
  tool('sandbox_snapshot', 'Save a running sandbox\'s memory and disk as a named snapshot; it runs on.', shapes.snapshot, {}, (a) =>
    withSandbox(a.name, (sb) => sb.snapshot(a.snapshot)),
  );
  tool('sandbox_fork', 'Start copies of a running sandbox (memory, files and processes as they are now), each under a new name.', shapes.fork, {}, (a) =>
    withSandbox(a.name, async (sb) => {
      const made: string[] = [];
      for (const f of a.forks) {
        const child = (await sb.fork(f)) as Sandbox;
        made.push(child.name);
        await child.detach();
      }
      return { forks: made };
    }),
  );
  tool('snapshot_list', 'List the snapshots.', {}, { readOnlyHint: true }, async () => Snapshot.list({ supervisor: sup }));
  tool('snapshot_remove', 'Delete a snapshot. Needs confirm: true.', shapes.removeSnapshot, { destructiveHint: true }, async (a) => {
    await Snapshot.remove(a.snapshot, { supervisor: sup });
    return { removed: a.snapshot };
  });

  const listSandboxes = (suffix: string) => async () => ({
    resources: (await Sandbox.list({ supervisor: sup })).map((s) => ({ uri: `corral://sandboxes/${s.name}/${suffix}`, name: `${s.name} ${suffix}`, mimeType: suffix === 'events' ? 'application/json' : 'text/plain' })),
  });
  server.registerResource(
    'sandbox-events',
    new ResourceTemplate('corral://sandboxes/{name}/events', { list: listSandboxes('events') }),
    { description: "A sandbox's recent events (its replay buffer: lifecycle, exec, pulls), as a JSON array.", mimeType: 'application/json' },
    async (uri, vars) => {
      const n = String(vars.name);
      if (!sup.list().some((r) => r.name === n)) throw new CorralError('E_SANDBOX_NOT_FOUND', `no sandbox named "${n}"`);
      const events = sup.replayLog.read(n, 0).events.map((e) => ('data' in e && e.data instanceof Uint8Array ? { ...e, data: Buffer.from(e.data).toString('utf8') } : e));
      return { contents: [{ uri: uri.href, mimeType: 'application/json', text: JSON.stringify(events) }] };
    },
  );
  server.registerResource(
    'sandbox-logs',
    new ResourceTemplate('corral://sandboxes/{name}/logs', { list: listSandboxes('logs') }),
    { description: "The recorded output of a sandbox's commands (stdout and stderr, oldest first).", mimeType: 'text/plain' },
    async (uri, vars) => {
      const entries = await Sandbox.logs(String(vars.name), { supervisor: sup });
      return { contents: [{ uri: uri.href, mimeType: 'text/plain', text: entries.map((e) => Buffer.from(e.data).toString('utf8')).join('') }] };
    },
  );
  return server;
}

/** The program and its "run this text" flag, per language of sandbox_run_code. */
const INTERPRETERS = { sh: ['sh', '-c'], python: ['python3', '-c'], node: ['node', '-e'] } as const;

/** A failed call as an MCP tool error: the corral code first, then the message. */
function toolError(err: unknown): CallToolResult {
  const s = serializeError(err);
  const code = s.code ?? (err instanceof TypeError || err instanceof RangeError ? 'E_INVALID_OPTION' : 'E_INTERNAL');
  return { isError: true, content: [{ type: 'text', text: `${code}: ${s.message}` }], _meta: { corral: { code } } };
}
