// Background commands through the CLI (exec -d, execs, attach, exec-kill), each step a fresh
// `corral` process as a script would run it: the process that started a command is gone
// before another lists it, reads it and kills it. One detached sandbox for the file (each
// test starts commands of its own in it); a real VM.
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { corral, corralLive, corralWith, plainCorral } from '../helpers/cli.ts';
import { uniqueName } from '../helpers/sandbox.ts';

describe('background commands from the CLI', () => {
  const name = uniqueName('cli-bg');
  beforeAll(async () => {
    expect(await corral('create', name, '--memory', '128')).toMatchObject({ code: 0, json: { status: 'running' } });
  });
  afterAll(async () => {
    await corral('kill', name);
    await corral('rm', name);
  });

  it('exec -d starts a command that outlives the CLI, execs lists it, and attach from another process feeds it stdin (not /dev/null) and exits with its code', async () => {
    const script = 'echo before; read line; echo "got $line"; echo oops >&2; exit 3';
    const started = await corral('exec', name, '-d', '-i', '--', 'sh', '-c', script);
    expect(started).toMatchObject({ code: 0, json: { id: expect.any(Number), sandbox: name, argv: ['sh', '-c', script], stdin: true } });
    const id: number = started.json.id;
    // The starting process has exited; the command waits for its line.
    await vi.waitFor(async () => expect((await corral('execs', name)).json).toContainEqual({ id, argv: ['sh', '-c', script], pid: expect.any(Number), startedAt: expect.any(Number), background: true, stdin: true, tty: false }), { timeout: 30_000, interval: 250 });
    const table = await plainCorral('execs', name);
    expect(table.code).toBe(0);
    expect(table.stdout.split('\n')[0]).toMatch(/^ID\s+PID\s+BACKGROUND\s+STDIN\s+STARTED\s+COMMAND$/);
    expect(table.stdout).toMatch(new RegExp(`^${id}\\s+\\d+\\s+yes\\s+open\\s+\\S+\\s+sh -c "echo before`, 'm'));

    // An attach whose stdin is /dev/null leaves the command's stdin open (else `read` would
    // see EOF and the command end at once); Ctrl-C detaches it.
    const reader = corralLive(['attach', name, String(id)]);
    await reader.until('before\n');
    reader.child.kill('SIGINT');
    expect(await reader.exited).toEqual({ code: 130, signal: null });
    // attach with a pipe on stdin: the line reaches the command, EOF closes its stdin.
    const attached = await corralWith('hello\n', 'attach', name, String(id));
    expect(attached).toMatchObject({ code: 3, json: { id, code: 3, signal: null, stdout: 'before\ngot hello\n', stderr: 'oops\n', lastSeq: expect.any(Number) } });
    expect((await corral('execs', name)).json.some((e: { id: number }) => e.id === id)).toBe(false);
    // Ended: attach (exec's exit codes: corral failed) and exec-kill (not found) say so.
    expect(await corral('attach', name, String(id))).toMatchObject({ code: 125, json: { error: { code: 'E_EXEC_NOT_FOUND', message: expect.stringContaining(`corral logs ${name}`) } } });
    expect(await corral('exec-kill', name, String(id))).toMatchObject({ code: 3, json: { error: { code: 'E_EXEC_NOT_FOUND' } } });
  });

  it('Ctrl-C detaches attach and the command runs on; attach --since reads on from there; exec-kill ends it and the attached process exits 128+signal', async () => {
    const started = await corral('exec', name, '--background', '--', 'sh', '-c', 'echo one; while :; do sleep 1; echo tick; done');
    expect(started.code).toBe(0);
    const id = String(started.json.id);

    const first = corralLive(['attach', name, id]);
    await first.until('one\n');
    first.child.kill('SIGINT');
    expect(await first.exited).toEqual({ code: 130, signal: null });
    const since = /--since (\d+)/.exec(first.stderr())?.[1];
    expect(first.stderr()).toContain(`detached from command ${id}: it runs on`);
    expect(Number(since)).toBeGreaterThan(0);
    expect((await corral('execs', name)).json).toContainEqual(expect.objectContaining({ id: Number(id), background: true, stdin: false }));
    // It was started without stdin: nothing to write to.
    expect(await corral('attach', name, id, '--stdin', 'x')).toMatchObject({ code: 2, json: { error: { code: 'E_USAGE', message: expect.stringContaining('--stdin') } } });

    // A second reader from the first one's seq: what came after, not "one" again.
    const second = corralLive(['attach', name, id, '--since', since!]);
    await second.until('tick\n');
    expect(await corral('exec-kill', name, id, '--signal', 'TERM')).toMatchObject({ code: 0, json: { id: Number(id), signal: 15 } });
    expect(await second.exited).toEqual({ code: 128 + 15, signal: null });
    expect(second.stdout()).not.toContain('one');
    expect((await corral('execs', name)).json.some((e: { id: number }) => e.id === Number(id))).toBe(false);
  });

  it('names the option and what it allows when a command line is wrong, with exit code 2', async () => {
    const usage = (message: string) => ({ code: 2, json: { error: { code: 'E_USAGE', message: expect.stringContaining(message) } } });
    const invalid = (message: string) => ({ code: 2, json: { error: { code: 'E_INVALID_OPTION', message: expect.stringContaining(message) } } });
    expect(await corral('exec', name, '-d', '--timeout', '5', '--', 'sleep', '1')).toMatchObject(usage('--timeout'));
    expect(await corral('exec', name, '-d', '--tty', '--', 'sh')).toMatchObject(usage('--tty'));
    expect(await corral('exec', name, '-i', '--', 'cat')).toMatchObject(usage('--interactive'));
    expect(await corral('exec', name, '-d', '-i', '--stdin', 'x', '--', 'cat')).toMatchObject(usage('--stdin'));
    expect(await corral('exec', name, '-d')).toMatchObject(usage('no command given'));
    expect(await corral('execs', name, 'extra')).toMatchObject(usage('corral execs NAME'));
    expect(await corral('attach', name)).toMatchObject(usage('corral attach NAME ID'));
    expect(await corral('attach', name, 'abc')).toMatchObject(invalid('invalid option ID: the id of a running command'));
    expect(await corral('attach', name, '1', '--since=-1')).toMatchObject(invalid('invalid option --since: a non-negative integer'));
    expect(await corral('attach', name, '1', '--stdin', 'x', '--no-stdin')).toMatchObject(usage('--no-stdin'));
    expect(await corral('exec-kill', name, '1', '--signal', 'FOO')).toMatchObject(invalid('invalid option --signal: a signal name (KILL, TERM'));
    expect(await corral('exec-kill', name, '1', '--signal', '99')).toMatchObject(invalid('--signal'));
    expect(await corral('attach', name, '1', '--follow')).toMatchObject(usage("'--follow'"));
    // A bad id is refused before any cluster is contacted (test/cluster/cli.test.ts attaches through one).
    expect(await corral('--nats', 'nats://127.0.0.1:1', 'attach', name, 'x')).toMatchObject(invalid('ID'));
  });
});
