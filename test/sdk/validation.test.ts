// One table of bad inputs for every public API, each with the error code it must fail with
// and the option its message must name. No VM for most rows; the exec rows use the fake
// qemu of test/helpers/fake-qemu.mjs ("mute"): validation happens before anything reaches a
// guest, so a real VM would add nothing but boot time.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Image, NetworkPolicy, Sandbox, Snapshot, Volume, normalizeConfig } from '../../src/index.ts';
import { Supervisor } from '../../src/supervisor/Supervisor.ts';
import { hostileSandbox } from '../helpers/sandbox.ts';

type Row = readonly [what: string, call: () => unknown, code: string, option: string];

const b = () => Sandbox.builder('valid');
const huge = 'x'.repeat(200_000);

const builderRows: Row[] = [
  ['empty name', () => Sandbox.builder(''), 'E_INVALID_OPTION', 'name'],
  ['name with "/"', () => Sandbox.builder('a/../b'), 'E_INVALID_OPTION', 'name'],
  ['name of 64 chars', () => Sandbox.builder('a'.repeat(64)), 'E_INVALID_OPTION', 'name'],
  ['memory below 64 MiB', () => b().memory(16), 'E_INVALID_OPTION', 'memory'],
  ['memory not an integer', () => b().memory(100.5), 'E_INVALID_OPTION', 'memory'],
  ['memory as a string', () => b().memory('512' as never), 'E_INVALID_OPTION', 'memory'],
  ['memory above 64 GiB', () => b().memory(1 << 20), 'E_INVALID_OPTION', 'memory'],
  ['0 cpus', () => b().cpus(0), 'E_INVALID_OPTION', 'cpus'],
  ['NaN cpus', () => b().cpus(Number.NaN), 'E_INVALID_OPTION', 'cpus'],
  ['relative workdir', () => b().workdir('app'), 'E_INVALID_OPTION', 'workdir'],
  ['workdir with ..', () => b().workdir('/app/../../etc'), 'E_INVALID_OPTION', 'workdir'],
  ['workdir with NUL', () => b().workdir('/a\0b'), 'E_INVALID_OPTION', 'workdir'],
  ['relative shell', () => b().shell('bash'), 'E_INVALID_OPTION', 'shell'],
  ['env name with "="', () => b().env('A=B', 'x'), 'E_INVALID_OPTION', 'env name'],
  ['env name starting with a digit', () => b().env('1X', 'x'), 'E_INVALID_OPTION', 'env name'],
  ['env value with NUL', () => b().env('X', 'a\0b'), 'E_INVALID_OPTION', 'env.X'],
  ['env value over 128 KiB', () => b().env('X', huge), 'E_INVALID_OPTION', 'env.X'],
  ['empty image', () => b().image(''), 'E_INVALID_OPTION', 'image'],
  ['image with a space', () => b().image('python 3'), 'E_INVALID_OPTION', 'image'],
  ['image with an upper-case repository', () => b().image('registry.io/Team/App:1'), 'E_INVALID_OPTION', 'image'],
  ['image with a bad digest', () => b().image('python@sha256:xyz'), 'E_INVALID_OPTION', 'image'],
  ['unknown pull policy', () => b().pullPolicy('sometimes' as never), 'E_INVALID_OPTION', 'pullPolicy'],
  ['registry auth of unknown kind', () => b().registryAuth({ kind: 'digest' } as never), 'E_INVALID_OPTION', 'registryAuth.kind'],
  ['registry auth with two password sources', () => b().registryAuth({ kind: 'basic', username: 'u', password: 'p', passwordEnv: 'P' } as never), 'E_INVALID_OPTION', 'registryAuth'],
  ['registry user with ":"', () => b().registryAuth({ kind: 'basic', username: 'a:b', passwordEnv: 'P' }), 'E_INVALID_OPTION', 'registryAuth.username'],
  ['insecure registry that is no host', () => b().insecureRegistries('http://x/y'), 'E_INVALID_OPTION', 'insecureRegistries'],
  ['label key with a space', () => b().label('a b', 'v'), 'E_INVALID_OPTION', 'labels.a b'],
  ['relative volume path', () => b().volume('data', (v) => v.tmpfs()), 'E_INVALID_OPTION', 'volume'],
  ['volume of no kind', () => b().volume('/data', (v) => v), 'E_INVALID_OPTION', 'volume /data'],
  ['tmpfs of 0 MiB', () => b().volume('/data', (v) => v.tmpfs().size(0)), 'E_INVALID_OPTION', 'volume /data.size'],
  ['read-only tmpfs', () => b().volume('/data', (v) => v.tmpfs().readonly()), 'E_INVALID_OPTION', 'volume /data.readonly'],
  ['named volume "../x"', () => b().volume('/data', (v) => v.named('../x')), 'E_INVALID_OPTION', 'volume /data'],
  ['bind of a relative host path that is empty', () => b().volume('/data', (v) => v.bind('')), 'E_INVALID_OPTION', 'volume /data'],
  ['volume inside another', () => b().volume('/a', (v) => v.tmpfs()).volume('/a/b', (v) => v.tmpfs()), 'E_INVALID_OPTION', 'volume'],
  ['rule with a bad CIDR', () => b().network((n) => n.policy(NetworkPolicy.denyAll().allow({ cidr: '300.0.0.0/8' }))), 'E_INVALID_OPTION', 'network'],
  ['rule with host bits past the prefix', () => b().network((n) => n.policy(NetworkPolicy.denyAll().allow({ cidr: '10.0.0.1/8' }))), 'E_INVALID_OPTION', 'network'],
  ['rule with port 70000', () => b().network((n) => n.policy(NetworkPolicy.denyAll().allow({ protocol: 'tcp', port: 70000 }))), 'E_INVALID_OPTION', 'network'],
  ['rule of protocol "sctp"', () => b().network((n) => n.policy(NetworkPolicy.denyAll().allow({ protocol: 'sctp' as never }))), 'E_INVALID_OPTION', 'network'],
  ['icmp rule with a port', () => b().network((n) => n.policy(NetworkPolicy.denyAll().allow({ protocol: 'icmp', port: 80 }))), 'E_INVALID_OPTION', 'network'],
  ['rules with the "none" policy', () => NetworkPolicy.none().allow({}), 'E_INVALID_OPTION', 'network.allow'],
  ['network not a function', () => b().network('public' as never), 'E_INVALID_OPTION', 'network'],
  ['host port 0', () => b().port(0, 80), 'E_INVALID_OPTION', 'port'],
  ['guest port 70000', () => b().port(8080, 70000), 'E_INVALID_OPTION', 'port'],
  ['host port published twice', () => b().port(8080, 80).port(8080, 81), 'E_INVALID_OPTION', 'port'],
  ['unknown accel', () => b().accel('hvf' as never), 'E_INVALID_OPTION', 'accel'],
  ['boot timeout of 5 ms', () => b().bootTimeoutMs(5), 'E_INVALID_OPTION', 'bootTimeoutMs'],
  ['stop timeout of a year', () => b().stopTimeoutMs(365 * 24 * 3600 * 1000), 'E_INVALID_OPTION', 'stopTimeoutMs'],
  ['negative max duration', () => b().maxDuration(-1), 'E_INVALID_OPTION', 'maxDuration'],
  ['NaN idle timeout', () => b().idleTimeout(Number.NaN), 'E_INVALID_OPTION', 'idleTimeout'],
  ['unknown idle action', () => b().idleTimeout(5, { action: 'nap' as 'pause' }), 'E_INVALID_OPTION', 'action'],
  ['unknown log level', () => b().logLevel('loud' as never), 'E_INVALID_OPTION', 'logLevel'],
  ['template "yes"', () => b().template('yes' as never), 'E_INVALID_OPTION', 'template'],
  ['snapshot name "../x"', () => b().fromSnapshot('../x'), 'E_INVALID_OPTION', 'fromSnapshot'],
  ['script name with "/"', () => b().script('a/b', 'echo'), 'E_INVALID_OPTION', 'script'],
  ['patch to a relative path', () => b().patch((p) => p.text('etc/x', 'y')), 'E_INVALID_OPTION', 'patch'],
  ['config with memoryMib 1', () => normalizeConfig({ ...b().build(), memoryMib: 1 }), 'E_INVALID_OPTION', 'memoryMib'],
  ['config with an unknown idleAction', () => normalizeConfig({ ...b().build(), idleTimeoutMs: 5000, idleAction: 'nap' }), 'E_INVALID_OPTION', 'idleAction'],
  ['config with an unknown field', () => normalizeConfig({ ...b().build(), colour: 'red' }), 'E_INVALID_OPTION', 'colour'],
  ['config with a raw password', () => normalizeConfig({ ...b().build(), registryAuth: { kind: 'basic', username: 'u', password: 'p' } }), 'E_INVALID_OPTION', 'registryAuth.password'],
];

