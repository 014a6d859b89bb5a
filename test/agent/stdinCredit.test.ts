// Stdin flow control (protocol 4) end to end between AgentClient and the real C agent, run on
// the host in the agent's --port testing mode (no VM: the window and its acknowledgements are
// the subject; test/sdk/stdinStream.test.ts pipes through a real VM).
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Duplex } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { AgentClient, type ExecSession } from '../../src/agent/AgentClient.ts';
import { ExecFlags, FrameDecoder, FrameType, GUEST_TYPES, PayloadWriter, STDIN_WINDOW, encodeFrame } from '../../src/agent/frame.ts';
import { startHostAgent, type HostAgent } from '../helpers/hostAgent.ts';

function start(client: AgentClient, argv: string[]) {
  const out: Buffer[] = [];
  let session!: ExecSession;
  const exited = new Promise<{ code: number | null; stdout: string }>((resolve, reject) => {
    session = client.exec(
      { argv, env: ['PATH=/usr/bin:/bin'], cwd: '/', stdin: true },
      { started() {}, stdout: (d) => out.push(Buffer.from(d)), stderr() {}, exited: (code) => resolve({ code, stdout: Buffer.concat(out).toString() }), failed: reject },
    );
  });
  return { session, exited };
}

describe('stdin flow control against the real agent (host mode)', () => {
  let agent: HostAgent;
  let dir: string;
  beforeAll(async () => {
    agent = await startHostAgent();
    dir = mkdtempSync(join(tmpdir(), 'corral-credit-'));
  });
  afterAll(async () => {
    await agent?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('pipes 64 MiB through sha256sum without ENOBUFS, never more than the window in flight', async () => {
    const data = randomBytes(64 * 1024 * 1024);
    const { session, exited } = start(agent.client, ['sha256sum']);
    // One write far past the agent's old 4 MiB stdin limit, then EOF behind it.
    await session.write(data);
    session.end();
    const r = await exited;
    expect(r.code).toBe(0);
    expect(r.stdout.split(' ')[0]).toBe(createHash('sha256').update(data).digest('hex'));
    expect(session.stdinInFlightPeak).toBeGreaterThan(0);
    expect(session.stdinInFlightPeak).toBeLessThanOrEqual(STDIN_WINDOW);
  });

  it('holds a write back while the child does not read, and lets it go when it does', async () => {
    const gate = join(dir, 'gate');
    // The child reads nothing until the test creates the gate file.
    const { session, exited } = start(agent.client, ['sh', '-c', 'while [ ! -e "$1" ]; do sleep 0.05; done; exec wc -c', 'sh', gate]);
    let settled = false;
    const written = session.write(randomBytes(8 * 1024 * 1024)).then(() => (settled = true));
    // The pipe and the agent's buffer fill; then the whole window is unacknowledged.
    await vi.waitFor(() => expect(session.stdinInFlight).toBe(STDIN_WINDOW), { timeout: 20_000, interval: 20 });
    expect(settled).toBe(false);
    expect(session.stdinInFlightPeak).toBe(STDIN_WINDOW);
    writeFileSync(gate, '');
    await written;
    session.end();
    const r = await exited;
    expect(r).toEqual({ code: 0, stdout: `${8 * 1024 * 1024}\n` });
    expect(session.stdinInFlightPeak).toBe(STDIN_WINDOW);
  });

  it('gives the window back when the child closes its stdin early', async () => {
    const { session, exited } = start(agent.client, ['sh', '-c', 'head -c 10 >/dev/null; exec sleep 0.5']);
    // Far more than the window: only acknowledgements of dropped bytes let this resolve.
    await session.write(randomBytes(4 * STDIN_WINDOW));
    session.end();
    expect((await exited).code).toBe(0);
  });
});

// An older agent cannot be started here (the cache holds the current one), so its side is
// played by hand: the host must not ask it for flow control.
describe('stdin to a protocol-3 agent', () => {
  it('sends no CREDIT flag and does not wait for acknowledgements', async () => {
    const sent: Buffer[] = [];
    const sock = new Duplex({ read() {}, write: (c, _e, cb) => void (sent.push(c), cb()) });
    const client = new AgentClient(sock as never);
    sock.push(encodeFrame(FrameType.HELLO, 0, new PayloadWriter().u32(3).str('old').u32(1).u32(1).finish()));
    await client.ready;
    const s = client.exec({ argv: ['cat'], env: [], cwd: '/', stdin: true }, { started() {}, stdout() {}, stderr() {}, exited() {}, failed() {} });
    await s.write(Buffer.alloc(3 * STDIN_WINDOW));
    await new Promise((r) => setImmediate(r));
    const frames = new FrameDecoder({ accept: new Set([...GUEST_TYPES, FrameType.EXEC, FrameType.STDIN]) }).push(Buffer.concat(sent));
    expect(frames[0]!.type).toBe(FrameType.EXEC);
    expect(Buffer.from(frames[0]!.payload).readUInt32LE(0) & ExecFlags.CREDIT).toBe(0);
    expect(frames.filter((f) => f.type === FrameType.STDIN).reduce((n, f) => n + f.payload.length, 0)).toBe(3 * STDIN_WINDOW);
    expect(s.stdinInFlight).toBe(0);
    client.close();
  });
});
