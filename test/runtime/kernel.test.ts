// The guest kernel choice (src/runtime/kernel.ts): CORRAL_KERNEL's validation, which kernel
// each choice picks from a manifest, and Debian's packaged kernel booting real sandboxes.
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox } from '../../src/index.ts';
import type { Artifacts } from '../../src/runtime/artifacts.ts';
import { loadArtifacts } from '../../src/runtime/artifacts.ts';
import { KERNEL_CHOICES, parseKernelChoice, resolveKernel } from '../../src/runtime/kernel.ts';
import type { Supervisor } from '../../src/supervisor/Supervisor.ts';
import { testSupervisor, uniqueName } from '../helpers/sandbox.ts';

/** Runs `fn` with CORRAL_KERNEL set (a create captures it), restoring the old value after. */
async function withKernel<T>(value: string | undefined, fn: () => Promise<T>): Promise<T> {
  const old = process.env.CORRAL_KERNEL;
  if (value === undefined) delete process.env.CORRAL_KERNEL;
  else process.env.CORRAL_KERNEL = value;
  try {
    return await fn();
  } finally {
    if (old === undefined) delete process.env.CORRAL_KERNEL;
    else process.env.CORRAL_KERNEL = old;
  }
}

describe('CORRAL_KERNEL', () => {
  it('accepts debian, custom and auto, and unset means auto', () => {
    expect(KERNEL_CHOICES).toEqual(['debian', 'custom', 'auto']);
    for (const c of KERNEL_CHOICES) expect(parseKernelChoice(c)).toBe(c);
    expect(parseKernelChoice(undefined)).toBe('auto');
    expect(parseKernelChoice('')).toBe('auto');
  });

  it('refuses anything else with E_INVALID_OPTION naming the variable and the allowed values', () => {
    for (const bad of ['Debian', 'linux', 'custom ', 'none']) {
      expect(() => parseKernelChoice(bad)).toThrow(expect.objectContaining({
        code: 'E_INVALID_OPTION',
        message: expect.stringMatching(/CORRAL_KERNEL: one of "debian", "custom", "auto"/),
      }));
    }
  });

  it('fails a create with a bad value before anything is recorded or spawned', async () => {
    const sup = testSupervisor();
    try {
      let spawned = 0;
      sup.bus.on('sandbox.vm.spawned').subscribe(() => spawned++);
      await withKernel('linux', async () => {
        await expect(Sandbox.builder(uniqueName('badkernel')).template(false).supervisor(sup).create())
          .rejects.toMatchObject({ code: 'E_INVALID_OPTION', message: expect.stringContaining('CORRAL_KERNEL: one of "debian", "custom", "auto" (got "linux")') });
      });
      expect(spawned).toBe(0);
      expect(sup.list().some((r) => r.name.startsWith('badkernel-'))).toBe(false);
    } finally {
      await sup.close();
    }
  });
});

describe('resolveKernel', () => {
  let dir: string;
  const file = (name: string) => {
    const p = join(dir, name);
    writeFileSync(p, name);
    return p;
  };
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'corral-kernel-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  const base = { agent: 'a', upperTemplate: 'u', qemu: 'q', images: {} };

  it('auto takes the custom kernel when it is built, else Debian\'s', () => {
    const debian = { kernel: file('dv'), initramfs: file('di'), version: '6.1.0-57-amd64', acpi: true, minMemoryMib: 96 };
    const custom = { kernel: file('cv'), initramfs: file('ci'), version: '6.1.192', acpi: false, minMemoryMib: 64 };
    const both: Artifacts = { ...base, kernel: custom.kernel, initramfs: custom.initramfs, kernels: { debian, custom } };
    expect(resolveKernel(both, 'auto')).toMatchObject({ name: 'custom', acpi: false, version: '6.1.192' });
    expect(resolveKernel(both, 'debian')).toMatchObject({ name: 'debian', acpi: true, minMemoryMib: 96, kernel: debian.kernel });
    const debianOnly: Artifacts = { ...base, kernel: debian.kernel, initramfs: debian.initramfs, kernels: { debian } };
    expect(resolveKernel(debianOnly, 'auto')).toMatchObject({ name: 'debian' });
    // a custom kernel listed but deleted from the cache is not there
    const gone: Artifacts = { ...base, kernel: 'x', initramfs: 'y', kernels: { debian, custom: { ...custom, kernel: join(dir, 'nope') } } };
    expect(resolveKernel(gone, 'auto')).toMatchObject({ name: 'debian' });
  });

  it('says how to build a kernel that is not there (E_SETUP_MISSING)', () => {
    const debian = { kernel: file('dv2'), initramfs: file('di2'), version: '6.1.0-57-amd64', acpi: true, minMemoryMib: 96 };
    const a: Artifacts = { ...base, kernel: debian.kernel, initramfs: debian.initramfs, kernels: { debian } };
    expect(() => resolveKernel(a, 'custom')).toThrow(expect.objectContaining({
      code: 'E_SETUP_MISSING',
      message: expect.stringContaining('npm run setup -- --kernel custom'),
    }));
  });

  it('reads a manifest from before the choice as its one custom kernel, booted without ACPI', () => {
    const legacy: Artifacts = { ...base, kernel: file('lv'), initramfs: file('li'), kernelVersion: '6.1.192' };
    expect(resolveKernel(legacy, 'auto')).toMatchObject({ name: 'custom', acpi: false, version: '6.1.192', minMemoryMib: 64 });
    expect(() => resolveKernel(legacy, 'debian')).toThrow(expect.objectContaining({ code: 'E_SETUP_MISSING' }));
  });
});