const dirs: string[] = [];
const freshDir = () => {
  const d = mkdtempSync(join(tmpdir(), 'corral-test-valid-'));
  dirs.push(d);
  return d;
};

const supervisorRows: Row[] = [
  ['maxSandboxes 0', () => new Supervisor({ stateDir: freshDir(), maxSandboxes: 0 }), 'E_INVALID_OPTION', 'maxSandboxes'],
  ['memoryHeadroomMib -1', () => new Supervisor({ stateDir: freshDir(), memoryHeadroomMib: -1 }), 'E_INVALID_OPTION', 'memoryHeadroomMib'],
  ['spares 9', () => new Supervisor({ stateDir: freshDir(), spares: 9 }), 'E_INVALID_OPTION', 'spares'],
  ['replay.maxEvents 0', () => new Supervisor({ stateDir: freshDir(), replay: { maxEvents: 0 } }), 'E_INVALID_OPTION', 'replay.maxEvents'],
  ['replay.maxBytes 10', () => new Supervisor({ stateDir: freshDir(), replay: { maxBytes: 10 } }), 'E_INVALID_OPTION', 'replay.maxBytes'],
  ['logs.maxEntries 1.5', () => new Supervisor({ stateDir: freshDir(), logs: { maxEntries: 1.5 } }), 'E_INVALID_OPTION', 'logs.maxEntries'],
  ['empty stateDir', () => new Supervisor({ stateDir: '' }), 'E_INVALID_OPTION', 'stateDir'],
];

