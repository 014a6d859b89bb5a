// The wire protocol end to end between AgentClient and the real C agent, run on the host in
// the agent's --port testing mode (no VM: these cases are about framing and multiplexing;
// the same paths run inside real VMs in test/sdk/).
import { createHash } from 'node:crypto';
import { Duplex } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentClient } from '../../src/agent/AgentClient.ts';
import { FrameType, PROTOCOL_VERSION, PayloadWriter, encodeFrame } from '../../src/agent/frame.ts';
import { CorralError } from '../../src/errors.ts';
import { run, startHostAgent, type HostAgent } from '../helpers/hostAgent.ts';

describe('agent protocol against the real agent (host mode)', () => {
  let agent: HostAgent;
  beforeAll(async () => {
    agent = await startHostAgent();
  });
  afterAll(async () => {
    await agent?.close();
  });

  it('announces the current protocol with a version', () => {
    expect(agent.client.hello?.protocolVersion).toBe(PROTOCOL_VERSION);
    expect(agent.client.hello?.agentVersion).toMatch(/\d/);
  });

  it('separates stdout and stderr and reports the exit code', async () => {
    const r = await run(agent.client, ['sh', '-c', 'echo hi; echo oops >&2; exit 3']);
    expect(r).toMatchObject({ code: 3, signal: null });
    expect(r.stdout.toString()).toBe('hi\n');
    expect(r.stderr.toString()).toBe('oops\n');
  });

  it('reports a missing program as a start error, not an exit code', async () => {
    await expect(run(agent.client, ['definitely-not-a-program'])).rejects.toMatchObject({ code: 'E_EXEC_START' });
    await expect(run(agent.client, ['true'], { cwd: '/no/such/dir' })).rejects.toMatchObject({ code: 'E_EXEC_START' });
  });

  it('pipes stdin through cat byte-exact', async () => {
    const input = Buffer.alloc(300_000);
    for (let i = 0; i < input.length; i++) input[i] = (i * 7) & 0xff;
    const r = await run(agent.client, ['cat'], { stdin: input });
    expect(r.code).toBe(0);
    expect(createHash('sha256').update(r.stdout).digest('hex')).toBe(createHash('sha256').update(input).digest('hex'));
  });

  it('runs 8 execs at once without mixing their output', async () => {
    const results = await Promise.all(Array.from({ length: 8 }, (_, i) => run(agent.client, ['sh', '-c', `for j in 1 2 3; do echo ${i}-$j; done`])));
    results.forEach((r, i) => expect(r.stdout.toString()).toBe(`${i}-1\n${i}-2\n${i}-3\n`));
  });

  it('delivers a signal to a running exec', async () => {
    const done = new Promise<{ code: number | null; signal: number | null }>((resolve, reject) => {
      const s = agent.client.exec(
        { argv: ['sleep', '100'], env: ['PATH=/usr/bin:/bin'], cwd: '/' },
        { started: () => s.signal(15), stdout: () => {}, stderr: () => {}, exited: (code, signal) => resolve({ code, signal }), failed: reject },
      );
    });
    expect(await done).toEqual({ code: null, signal: 15 });
  });
});

/** A duplex whose "guest" side the test writes by hand. */
function fakeGuest() {
  const toHost: Buffer[] = [];
  let push!: (b: Buffer) => void;
  const sock = new Duplex({
    read() {},
    write(chunk, _enc, cb) {
      toHost.push(chunk);
      cb();
    },
  });
  push = (b) => sock.push(b);
  // It speaks the host's current protocol unless a test asks for another.
  const hello = (version = PROTOCOL_VERSION) => push(encodeFrame(FrameType.HELLO as never, 0, new PayloadWriter().u32(version).str('fake').u32(1).u32(1).finish()));
  return { sock, push, hello, sent: toHost };
}

// A hostile guest is simulated on a stream the test controls: the real agent never sends
// malformed frames, so this is the only way to aim these bytes at the host decoder.
describe('agent protocol against a hostile guest', () => {
  it('fails the connection and every open session on a malformed frame, without throwing', async () => {
    const g = fakeGuest();
    const client = new AgentClient(g.sock as never);
    g.hello();
    await client.ready;
    const failed: Error[] = [];
    client.exec({ argv: ['x'], env: [], cwd: '/' }, { started() {}, stdout() {}, stderr() {}, exited() {}, failed: (e) => failed.push(e) });
    const h = Buffer.alloc(12);
    h.writeUInt32LE(0xffffffff, 0);
    h.writeUInt16LE(FrameType.STDOUT, 8);
    g.push(h);
    const err = await client.failed;
    expect(err).toBeInstanceOf(CorralError);
    expect((err as CorralError).code).toBe('E_PROTOCOL');
    expect(failed).toHaveLength(1);
    expect(() => client.exec({ argv: ['x'], env: [], cwd: '/' }, { started() {}, stdout() {}, stderr() {}, exited() {}, failed() {} })).toThrowError(/4294967295 bytes/);
  });

  it('rejects output for a session the host never opened', async () => {
    const g = fakeGuest();
    const client = new AgentClient(g.sock as never);
    g.hello();
    await client.ready;
    g.push(encodeFrame(FrameType.STDOUT as never, 77, Buffer.from('x')));
    expect((await client.failed).message).toMatch(/session 77, which is not open/);
  });

  it('refuses an agent of a protocol the host does not speak (0, or newer than the host), naming both', async () => {
    for (const version of [0, PROTOCOL_VERSION + 1]) {
      const g = fakeGuest();
      const client = new AgentClient(g.sock as never);
      g.hello(version);
      await expect(client.ready).rejects.toMatchObject({ code: 'E_PROTOCOL', message: `guest agent speaks protocol ${version}, host speaks 1–${PROTOCOL_VERSION}` });
    }
  });

  it('still speaks to a protocol-1 agent, but refuses it a SETUP with E_SETUP_MISSING naming the versions', async () => {
    const g = fakeGuest();
    const client = new AgentClient(g.sock as never);
    g.hello(1);
    await client.ready;
    expect(client.hello?.protocolVersion).toBe(1);
    await expect(client.setup(new Uint8Array(4))).rejects.toMatchObject({ code: 'E_SETUP_MISSING', message: expect.stringMatching(/speaks protocol 1, volumes\/scripts\/patches\/network need 2/) });
    client.close();
  });

  it('rejects a frame before HELLO', async () => {
    const g = fakeGuest();
    const client = new AgentClient(g.sock as never);
    g.push(encodeFrame(FrameType.PONG as never, 0, Buffer.from('x')));
    await expect(client.ready).rejects.toThrowError(/before HELLO/);
  });
});
