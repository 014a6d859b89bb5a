/**
 * The image's own command (config Entrypoint + Cmd), `docker run` style: in the SDK
 * (`sandbox.run`, `runStream`) and the CLI (`corral run IMAGE [-- ARGS]`, `--entrypoint`).
 * Its User is the default user of every exec. The image is the busybox test image with an
 * Entrypoint, a Cmd and a User added to its config
 * (derived at test time, pushed to a loopback registry). One VM for the SDK checks; the CLI
 * checks boot their own, as a user's `corral run` does.
 */

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CorralError, Sandbox, type SandboxEvent } from '../../src/index.ts';
import { imageArgv, imageCommandRequest } from '../../src/image/imageCommand.ts';
import type { Supervisor } from '../../src/supervisor/Supervisor.ts';
import { corral } from '../helpers/cli.ts';
import { testSupervisor, uniqueName } from '../helpers/sandbox.ts';
import { deriveLayout, startRegistry, testImages, type TestRegistry } from './helpers/registry.ts';

const images = testImages();
const tmp = mkdtempSync(join(tmpdir(), 'corral-test-imgcmd-'));
let reg: TestRegistry;
let sup: Supervisor;
let ref: string;

beforeAll(async () => {
  reg = await startRegistry('none');
  const layout = deriveLayout(join(images.dir, 'busybox'), join(tmp, 'entry'), (c) => {
    c.config.Entrypoint = ['/bin/sh', '-c', 'echo "entry $*"', 'sh'];
    c.config.Cmd = ['default', 'cmd'];
    c.config.User = '1000:1000'; // a uid without a passwd entry, as docker allows
  });
  await reg.push(layout, 'test/entry', 'v1');
  ref = `${reg.host}/test/entry:v1`;
  sup = testSupervisor();
});

afterAll(async () => {
  await sup?.close();
  await reg?.close();
  rmSync(tmp, { recursive: true, force: true });
});

describe("the image's command", () => {
  it('is the entrypoint followed by the arguments, or by the cmd when there are none', () => {
    const d = { entrypoint: ['python3'], cmd: ['-V'] };
    expect(imageArgv(d, {}, 'py')).toEqual(['python3', '-V']);
    expect(imageArgv(d, { args: [] }, 'py')).toEqual(['python3', '-V']);
    expect(imageArgv(d, { args: ['app.py', 'x'] }, 'py')).toEqual(['python3', 'app.py', 'x']);
    // an entrypoint given replaces the image's and drops its cmd
    expect(imageArgv(d, { entrypoint: ['/bin/sh'] }, 'py')).toEqual(['/bin/sh']);
    expect(imageArgv(d, { entrypoint: [], args: ['ls'] }, 'py')).toEqual(['ls']);
    expect(imageArgv({ entrypoint: [], cmd: ['/bin/sh'] }, {}, 'bb')).toEqual(['/bin/sh']);
    let err: unknown;
    try {
      imageArgv({ entrypoint: [], cmd: [] }, {}, 'example.com/app:v1');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(CorralError);
    expect(err).toMatchObject({ code: 'E_NO_COMMAND', message: expect.stringContaining('image example.com/app:v1 has no entrypoint or cmd') });
    expect(() => imageCommandRequest(['ok', 3], undefined)).toThrow(/invalid option args: an array of strings/);
    expect(() => imageCommandRequest(undefined, '/bin/sh')).toThrow(/invalid option entrypoint: an array of strings/);
  });

  it('runs in a sandbox with run() and runStream(), with the entrypoint overridable', async () => {
    const events: SandboxEvent[] = [];
    const sub = sup.events$.subscribe((e) => events.push(e));
    await using sb = await Sandbox.builder(uniqueName('cmd')).supervisor(sup).template(false).image(ref).create();
    try {
      const r = await sb.run();
      expect([r.code, r.stdout]).toEqual([0, 'entry default cmd\n']);
      expect((await sb.run(['x', 'y z'])).stdout).toBe('entry x y z\n');
      expect((await sb.run(['-c', 'echo over; exit 4'], { entrypoint: ['/bin/sh'] })).code).toBe(4);
      expect((await sb.run([], { entrypoint: ['/bin/pwd'] })).stdout).toBe('/\n');
      const items: string[] = [];
      for await (const item of sb.runStream(['streamed'])) if (item.type === 'stdout') items.push(Buffer.from(item.data).toString());
      expect(items.join('')).toBe('entry streamed\n');
      // the event says what really ran
      const started = events.filter((e): e is Extract<SandboxEvent, { type: 'exec.started' }> => e.type === 'exec.started' && e.name === sb.name);
      expect(started[0]!.argv).toEqual(['/bin/sh', '-c', 'echo "entry $*"', 'sh', 'default', 'cmd']);
      // nothing to run: a clear error, and the sandbox runs on
      await expect(sb.run([], { entrypoint: [] })).rejects.toMatchObject({ code: 'E_NO_COMMAND', message: expect.stringContaining(ref) });
      await expect(sb.run('x' as never)).rejects.toMatchObject({ code: 'E_INVALID_OPTION' });
      expect((await sb.exec('echo', ['plain'])).stdout).toBe('plain\n');
      // the image's User runs every exec unless the exec names another
      expect((await sb.run([], { entrypoint: ['id'] })).stdout).toMatch(/^uid=1000 gid=1000/);
      expect((await sb.exec('id', ['-u'])).stdout).toBe('1000\n');
      expect((await sb.exec('id', ['-u'], { user: 'root' })).stdout).toBe('0\n');
    } finally {
      sub.unsubscribe();
    }
  });

  it('is what `corral run IMAGE` runs; `-- ARGS` replace the cmd and --entrypoint the entrypoint', async () => {
    expect(await corral('run', ref)).toMatchObject({ code: 0, json: { code: 0, stdout: 'entry default cmd\n' } });
    expect(await corral('run', ref, '--entrypoint', '/bin/echo', '--', 'a', 'b')).toMatchObject({ code: 0, json: { stdout: 'a b\n' } });
    expect(await corral('run', ref, 'extra')).toMatchObject({ code: 2, json: { error: { code: 'E_USAGE' } } });
  });
});