async function expectRejected(call: () => unknown, code: string, option: string): Promise<void> {
  let err: unknown;
  try {
    await call();
  } catch (e) {
    err = e;
  }
  expect(err, 'it did not throw').toBeInstanceOf(Error);
  expect(err).toMatchObject({ code });
  if (code === 'E_INVALID_OPTION') expect((err as Error).message).toContain(`invalid option ${option}`);
}

describe('bad input to the builder and configs', () => {
  it.each(builderRows)('%s fails with %s naming its option', async (_what, call, code, option) => {
    await expectRejected(call, code, option);
  });
});

afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe('bad options of the Supervisor', () => {
  it.each(supervisorRows)('%s fails with %s naming its option', async (_what, call, code, option) => {
    await expectRejected(call, code, option);
  });
});

describe('bad input to the Volume, Snapshot and Image APIs', () => {
  let sup: Supervisor;
  beforeAll(() => {
    sup = new Supervisor({ stateDir: freshDir() });
  });
  afterAll(async () => {
    await sup?.close();
  });
  const rows: Row[] = [
    ['Volume.get("../x")', () => Volume.get('../x', { supervisor: sup }), 'E_INVALID_OPTION', 'volume name'],
    ['Volume.remove("Bad Name")', () => Volume.remove('Bad Name', { supervisor: sup }), 'E_INVALID_OPTION', 'volume name'],
    ['Volume.get of an unknown volume', () => Volume.get('nope', { supervisor: sup }), 'E_VOLUME_NOT_FOUND', ''],
    ['Snapshot.remove("../../etc")', () => Snapshot.remove('../../etc', { supervisor: sup }), 'E_INVALID_OPTION', 'snapshot name'],
    ['Snapshot.remove of an unknown snapshot', () => Snapshot.remove('nope', { supervisor: sup }), 'E_SNAPSHOT_NOT_FOUND', ''],
    ['Image.inspect("a b")', () => Image.inspect('a b', { stateDir: sup.stateDir }), 'E_INVALID_OPTION', 'image'],
    ['Image.remove("")', () => Image.remove('', { stateDir: sup.stateDir }), 'E_INVALID_OPTION', 'image'],
    ['Image.inspect of an image not cached', () => Image.inspect('127.0.0.1:1/none:v1', { stateDir: sup.stateDir }), 'E_IMAGE_NOT_FOUND', ''],
  ];
  it.each(rows)('%s fails with %s', async (_what, call, code, option) => {
    await expectRejected(call, code, option);
  });
});

