import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CorralError, Sandbox, normalizeConfig } from '../../src/index.ts';
import type { Supervisor } from '../../src/supervisor/Supervisor.ts';
import { testSupervisor, uniqueName } from '../helpers/sandbox.ts';

function rejects(fn: () => unknown, option: string, allowed: RegExp) {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(CorralError);
    expect((err as CorralError).code).toBe('E_INVALID_OPTION');
    expect((err as Error).message).toContain(`invalid option ${option}:`);
    expect((err as Error).message).toMatch(allowed);
    return;
  }
  throw new Error(`expected option ${option} to be rejected`);
}

describe('builder validation', () => {
  it('rejects bad names with the rule', () => {
    rejects(() => Sandbox.builder(''), 'name', /1-63 characters of a-z, 0-9 and "-"/);
    rejects(() => Sandbox.builder('x'.repeat(64)), 'name', /1-63/);
    rejects(() => Sandbox.builder('Has Space'), 'name', /a-z/);
    rejects(() => Sandbox.builder('-lead'), 'name', /starting and ending/);
    rejects(() => Sandbox.builder('../etc'), 'name', /a-z/);
  });

  it('rejects memory and cpus outside their ranges', () => {
    rejects(() => Sandbox.builder('a').memory(16), 'memory', /an integer from 64 to 65536 MiB \(got 16\)/);
    rejects(() => Sandbox.builder('a').memory(1.5), 'memory', /integer/);
    rejects(() => Sandbox.builder('a').cpus(0), 'cpus', /from 1 to 64/);
    rejects(() => Sandbox.builder('a').cpus(65), 'cpus', /from 1 to 64/);
  });

  it('rejects bad env names and values', () => {
    rejects(() => Sandbox.builder('a').env('1BAD', 'x'), 'env name', /letters, digits and "_"/);
    rejects(() => Sandbox.builder('a').env('A=B', 'x'), 'env name', /letters/);
    rejects(() => Sandbox.builder('a').env('OK', 'nul\0byte'), 'env.OK', /without NUL/);
  });

  it('requires an absolute workdir and shell', () => {
    rejects(() => Sandbox.builder('a').workdir('app'), 'workdir', /absolute path/);
    rejects(() => Sandbox.builder('a').workdir('/app/../etc'), 'workdir', /without "\.\."/);
    rejects(() => Sandbox.builder('a').shell('sh'), 'shell', /absolute/);
  });

  it('names the allowed accel values', () => {
    rejects(() => Sandbox.builder('a').accel('hvf' as never), 'accel', /one of "auto", "kvm", "tcg"/);
  });

  it('builds a plain config that survives JSON and is validated again on create', () => {
    const config = Sandbox.builder('cfg').memory(512).cpus(2).workdir('/app').env('DEBUG', 'true').label('team', 'a').build();
    expect(normalizeConfig(JSON.parse(JSON.stringify(config)))).toEqual(config);
    expect(config).toMatchObject({ name: 'cfg', image: 'corral/base', memoryMib: 512, cpus: 2, env: { DEBUG: 'true' } });
    rejects(() => normalizeConfig({ ...config, memoryMib: 1 }), 'memoryMib', /64 to 65536/);
    rejects(() => normalizeConfig({ ...config, colour: 'red' }), 'colour', /a known option/);
  });
});

// What the builder's machine and shell options do inside a real VM (one sandbox for both).
describe('the builder in a real VM', () => {
  let sup: Supervisor;
  let sb: Sandbox;
  // A shell of the sandbox's own: a script that marks its output, then is busybox sh. It
  // proves sb.shell() goes through the configured shell and hands it `-c script`.
  const SHELL = '#!/bin/sh\necho "myshell argv: $*"\nexec /bin/sh "$@"\n';

  beforeAll(async () => {
    sup = testSupervisor();
    sb = await Sandbox.builder(uniqueName('shape')).cpus(2).script('myshell', SHELL).shell('/.msb/scripts/myshell').supervisor(sup).create();
  });
  afterAll(async () => {
    await sb?.stop();
    await sup?.close();
  });

  it('gives the guest the number of vCPUs asked for', async () => {
    expect(sb.config.cpus).toBe(2);
    expect((await sb.exec('nproc')).stdout).toBe('2\n');
    expect((await sb.exec('grep', ['-c', '^processor', '/proc/cpuinfo'])).stdout).toBe('2\n');
  });

  it('runs sb.shell() scripts through the configured shell, and plain execs without it', async () => {
    const r = await sb.shell('echo "$0 ran me"; exit 5');
    expect(r.code).toBe(5);
    expect(r.stdout).toBe('myshell argv: -c echo "$0 ran me"; exit 5\n/bin/sh ran me\n');
    expect((await sb.exec('echo', ['direct'])).stdout).toBe('direct\n');
  });
});
