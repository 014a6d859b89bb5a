/**
 * Runs the real guest agent on the host, in its `--port` testing mode, connected to an
 * AgentClient over a unix socket: the protocol end to end, without a VM.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AgentClient } from '../../src/agent/AgentClient.ts';
import { loadArtifacts } from '../../src/runtime/artifacts.ts';

export interface HostAgent {
  readonly client: AgentClient;
  readonly child: ChildProcess;
  close(): Promise<void>;
}

export async function startHostAgent(): Promise<HostAgent> {
  const dir = mkdtempSync(join(tmpdir(), 'corral-hostagent-'));
  const path = join(dir, 'agent.sock');
  const server = createServer();
  const conn = new Promise<Socket>((resolve) => server.once('connection', resolve));
  await new Promise<void>((r) => server.listen(path, r));
  const child = spawn(loadArtifacts().agent, ['--port', path], { stdio: ['ignore', 'inherit', 'inherit'] });
  const sock = await conn;
  server.close();
  const client = new AgentClient(sock);
  await client.ready;
  return {
    client,
    child,
    async close() {
      client.close();
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGKILL');
        await new Promise((r) => child.once('exit', r));
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Runs one exec to the end and collects everything. */
export function run(client: AgentClient, argv: string[], opts: { stdin?: Buffer; cwd?: string; env?: string[] } = {}) {
  return new Promise<{ pid: number; stdout: Buffer; stderr: Buffer; code: number | null; signal: number | null; id: number }>((resolve, reject) => {
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let pid = -1;
    const s = client.exec(
      { argv, env: opts.env ?? ['PATH=/usr/bin:/bin'], cwd: opts.cwd ?? '/', stdin: opts.stdin !== undefined },
      {
        started: (p) => (pid = p),
        stdout: (d) => out.push(Buffer.from(d)),
        stderr: (d) => err.push(Buffer.from(d)),
        exited: (code, signal) => resolve({ pid, stdout: Buffer.concat(out), stderr: Buffer.concat(err), code, signal, id: s.id }),
        failed: reject,
      },
    );
    if (opts.stdin !== undefined) {
      s.write(opts.stdin);
      s.end();
    }
  });
}