describe('the Debian kernel initramfs', () => {
  it('carries the modules the agent needs, built for that kernel, unsigned, in dependency order', () => {
    const k = resolveKernel(loadArtifacts(), 'debian');
    const names = execFileSync('sh', ['-c', `cpio -it --quiet < ${JSON.stringify(k.initramfs)}`], { encoding: 'utf8' })
      .split('\n').filter((l) => l.startsWith('modules/'));
    const mods = names.map((n) => n.replace(/^modules\/\d+-/, '').replace(/\.ko$/, '').replace(/-/g, '_'));
    for (const m of ['virtio_mmio', 'virtio_blk', 'virtio_console', 'virtio_rng', 'virtio_net', '9pnet_virtio', '9p', 'erofs', 'overlay', 'ext4']) {
      expect(mods, m).toContain(m);
    }
    // each dependency before its user
    const at = (m: string) => mods.indexOf(m);
    expect(at('virtio')).toBeLessThan(at('virtio_mmio'));
    expect(at('virtio_ring')).toBeLessThan(at('virtio_blk'));
    expect(at('jbd2')).toBeLessThan(at('ext4'));
    expect(at('9pnet')).toBeLessThan(at('9pnet_virtio'));
    expect(names).toEqual([...names].sort());
    // the kernel's own build: a module with another vermagic would not load
    const tmp = mkdtempSync(join(tmpdir(), 'corral-initrd-'));
    try {
      execFileSync('sh', ['-c', `cpio -id --quiet ${JSON.stringify(names[0]!)} < ${JSON.stringify(k.initramfs)}`], { cwd: tmp });
      const text = execFileSync('strings', [join(tmp, names[0]!)], { encoding: 'utf8' });
      expect(text).toContain(`vermagic=${k.version} `);
      // its signature dropped: checking it cost most of the load time under TCG (scripts/setup.sh)
      expect(text).not.toContain('~Module signature appended~');
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });
});

describe('a sandbox on the Debian kernel', () => {
  let sup: Supervisor;
  let sb: Sandbox;
  beforeAll(async () => {
    sup = testSupervisor();
    sb = await withKernel('debian', () => Sandbox.builder(uniqueName('debian')).memory(128).supervisor(sup).create());
  });
  afterAll(async () => {
    await sb?.stop();
    await sup?.close();
  });

  it('boots it, with its modules loaded, and runs an exec', async () => {
    const k = resolveKernel(loadArtifacts(), 'debian');
    expect((await sb.info()).kernel).toBe(`debian ${k.version}`);
    const r = await sb.shell('uname -r; cut -d" " -f1 /proc/modules | sort | tr "\\n" " "; echo; ls /modules 2>&1 | head -1; echo hi >/tmp/x && cat /tmp/x');
    const [release, modules, modulesDir, hi] = r.stdout.split('\n');
    expect(r.code).toBe(0);
    expect(release).toBe(k.version);
    for (const m of ['virtio_mmio', 'virtio_blk', 'virtio_console', 'virtio_rng', 'erofs', 'overlay', 'ext4', '9p']) expect(modules).toContain(m);
    // after switch_root, the initramfs is not reachable: /modules is the image's, absent here
    expect(modulesDir).toMatch(/No such file/);
    expect(hi).toBe('hi');
  });

  it('refuses less RAM than the kernel needs, naming the option', async () => {
    await withKernel('debian', async () => {
      await expect(Sandbox.builder(uniqueName('small')).memory(96).template(false).supervisor(sup).create())
        .rejects.toMatchObject({ code: 'E_INVALID_OPTION', message: expect.stringContaining('invalid option memory: at least 128 MiB with the debian guest kernel') });
    });
  });
});

describe('CORRAL_KERNEL in a plain Node process', () => {
  const script = fileURLToPath(new URL('../helpers/kernel-child.ts', import.meta.url));
  const run = (kernel: string) => new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', script], { env: { ...process.env, CORRAL_KERNEL: kernel }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('exit', (code) => resolve({ code, out, err }));
  });

  it('boots the Debian kernel, runs an exec and exits 0 on its own', async () => {
    const r = await run('debian');
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    expect(JSON.parse(r.out)).toMatchObject({ kernel: expect.stringMatching(/^debian /), stdout: 'ok\n', code: 0 });
  });

  it('exits 1 with the error for a bad value', async () => {
    const r = await run('bogus');
    expect(r.code).toBe(1);
    expect(r.err).toBe('E_INVALID_OPTION invalid option CORRAL_KERNEL: one of "debian", "custom", "auto" (got "bogus")\n');
  });
});
