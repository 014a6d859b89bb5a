// exec in one real sandbox, shared by the tests of this file (boots under TCG cost ~1 s each).
import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { OUTPUT_WINDOW } from '../../src/agent/frame.ts';
import { Sandbox, type SandboxEvent } from '../../src/index.ts';
import type { Supervisor } from '../../src/supervisor/Supervisor.ts';
import { testSupervisor, uniqueName } from '../helpers/sandbox.ts';

describe('exec in a running sandbox', () => {
  let sup: Supervisor;
  let sb: Sandbox;
  const events: SandboxEvent[] = [];

  beforeAll(async () => {
    sup = testSupervisor();
    const name = uniqueName('exec');
    sup.bus.forSandbox(name).subscribe((e) => events.push(e));
    sb = await Sandbox.builder(name).image('corral/base').memory(256).cpus(1).workdir('/app').shell('/bin/sh').env('DEBUG', 'true').supervisor(sup).create();
  });
  afterAll(async () => {
    await sb?.stop();
    await sup?.close();
  });

  it('reports the exit code and keeps stdout and stderr apart', async () => {
    const out = await sb.exec('sh', ['-c', 'echo hi; echo oops >&2; exit 3']);
    expect(out.code).toBe(3);
    expect(out.stdout).toBe('hi\n');
    expect(out.stderr).toBe('oops\n');
    expect(out.reason).toBe('exited');
  });

  it('merges stderr into stdout in the order the command wrote them, with mergeStderr', async () => {
    const script = 'echo one; echo two >&2; echo three; echo four >&2; exit 2';
    const merged = await sb.exec('sh', ['-c', script], { mergeStderr: true });
    expect(merged).toMatchObject({ code: 2, stdout: 'one\ntwo\nthree\nfour\n', stderr: '' });
    // the stream carries no stderr item at all: the guest gave the command one pipe for both
    const kinds = new Set<string>();
    for await (const item of sb.execStream('sh', ['-c', script], { mergeStderr: true })) kinds.add(item.type);
    expect([...kinds]).toEqual(['started', 'stdout', 'exited']);
    // and without it, the two stay apart (the default)
    expect(await sb.exec('sh', ['-c', script])).toMatchObject({ stdout: 'one\nthree\n', stderr: 'two\nfour\n' });
    await expect(sb.exec('true', [], { mergeStderr: 'yes' as never })).rejects.toMatchObject({ code: 'E_INVALID_OPTION', message: expect.stringContaining('mergeStderr') });
  });

  it('applies the workdir and the sandbox env, and per-exec env and cwd over them', async () => {
    expect((await sb.shell('pwd; echo $DEBUG')).stdout).toBe('/app\ntrue\n');
    const r = await sb.shell('pwd; echo $DEBUG $EXTRA', { cwd: '/tmp', env: { DEBUG: 'no', EXTRA: 'x' } });
    expect(r.stdout).toBe('/tmp\nno x\n');
  });

  it('pipes 64 MiB from a host stream through sha256sum, as fast as the guest reads it', async () => {
    const hash = createHash('sha256');
    async function* source() {
      for (let i = 0; i < 1024; i++) {
        const chunk = randomBytes(64 * 1024);
        hash.update(chunk);
        yield chunk;
      }
    }
    const r = await sb.exec('sha256sum', [], { stdin: Readable.from(source()) });
    expect(r.code).toBe(0);
    expect(r.stdout.split(' ')[0]).toBe(hash.digest('hex'));
  });

  it('kills the command when its stdin stream fails, and refuses a stdin it cannot read', async () => {
    async function* failing() {
      yield 'partial';
      throw new Error('source broke');
    }
    await expect(sb.exec('cat', [], { stdin: failing() })).rejects.toMatchObject({ code: 'E_ABORTED', message: expect.stringContaining('source broke') });
    await expect(sb.exec('cat', [], { stdin: 42 as never })).rejects.toMatchObject({ code: 'E_INVALID_OPTION' });
  });

  it('holds a stdin write back until the command reads', async () => {
    const stream = await sb.execStream('sh', ['-c', 'while [ ! -e /tmp/gate ]; do sleep 0.05; done; exec wc -c'], { stdin: 'pipe' });
    let settled = false;
    // Past the window and the pipe: this write cannot complete before the command reads.
    const written = stream.write(new Uint8Array(8 * 1024 * 1024)).then(() => (settled = true));
    await sb.exec('true');
    expect(settled).toBe(false);
    await sb.exec('touch', ['/tmp/gate']);
    await written;
    await stream.end();
    const out: Uint8Array[] = [];
    for await (const item of stream) if (item.type === 'stdout') out.push(item.data);
    expect(Buffer.concat(out).toString().trim()).toBe(String(8 * 1024 * 1024));
  });

  it('takes stdin through a Node Writable, ended by the pipeline', async () => {
    const stream = await sb.execStream('cat', [], { stdin: 'pipe' });
    await pipeline(Readable.from(['one ', Buffer.from('two')]), stream.stdinWritable());
    const out: Uint8Array[] = [];
    for await (const item of stream) if (item.type === 'stdout') out.push(item.data);
    expect(Buffer.concat(out).toString()).toBe('one two');
  });

  it('pipes stdin to cat', async () => {
    const r = await sb.exec('cat', [], { stdin: 'line 1\nline 2\n' });
    expect(r.stdout).toBe('line 1\nline 2\n');
  });

  it('takes stdin text or bytes with the exec request up to 64 KiB, and by writes past it, byte-exact either way', async () => {
    for (const size of [0, 65_536, 65_537, 300_000]) {
      const bytes = Buffer.alloc(size, 'ab');
      const r = await sb.exec('sha256sum', [], { stdin: new Uint8Array(bytes) });
      expect([size, r.stdout.split(' ')[0]]).toEqual([size, createHash('sha256').update(bytes).digest('hex')]);
    }
    expect((await sb.exec('wc', ['-c'], { stdin: 'é'.repeat(40_000) })).stdout.trim()).toBe('80000');
  });

  it('delivers 10 MiB of output byte-exact', async () => {
    const prep = await sb.shell('head -c 10485760 /dev/urandom > /tmp/big && sha256sum /tmp/big');
    const guestSum = prep.stdout.split(' ')[0];
    const r = await sb.exec('cat', ['/tmp/big']);
    expect(r.stdoutBytes.length).toBe(10 * 1024 * 1024);
    expect(createHash('sha256').update(r.stdoutBytes).digest('hex')).toBe(guestSum);
  });

  it('runs 8 execs at once', async () => {
    const rs = await Promise.all(Array.from({ length: 8 }, (_, i) => sb.shell(`sleep 0.2; echo ${i}; echo e${i} >&2`)));
    rs.forEach((r, i) => {
      expect(r.code).toBe(0);
      expect(r.stdout).toBe(`${i}\n`);
      expect(r.stderr).toBe(`e${i}\n`);
    });
  });

  it('kills a running exec and its children', async () => {
    const stream = await sb.execStream('sh', ['-c', 'sleep 300 & sleep 300; echo never']);
    const started = await new Promise<number>((resolve) => {
      stream.items$.subscribe((item) => {
        if (item.type === 'started') resolve(item.pid);
      });
    });
    expect(started).toBeGreaterThan(1);
    await stream.kill(9);
    const x = await stream.exited;
    expect(x.signal).toBe(9);
    expect(x.code).toBeNull();
    // The whole process group went: no sleep is left in the guest.
    const ps = await sb.shell('pgrep sleep | wc -l');
    expect(ps.stdout.trim()).toBe('0');
  });

  it('ends a command that outlives timeoutMs and says so', async () => {
    const r = await sb.exec('sleep', ['30'], { timeoutMs: 300 });
    expect(r.timedOut).toBe(true);
    expect(r.reason).toBe('timeout');
    expect(r.signal).toBe(9);
  });

  it('refuses stdin on an exec opened without it, and the sandbox runs on', async () => {
    // Sent to the guest, such a write made its agent answer with a host error, which failed
    // the whole sandbox (found by ExecStream.close(), which ends stdin).
    const stream = await sb.execStream('sleep', ['1000']);
    await expect(stream.write('x')).rejects.toMatchObject({ code: 'E_ILLEGAL_STATE', message: expect.stringMatching(/without stdin.*stdin: 'pipe'/) });
    await stream.end(); // nothing to close: the command reads /dev/null
    expect(await stream.destroy()).toMatchObject({ signal: 9 });
    expect(await sb.exec('echo', ['still here'])).toMatchObject({ code: 0, stdout: 'still here\n' });
  });

  it('closes a stream gracefully (stdin ended, exit awaited), or by a kill after its timeoutMs', async () => {
    const cat = await sb.execStream('cat', [], { stdin: 'pipe' });
    await cat.write('bye\n');
    expect(await cat.close()).toMatchObject({ type: 'exited', code: 0 });
    expect(await cat.close()).toMatchObject({ code: 0 }); // idempotent
    const deaf = await sb.execStream('sh', ['-c', 'trap "" TERM; exec sleep 1000'], { stdin: 'pipe' });
    expect(await deaf.close({ timeoutMs: 200 })).toMatchObject({ signal: 9 });
    let disposed: Awaited<ReturnType<typeof sb.execStream>>;
    {
      await using s = await sb.execStream('cat', [], { stdin: 'pipe' });
      disposed = s;
    }
    expect(await disposed.exited).toMatchObject({ code: 0 });
  });

  it('streams started, stdout and exited in order', async () => {
    const kinds: string[] = [];
    let bytes = 0;
    for await (const item of sb.execStream('seq', ['1', '100000'])) {
      if (kinds.at(-1) !== item.type) kinds.push(item.type);
      if (item.type === 'stdout') bytes += item.data.length;
    }
    expect(kinds).toEqual(['started', 'stdout', 'exited']);
    // seq 1 100000 prints 588895 bytes.
    expect(bytes).toBe(588_895);
  });

  it('rejects a program that does not exist with E_EXEC_START', async () => {
    await expect(sb.exec('no-such-program')).rejects.toMatchObject({ code: 'E_EXEC_START' });
  });

  it('numbers the sandbox events without gaps and reports the boot', async () => {
    // Events of its own exec, whatever ran before it (or nothing did).
    const r = await sb.exec('echo', ['numbered']);
    expect(events.filter((e) => e.type === 'exec.exited' && e.execId === r.execId)).toHaveLength(1);
    const seqs = events.map((e) => e.seq);
    expect(seqs).toEqual(seqs.map((_, i) => i + 1));
    const started = events.find((e) => e.type === 'sandbox.started');
    expect(started).toMatchObject({ accel: expect.stringMatching(/^(tcg|kvm)$/) });
    const info = await sb.info();
    expect(info.status).toBe('running');
    expect(info.accelReason).toBeTruthy();
  });

  it('holds a command whose stream nobody reads at the output window, and lets it finish once read', async () => {
    const size = 8 * 1024 * 1024;
    const stream = await sb.execStream('sh', ['-c', `head -c ${size} /dev/zero; echo end >&2`]);
    const own = (e: SandboxEvent) => e.type === 'exec.stdout' && e.execId === stream.execId;
    const delivered = () => events.filter(own).reduce((n, e) => n + (e as Extract<SandboxEvent, { type: 'exec.stdout' }>).data.byteLength, 0);
    await vi.waitFor(() => expect(delivered()).toBe(OUTPUT_WINDOW), { timeout: 60_000, interval: 20 });
    // Each ping is a turn of the guest agent's loop: with room it would have sent more by now.
    for (let i = 0; i < 5; i++) await sb.ping();
    expect(delivered()).toBe(OUTPUT_WINDOW);
    expect(events.some((e) => e.type === 'exec.exited' && e.execId === stream.execId)).toBe(false);
    let stdout = 0;
    let stderr = '';
    for await (const item of stream) {
      if (item.type === 'stdout') stdout += item.data.byteLength;
      else if (item.type === 'stderr') stderr += Buffer.from(item.data).toString();
      else if (item.type === 'exited') expect(item.code).toBe(0);
    }
    expect({ stdout, stderr }).toEqual({ stdout: size, stderr: 'end\n' });
  });

  it('ends the stdin of a command that already exited without an error (the end raced the exit)', async () => {
    const stream = await sb.execStream('head', ['-n', '1'], { stdin: 'pipe' });
    await stream.write('one line\n');
    let out = '';
    for await (const item of stream) if (item.type === 'stdout') out += Buffer.from(item.data).toString();
    expect(out).toBe('one line\n');
    await expect(stream.end()).resolves.toBeUndefined();
  });

  it('settles exited for a command that prints 8 MiB nobody reads, discarding the output with a warning', async () => {
    const warnings: string[] = [];
    const onWarning = (w: Error) => warnings.push(w.message);
    process.on('warning', onWarning);
    try {
      const stream = await sb.execStream('sh', ['-c', 'head -c 8388608 /dev/zero; echo done']);
      expect(await stream.exited).toMatchObject({ code: 0 });
      await vi.waitFor(() => expect(warnings.some((m) => m.includes(`exec ${stream.execId}`) && m.includes('discarding'))).toBe(true));
      await expect(stream[Symbol.asyncIterator]().next()).rejects.toMatchObject({ code: 'E_ILLEGAL_STATE', message: expect.stringContaining('discarded') });
      // A stream whose exited is awaited but that prints little keeps its output for a later reader.
      const small = await sb.execStream('echo', ['kept']);
      await small.exited;
      const items: string[] = [];
      for await (const item of small) if (item.type === 'stdout') items.push(Buffer.from(item.data).toString());
      expect(items.join('')).toBe('kept\n');
    } finally {
      process.off('warning', onWarning);
    }
  });

  it('gives an Observable consumer every byte of a large output, and exec() collects one unbounded', async () => {
    const size = 12 * 1024 * 1024;
    const stream = await sb.execStream('head', ['-c', String(size), '/dev/zero']);
    let seen = 0;
    stream.items$.subscribe((item) => item.type === 'stdout' && (seen += item.data.byteLength));
    expect((await stream.exited).code).toBe(0);
    expect(seen).toBe(size);
    const r = await sb.exec('head', ['-c', String(3 * OUTPUT_WINDOW), '/dev/zero']);
    expect(r.stdoutBytes.length).toBe(3 * OUTPUT_WINDOW);
  });

  it('probes the floors: spawn timed by the agent, raw port throughput', async () => {
    const spawn = await sb.probe({ op: 'spawn', argv: ['true'], count: 10 });
    expect(spawn).toMatchObject({ op: 'spawn', status: 0 });
    expect(spawn.op === 'spawn' && spawn.ms).toHaveLength(10);
    // ≥ 0, not > 0: a guest whose kernel fell back from the TSC to jiffies (a loaded host
    // trips its clocksource watchdog) reads a spawn shorter than a tick as 0.
    expect(spawn.op === 'spawn' && spawn.ms.filter((ms) => !(Number.isFinite(ms) && ms >= 0))).toEqual([]);
    const sink = await sb.probe({ op: 'sink', bytes: 8 * 1024 * 1024 });
    expect(sink).toMatchObject({ op: 'sink', bytes: 8 * 1024 * 1024 });
    await expect(sb.probe({ op: 'spawn', argv: ['true'], count: 0 })).rejects.toMatchObject({ code: 'E_INVALID_OPTION', message: expect.stringContaining('count') });
    await expect(sb.probe({ op: 'sink', bytes: -1 })).rejects.toMatchObject({ code: 'E_INVALID_OPTION', message: expect.stringContaining('bytes') });
  });
});