describe('bad exec options', () => {
  let sup: Supervisor;
  let sb: Sandbox;
  beforeAll(async () => {
    sup = new Supervisor({ stateDir: freshDir() });
    sb = await hostileSandbox(sup, 'mute');
  });
  afterAll(async () => {
    await sb?.kill().catch(() => {});
    await sup?.close();
  });
  const rows: Row[] = [
    ['an empty command', () => sb.exec(''), 'E_INVALID_OPTION', 'command'],
    ['a command with NUL', () => sb.exec('ls\0rm'), 'E_INVALID_OPTION', 'command'],
    ['a non-string argument', () => sb.exec('echo', [1 as never]), 'E_INVALID_OPTION', 'args[0]'],
    ['an argument over 128 KiB', () => sb.exec('echo', ['ok', huge]), 'E_INVALID_OPTION', 'args[1]'],
    ['a relative cwd', () => sb.exec('ls', [], { cwd: 'tmp' }), 'E_INVALID_OPTION', 'cwd'],
    ['an env name with "="', () => sb.exec('ls', [], { env: { 'A=B': 'x' } }), 'E_INVALID_OPTION', 'exec env name'],
    ['an env value with NUL', () => sb.exec('ls', [], { env: { A: 'x\0y' } }), 'E_INVALID_OPTION', 'exec env.A'],
    ['timeoutMs 0', () => sb.exec('ls', [], { timeoutMs: 0 }), 'E_INVALID_OPTION', 'timeoutMs'],
    ['timeoutMs "5s"', () => sb.exec('ls', [], { timeoutMs: '5s' as never }), 'E_INVALID_OPTION', 'timeoutMs'],
    ['stdin of a number', () => sb.exec('cat', [], { stdin: 5 as never }), 'E_INVALID_OPTION', 'stdin'],
    ['mergeStderr "yes"', () => sb.exec('ls', [], { mergeStderr: 'yes' as never }), 'E_INVALID_OPTION', 'mergeStderr'],
    ['a signal that is no AbortSignal', () => sb.exec('ls', [], { signal: {} as never }), 'E_INVALID_OPTION', 'signal'],
    ['execStream with a relative cwd', () => sb.execStream('ls', [], { cwd: '..' }), 'E_INVALID_OPTION', 'cwd'],
    ['a tty of 0 columns', () => sb.exec('ls', [], { tty: { cols: 0, rows: 24 } }), 'E_INVALID_OPTION', 'tty'],
    ['a user with a space', () => sb.exec('id', [], { user: 'root admin' }), 'E_INVALID_OPTION', 'user'],
    ['a user with two ":"', () => sb.exec('id', [], { user: '1:2:3' }), 'E_INVALID_OPTION', 'user'],
    ['fs read of a relative path', () => sb.fs().read('etc/passwd'), 'E_INVALID_OPTION', 'path'],
    ['fs write of a number', () => sb.fs().write('/tmp/x', 5 as never), 'E_INVALID_OPTION', 'data'],
    ['a snapshot named "../x"', () => sb.snapshot('../x'), 'E_INVALID_OPTION', 'snapshot name'],
  ];
  it.each(rows)('%s fails with %s naming its option', async (_what, call, code, option) => {
    await expectRejected(call, code, option);
  });
  it('leaves the sandbox running', async () => {
    expect((await sb.info()).status).toBe('running');
  });
});
