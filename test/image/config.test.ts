/**
 * The image fields of a config: built by the builder, plain JSON with no secret in it,
 * validated again by normalizeConfig with field paths in the errors. No VM.
 */

import { describe, expect, it } from 'vitest';
import { CorralError, PullPolicy, Sandbox, normalizeConfig } from '../../src/index.ts';
import { secretsFor } from '../../src/image/secrets.ts';
import { parseReference } from '../../src/image/reference.ts';

function invalid(fn: () => unknown, option: string): void {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(CorralError);
    expect((err as Error).message).toContain(`invalid option ${option}:`);
    return;
  }
  throw new Error(`expected ${option} to be rejected`);
}

describe('image references', () => {
  it('normalises Docker Hub short names and keeps registries, tags and digests', () => {
    expect(parseReference('python:3.12').canonical).toBe('docker.io/library/python:3.12');
    expect(parseReference('team/app').canonical).toBe('docker.io/team/app:latest');
    const d = `sha256:${'a'.repeat(64)}`;
    const r = parseReference(`127.0.0.1:5000/team/app:v1@${d}`);
    expect(r).toMatchObject({ registry: '127.0.0.1:5000', repository: 'team/app', tag: 'v1', digest: d });
    expect(parseReference('localhost/x').registry).toBe('localhost');
    invalid(() => parseReference('Bad/Upper'), 'image');
    invalid(() => parseReference('x@sha256:123'), 'image');
  });
});

describe('image config', () => {
  it('keeps the registry password out of the built config, JSON and all', () => {
    const config = Sandbox.builder('auth')
      .image('127.0.0.1:5000/python:3.12')
      .registryAuth({ kind: 'basic', username: 'deploy', password: 's3cret-pw' })
      .pullPolicy(PullPolicy.Always)
      .build();
    const json = JSON.stringify(config);
    expect(json).not.toContain('s3cret-pw');
    expect(config.registryAuth).toMatchObject({ kind: 'basic', username: 'deploy', secret: expect.stringMatching(/^corral-secret:/) });
    expect(config.pullPolicy).toBe('always');
    // round trip: the same config, and the secret still resolves in this process
    const back = normalizeConfig(JSON.parse(json));
    expect(back).toEqual(config);
    expect(Object.values(secretsFor(back))).toEqual(['s3cret-pw']);
    // a config (not the builder) may not carry a password
    invalid(() => normalizeConfig({ name: 'x', registryAuth: { kind: 'basic', username: 'u', password: 'p' } }), 'registryAuth.password');
  });

  it('names the field path of a bad image option', () => {
    invalid(() => normalizeConfig({ name: 'x', pullPolicy: 'sometimes' }), 'pullPolicy');
    invalid(() => normalizeConfig({ name: 'x', registryAuth: { kind: 'basic', username: 'u', passwordEnv: '1X' } }), 'registryAuth.passwordEnv');
    invalid(() => normalizeConfig({ name: 'x', registryAuth: { kind: 'oauth' } }), 'registryAuth.kind');
    invalid(() => normalizeConfig({ name: 'x', insecureRegistries: ['ok.example:5000', 'bad host'] }), 'insecureRegistries[1]');
    invalid(() => normalizeConfig({ name: 'x', image: '/d/root.img', disk: { format: 'vdi' } }), 'disk.format');
    invalid(() => normalizeConfig({ name: 'x', image: '/d/root.img', disk: { fstype: 'Ext 4' } }), 'disk.fstype');
    invalid(() => Sandbox.builder('x').pullPolicy('maybe' as never), 'pullPolicy');
  });

  it('describes disk images by path, format from the extension or given, fstype probed or given', () => {
    const a = Sandbox.builder('d1').image('./ubuntu.qcow2').build();
    expect(a.image).toBe(`${process.cwd()}/ubuntu.qcow2`);
    expect(a.disk).toEqual({ format: 'qcow2', fstype: 'auto' });
    const b = Sandbox.builder('d2').image((i) => i.disk('/images/alpine.raw').fstype('ext4')).build();
    expect(b).toMatchObject({ image: '/images/alpine.raw', disk: { format: 'raw', fstype: 'ext4' } });
    const c = Sandbox.builder('d3').image((i) => i.disk('/images/x.bin').format('vmdk')).build();
    expect(c.disk).toEqual({ format: 'vmdk', fstype: 'auto' });
    expect(normalizeConfig(JSON.parse(JSON.stringify(b)))).toEqual(b);
    // back to an OCI image: no disk left over
    expect(Sandbox.builder('d4').image('/images/a.raw').image('python:3.12').build().disk).toBeUndefined();
  });
});
