// Output flow control, output coalescing and the probes (agent protocol 5) end to end between
// AgentClient and the real C agent, run on the host in the agent's --port testing mode (no VM:
// the window, the frames and the probes' replies are the subject; test/sdk/outputCredit.test.ts
// holds a command in a real VM).
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { AgentClient, ExecSession } from '../../src/agent/AgentClient.ts';
import { ExecFlags, FrameDecoder, FrameType, GUEST_TYPES, OUTPUT_WINDOW, PayloadReader, PayloadWriter, ProbeOp, encodeFrame, type Frame, type FrameTypeCode } from '../../src/agent/frame.ts';
import { loadArtifacts } from '../../src/runtime/artifacts.ts';
import { startHostAgent, type HostAgent } from '../helpers/hostAgent.ts';

/** `seq 1 n` as the child prints it. */
const seq = (n: number) => Array.from({ length: n }, (_, i) => `${i + 1}\n`).join('');

function start(client: AgentClient, argv: string[], onStdout: (d: Uint8Array, s: ExecSession) => void = () => {}) {
  const out: Buffer[] = [];
  let session!: ExecSession;
  const exited = new Promise<{ code: number | null; stdout: Buffer }>((resolve, reject) => {
    session = client.exec(
      { argv, env: ['PATH=/usr/bin:/bin'], cwd: '/', outputCredit: true },
      {
        started() {},
        stdout: (d) => {
          out.push(Buffer.from(d));
          onStdout(d, session);
        },
        stderr() {},
        exited: (code) => resolve({ code, stdout: Buffer.concat(out) }),
        failed: reject,
      },
    );
  });
  return { session, exited };
}

describe('output flow control against the real agent (host mode)', () => {
  let agent: HostAgent;
  beforeAll(async () => {
    agent = await startHostAgent();
  });
  afterAll(async () => {
    await agent?.close();
  });

  it('holds a command at the window until its output is acknowledged, then delivers every byte in order', async () => {
    const expected = seq(1_000_000); // 6.9 MB, far past the 2 MiB window
    let acking = false;
    const { session, exited } = start(agent.client, ['seq', '1', '1000000'], (d, s) => acking && s.ackOutput(d.byteLength));
    let ended = false;
    void exited.then(() => (ended = true));
    await vi.waitFor(() => expect(session.outputUnacked).toBe(OUTPUT_WINDOW), { timeout: 20_000, interval: 10 });
    // Each PING round trip is a turn of the agent's loop: had it a byte more to send, it would
    // have been read from the pipe and sent by now.
    for (let i = 0; i < 5; i++) await agent.client.ping(new Uint8Array(8));
    expect(session.outputUnacked).toBe(OUTPUT_WINDOW);
    expect(ended).toBe(false);
    acking = true;
    session.ackOutput(session.outputUnacked);
    const r = await exited;
    expect(r.code).toBe(0);
    expect(r.stdout.length).toBe(expected.length);
    expect(r.stdout.toString()).toBe(expected);
  });

  it('acknowledges no more than was delivered', async () => {
    const { session, exited } = start(agent.client, ['sh', '-c', 'echo one; exec sleep 0.2'], (_d, s) => s.ackOutput(1_000_000));
    expect((await exited).stdout.toString()).toBe('one\n');
    expect(session.outputUnacked).toBe(0);
  });

  it('times spawns of a command as the agent sees them', async () => {
    const ok = await agent.client.probeSpawn(['true'], ['PATH=/usr/bin:/bin'], 20);
    expect(ok.ns).toHaveLength(20);
    expect(ok.ns.every((ns) => ns > 0)).toBe(true);
    expect(ok.status).toBe(0);
    const missing = await agent.client.probeSpawn(['corral-no-such-command'], ['PATH=/usr/bin:/bin'], 1);
    expect(missing.status >> 8).toBe(127);
    await expect(agent.client.probeSpawn(['true'], [], 1001)).rejects.toMatchObject({ code: 'E_AGENT', message: expect.stringContaining('malformed SPAWN probe') });
  });

  it('sinks bytes of its own through the port, all counted', async () => {
    const r = await agent.client.probeSink(16 * 1024 * 1024 + 5);
    expect(r.bytes).toBe(16 * 1024 * 1024 + 5);
    expect(r.guestNs).toBeGreaterThan(0);
    expect(r.hostMs).toBeGreaterThan(0);
    // The connection is fine afterwards.
    expect(await agent.client.ping(new Uint8Array(4))).toBeGreaterThan(0);
  });
});

