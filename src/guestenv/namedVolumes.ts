/**
 * Named volumes: directories corral keeps under `<stateDir>/volumes/<name>/` (`data/` is
 * what the guest sees, `meta.json` when it was made, `users/<sandbox>` the pid of each VM
 * that has it mounted). They are made on first use and outlive the sandboxes that use them
 * (`Sandbox.remove` never touches them); `Volume.remove` deletes one.
 */

import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CorralError, InvalidOptionError } from '../errors.ts';
import { processAlive } from '../runtime/process.ts';

/** What `Volume.list` / `Volume.get` return. */
export interface VolumeInfo {
  readonly name: string;
  /** The host directory the guest sees. */
  readonly path: string;
  readonly createdAt: number;
  /** Sandboxes whose VM has it mounted now. */
  readonly usedBy: readonly string[];
}

const NAME_RE = /^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$/;

/** Throws unless `name` is a valid volume name. */
export function validateVolumeName(name: unknown, option = 'volume name'): string {
  if (typeof name !== 'string' || name.length > 63 || !NAME_RE.test(name)) {
    throw new InvalidOptionError(option, '1-63 characters of a-z, 0-9, ".", "_" and "-", starting and ending with a letter or digit', name);
  }
  return name;
}

export function volumesDir(stateDir: string): string {
  return join(stateDir, 'volumes');
}

function volumeDir(stateDir: string, name: string): string {
  return join(volumesDir(stateDir), name);
}

/** Makes the volume if it does not exist; returns its data directory. */
export async function ensureVolume(stateDir: string, name: string): Promise<string> {
  const dir = volumeDir(stateDir, validateVolumeName(name));
  const data = join(dir, 'data');
  if (!existsSync(join(dir, 'meta.json'))) {
    await mkdir(data, { recursive: true, mode: 0o755 });
    await writeFile(join(dir, 'meta.json'), JSON.stringify({ name, createdAt: Date.now() }), { flag: 'wx' }).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'EEXIST') throw err;
    });
  }
  return data;
}

/** Records that `sandbox`'s VM (pid) has the volume mounted, until {@link releaseVolume}. */
export async function claimVolume(stateDir: string, name: string, sandbox: string, pid: number): Promise<void> {
  const users = join(volumeDir(stateDir, name), 'users');
  await mkdir(users, { recursive: true });
  await writeFile(join(users, sandbox), String(pid));
}

export async function releaseVolume(stateDir: string, name: string, sandbox: string): Promise<void> {
  await rm(join(volumeDir(stateDir, name), 'users', sandbox), { force: true });
}

/** Sandboxes whose recorded VM is still alive (records of dead ones are ignored). */
function liveUsers(dir: string): string[] {
  const users = join(dir, 'users');
  if (!existsSync(users)) return [];
  return readdirSync(users).filter((s) => {
    const pid = Number(readFileSync(join(users, s), 'utf8'));
    return pid > 0 && processAlive(pid);
  });
}

/** One volume; throws E_VOLUME_NOT_FOUND. */
export function readVolume(stateDir: string, name: string): VolumeInfo {
  const dir = volumeDir(stateDir, validateVolumeName(name));
  const metaFile = join(dir, 'meta.json');
  if (!existsSync(metaFile)) throw new CorralError('E_VOLUME_NOT_FOUND', `no volume named "${name}"`);
  const meta = JSON.parse(readFileSync(metaFile, 'utf8')) as { createdAt?: number };
  return { name, path: join(dir, 'data'), createdAt: meta.createdAt ?? statSync(metaFile).mtimeMs, usedBy: liveUsers(dir) };
}

/** Every named volume, by name. */
export async function listVolumes(stateDir: string): Promise<VolumeInfo[]> {
  const dir = volumesDir(stateDir);
  if (!existsSync(dir)) return [];
  const names = (await readdir(dir)).filter((n) => NAME_RE.test(n) && existsSync(join(dir, n, 'meta.json')));
  return names.sort().map((n) => readVolume(stateDir, n));
}

/** Deletes a volume and its data. Refuses (E_VOLUME_IN_USE) while a running VM has it mounted. */
export async function removeVolume(stateDir: string, name: string, options: { force?: boolean } = {}): Promise<void> {
  const info = readVolume(stateDir, name);
  if (info.usedBy.length > 0 && !options.force) {
    throw new CorralError('E_VOLUME_IN_USE', `volume "${name}" is mounted by sandbox${info.usedBy.length > 1 ? 's' : ''} ${info.usedBy.map((u) => `"${u}"`).join(', ')} (stop them, or pass force)`);
  }
  await rm(volumeDir(stateDir, name), { recursive: true, force: true });
}