/** The agent in --port mode on a raw socket: frames as the host sends and reads them. */
async function rawAgent() {
  const dir = mkdtempSync(join(tmpdir(), 'corral-rawagent-'));
  const path = join(dir, 'agent.sock');
  const server = createServer();
  const conn = new Promise<Socket>((resolve) => server.once('connection', resolve));
  await new Promise<void>((r) => server.listen(path, r));
  const child: ChildProcess = spawn(loadArtifacts().agent, ['--port', path], { stdio: ['ignore', 'inherit', 'inherit'] });
  const sock = await conn;
  server.close();
  const decoder = new FrameDecoder({ accept: GUEST_TYPES });
  const frames: Frame[] = [];
  const copy = (f: Frame): Frame => ({ type: f.type, session: f.session, payload: Uint8Array.prototype.slice.call(f.payload) });
  sock.on('data', (c) => frames.push(...decoder.push(c).map(copy)));
  const until = (pred: (f: Frame) => boolean) => vi.waitFor(() => expect(frames.some(pred)).toBe(true), { timeout: 20_000, interval: 10 });
  await until((f) => f.type === FrameType.HELLO);
  return {
    dir,
    sock,
    frames,
    until,
    send: (type: FrameTypeCode, session: number, payload: Uint8Array) => sock.write(encodeFrame(type, session, payload)),
    exec: (id: number, argv: string[], flags = 0) =>
      sock.write(encodeFrame(FrameType.EXEC, id, new PayloadWriter().u32(flags).strList(argv).strList(['PATH=/usr/bin:/bin']).str('/').u32(0).u32(0).finish())),
    async close() {
      sock.destroy();
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGKILL');
        await new Promise((r) => child.once('exit', r));
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

describe('the agent on a raw socket (host mode)', () => {
  let raw: Awaited<ReturnType<typeof rawAgent>>;
  beforeAll(async () => {
    raw = await rawAgent();
  });
  afterAll(async () => {
    await raw?.close();
  });

  it('appends small writes to the unsent frame of the same stream while the host is behind', async () => {
    // 512 KiB of zeros fill the socket (the host reads nothing meanwhile) and stay queued in
    // the agent; the 400 lines after them, one write each, join the last unsent frame.
    const doneFile = join(raw.dir, 'done');
    raw.sock.pause();
    raw.exec(1, ['sh', '-c', `head -c 524288 /dev/zero; i=0; while [ $i -lt 400 ]; do i=$((i+1)); echo line$i; done; : > ${doneFile}`]);
    await vi.waitFor(() => expect(existsSync(doneFile)).toBe(true), { timeout: 20_000, interval: 10 });
    raw.sock.resume();
    await raw.until((f) => f.type === FrameType.EXIT && f.session === 1);
    const out = raw.frames.filter((f) => f.type === FrameType.STDOUT && f.session === 1);
    const bytes = Buffer.concat(out.map((f) => f.payload));
    const lines = Array.from({ length: 400 }, (_, i) => `line${i + 1}\n`).join('');
    expect(bytes.length).toBe(524288 + lines.length);
    expect(bytes.subarray(0, 524288).every((b) => b === 0)).toBe(true);
    expect(bytes.subarray(524288).toString()).toBe(lines);
    expect(out.every((f) => f.payload.length <= 64 * 1024)).toBe(true);
    // The frames that carry any of the lines: a few, not one per line.
    let at = 0;
    const withLines = out.filter((f) => (at += f.payload.length) > 524288).length;
    expect(withLines).toBeGreaterThan(0);
    expect(withLines).toBeLessThan(20);
  });

  it('lets a child that writes in small pieces fill its pipe before the next read', async () => {
    // The host reads at once here: only the agent's linger after a short read joins the lines.
    raw.frames.length = 0;
    raw.exec(4, ['sh', '-c', 'i=0; while [ $i -lt 400 ]; do i=$((i+1)); echo line$i; done']);
    await raw.until((f) => f.type === FrameType.EXIT && f.session === 4);
    const out = raw.frames.filter((f) => f.type === FrameType.STDOUT && f.session === 4);
    expect(Buffer.concat(out.map((f) => f.payload)).toString()).toBe(Array.from({ length: 400 }, (_, i) => `line${i + 1}\n`).join(''));
    expect(out.length).toBeLessThan(100);
  });

  it('complains about a malformed acknowledgement, ignores one for a finished session', async () => {
    raw.frames.length = 0;
    raw.send(FrameType.OUTPUT_ACK, 77, new Uint8Array(0));
    await raw.until((f) => f.type === FrameType.ERROR && f.session === 0);
    const err = new PayloadReader(raw.frames.find((f) => f.type === FrameType.ERROR)!.payload, 'ERROR');
    expect(err.i32()).toBe(22); // EINVAL
    expect(err.str(4096)).toContain('malformed OUTPUT_ACK');

    // An exec without OUT_CREDIT has no window to give back to.
    raw.frames.length = 0;
    raw.exec(2, ['sleep', '5']);
    await raw.until((f) => f.type === FrameType.STARTED && f.session === 2);
    raw.send(FrameType.OUTPUT_ACK, 2, new PayloadWriter().u32(10).finish());
    await raw.until((f) => f.type === FrameType.ERROR && f.session === 0);
    expect(new PayloadReader(raw.frames.find((f) => f.type === FrameType.ERROR)!.payload, 'ERROR').i32()).toBe(22);
    raw.send(FrameType.SIGNAL, 2, new PayloadWriter().i32(9).finish());
    await raw.until((f) => f.type === FrameType.EXIT && f.session === 2);

    // One that crossed the session's EXIT is no complaint: the PONG comes with nothing before it.
    raw.frames.length = 0;
    raw.send(FrameType.OUTPUT_ACK, 2, new PayloadWriter().u32(10).finish());
    raw.send(FrameType.PING, 0, new Uint8Array([1]));
    await raw.until((f) => f.type === FrameType.PONG);
    expect(raw.frames.map((f) => f.type)).toEqual([FrameType.PONG]);
  });

  it('sets OUT_CREDIT only on request and answers a probe on a live session EBUSY', async () => {
    raw.frames.length = 0;
    raw.exec(3, ['sleep', '5'], ExecFlags.OUT_CREDIT);
    await raw.until((f) => f.type === FrameType.STARTED && f.session === 3);
    raw.send(FrameType.PROBE, 3, new PayloadWriter().u32(ProbeOp.SINK).u32(10).u32(0).finish());
    await raw.until((f) => f.type === FrameType.PROBE_REPLY && f.session === 3);
    expect(new PayloadReader(raw.frames.find((f) => f.type === FrameType.PROBE_REPLY)!.payload, 'PROBE_REPLY').i32()).toBe(16); // EBUSY
    raw.send(FrameType.SIGNAL, 3, new PayloadWriter().i32(9).finish());
    await raw.until((f) => f.type === FrameType.EXIT && f.session === 3);
  });
});
